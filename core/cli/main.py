"""The ``fw`` command line. Verbs are small functions; heavy imports happen inside the verbs that need them."""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence

from fw import console
from fw.cli import launch, plan, preview, publish, run
from fw.console import plain_table, say
from fw.errors import ConfigError, FwError, Terminated, UsageError, did_you_mean, issue_lines
from fw.plugin.descriptors import KINDS

EXIT_OK, EXIT_INVALID, EXIT_USAGE = 0, 1, 2
EXIT_INTERRUPTED, EXIT_TERMINATED = 130, 143  # 128 + SIGINT, 128 + SIGTERM, as shells report them
KIND_ALIASES = {"adapters": "adapter", "initializers": "initializer", "quantizers": "quantizer",
                "quantization": "quantizer", "matchers": "matcher", "merge": "merge_strategy",
                "merges": "merge_strategy", "merge_strategies": "merge_strategy", "retrievers": "retriever",
                "retrieval": "retriever", "decoders": "decoder"}


def _kind(value: str) -> str:
    kind = KIND_ALIASES.get(value, value)
    if kind not in KINDS:
        raise UsageError(f"unknown plugin kind '{value}'. Kinds: {', '.join(KINDS)}.{did_you_mean(value, KINDS)}")
    return kind


# -- verbs ------------------------------------------------------------------------------------------
def cmd_list_plugins(args: argparse.Namespace) -> int:
    from fw.plugin.registry import conflict_message, get_registry
    registry = get_registry()
    kind = _kind(args.kind) if args.kind else None
    conflicts = registry.conflicts()
    rows = []
    for entry in registry.all(kind):
        key = (entry.kind, entry.name)
        status = "conflict: " + conflict_message(*key, conflicts[key]) if key in conflicts else "ok"
        rows.append({"kind": entry.kind, "name": entry.name, "summary": entry.descriptor.summary,
                     "distribution": entry.distribution.name, "version": entry.distribution.version,
                     "status": status})
    broken = [{"kind": "?", "name": b.entry_point, "summary": "", "distribution": b.distribution.name,
               "version": b.distribution.version, "status": f"broken: {b.error}"} for b in registry.broken]
    rows += broken if kind is None else []
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    cells = [[row["kind"], row["name"], f"{row['distribution']} {row['version']}", row["summary"], row["status"]]
             for row in rows]
    styles = [None if row["status"] == "ok" else "red" for row in rows]
    print(plain_table(["kind", "name", "distribution", "summary", "status"], cells, styles))
    return EXIT_OK


def cmd_schema(args: argparse.Namespace) -> int:
    from fw.config.assembly import full_schema, one_plugin_schema
    if args.kind and not args.name:
        raise UsageError("fw schema KIND NAME needs both a kind and a name (e.g. fw schema adapter lora).")
    schema = one_plugin_schema(_kind(args.kind), args.name) if args.kind else full_schema()
    print(json.dumps(schema, indent=2))
    return EXIT_OK


def cmd_validate(args: argparse.Namespace) -> int:
    from fw.config.load import validate_config
    if not os.path.exists(args.config):
        raise UsageError(f"config file not found: {args.config}")
    try:
        report = validate_config(args.config)
    except ConfigError as exc:  # unreadable YAML
        _print_issues(args.config, exc.issues, [])
        return EXIT_INVALID
    _print_issues(args.config, report.issues, report.warnings, report.notes)
    if report.ok and args.resolved:
        import yaml
        print(yaml.safe_dump(report.resolved, sort_keys=False, allow_unicode=True), end="")
    return EXIT_OK if report.ok else EXIT_INVALID


def _print_issues(source: str, issues, warnings, notes=()) -> None:
    for warning in warnings:
        say(f"warning: {warning}", "yellow")
    for note in notes if not issues else ():  # fw's own defaults matter once the config is valid
        say(f"note: {note} (README: Coming from Ludwig)")
    if issues:
        say(f"✗ {source}: {len(issues)} problem(s)", "red")
        for line in issue_lines(issues):
            say(f"  • {line}")
    else:
        say(f"✓ {source} is valid", "green")


# -- parser -----------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fw", description="Declarative fine-tuning and inference for LLMs.")
    parser.add_argument("--version", action="version", version=f"fw {_version()}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB")
    verbs.required = True

    def verb(name: str, handler: Callable[[argparse.Namespace], int], help_text: str) -> argparse.ArgumentParser:
        sub = verbs.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(handler=handler)
        return sub

    plugins = verb("list-plugins", cmd_list_plugins, "List installed plugins (built-in and third-party).")
    plugins.add_argument("--kind", help=f"only this kind: {', '.join(KINDS)}")
    plugins.add_argument("--json", action="store_true", help="machine-readable output")

    schema = verb("schema", cmd_schema, "Print the JSON Schema of the config (or of one plugin).")
    schema.add_argument("kind", nargs="?", help="plugin kind, e.g. adapter")
    schema.add_argument("name", nargs="?", help="plugin name, e.g. lora")

    validate = verb("validate", cmd_validate, "Check a config; report every problem with its path.")
    validate.add_argument("config", help="path to the YAML config")
    validate.add_argument("--resolved", action="store_true", help="print the config with every default filled in")
    for module in (run, preview, plan, publish):  # verbs that live in their own modules
        module.register(verbs)
    return parser


def _version() -> str:
    from fw import __version__
    return __version__


@contextlib.contextmanager
def sigterm_as_interrupt():
    """While a verb runs, SIGTERM (schedulers, ``kill``) raises :class:`Terminated`, a KeyboardInterrupt: it is
    handled as Ctrl-C is (training saves a checkpoint, atomic writes clean up) instead of ending the process on
    the spot."""
    if threading.current_thread() is not threading.main_thread():  # signal handlers live in the main thread
        yield
        return

    def terminate(signum, frame):
        raise Terminated(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with sigterm_as_interrupt():
            if launch.requested(args):  # --num_processes N: this command again, on N processes
                return launch.run(args, sys.argv[1:] if argv is None else argv)
            return args.handler(args)
    except UsageError as exc:
        console.error(str(exc))
        return EXIT_USAGE
    except FwError as exc:
        console.error(str(exc))
        return EXIT_INVALID
    except Terminated:
        say(f"fw {args.verb}: stopped by SIGTERM.", "yellow")
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except OSError as exc:  # permission denied, a vanished file...: the environment, not a bug; no traceback
        where = f" ({exc.filename})" if exc.filename else ""
        console.error(f"{exc.strerror or exc}{where}. Fix that, then run again.")
        return EXIT_INVALID
    except Exception as exc:
        lost = launch.peer_failure(exc)
        if lost is None:
            raise
        console.error(lost)
        return EXIT_INVALID


if __name__ == "__main__":
    sys.exit(main())
