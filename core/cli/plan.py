"""``fw plan CONFIG [--num_processes N] [--strategy ddp|fsdp] [--dataset D] [--device cuda|cpu]
[--device_memory 80GB]``: the memory a training run needs per device, and whether it fits, before it is launched
(:mod:`fw.plan`). Imported by ``fw.cli.main`` for every command: torch is imported only when the verb runs."""
from __future__ import annotations

import argparse
import os

from fw.errors import UsageError


def register(verbs) -> None:
    text = ("Plan a training run before launching it: parameters, and memory per device for weights, gradients, "
            "optimizer state and activations; whether it fits, and what to change if not.")
    sub = verbs.add_parser("plan", help=text, description=text)
    sub.set_defaults(handler=cmd_plan)
    sub.add_argument("config", help="path to the YAML config")
    sub.add_argument("--num_processes", type=int, default=1, help="processes (one per GPU) the run uses (default 1)")
    sub.add_argument("--strategy", choices=["ddp", "fsdp"], default=None,
                     help="with several processes: ddp (replicas) or fsdp (full shard); default: the config's "
                          "backend.trainer.strategy, else ddp")
    sub.add_argument("--dataset", help="measure the rows of this dataset as fw train tokenizes them (default: the "
                                       "config's max lengths)")
    sub.add_argument("--device", choices=["cuda", "cpu"], default=None,
                     help="plan for a CUDA GPU or for CPU (default: this machine's GPU, else its CPU; a GPU when "
                          "--device_memory is given)")
    sub.add_argument("--device_memory", metavar="SIZE",
                     help="plan for another machine: memory per GPU (or the RAM, with --device cpu), e.g. 80GB")


def cmd_plan(args: argparse.Namespace) -> int:
    from fw.plan import Request, make_plan, parse_size

    if not os.path.exists(args.config):
        raise UsageError(f"config file not found: {args.config}")
    if args.dataset is not None and not os.path.exists(args.dataset):
        raise UsageError(f"--dataset: file not found: {args.dataset}")
    memory = parse_size(args.device_memory) if args.device_memory else None
    plan = make_plan(Request(args.config, num_processes=args.num_processes, strategy=args.strategy,
                             device=args.device, device_memory=memory, dataset=args.dataset))
    print("\n".join(render(plan)))
    return 0


UNITS = ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB"))


def unit_for(size: float) -> tuple[int, str]:
    """The largest unit ``size`` is at least one of (KiB at the smallest)."""
    return next(((scale, name) for scale, name in UNITS if size >= scale), UNITS[-1])


def human(size: float, unit: tuple[int, str] | None = None) -> str:
    scale, name = unit or unit_for(size)
    return f"{size / scale:,.2f} {name}"


def count(number: int) -> str:
    return f"{number:,}"


def parts(plan) -> str:
    adapter = plan.total_parameters - plan.base_parameters
    return f" (base {count(plan.base_parameters)} + adapter {count(adapter)})" if adapter else ""


def render(plan) -> list[str]:
    """The plan as lines of text."""
    memory, target, workload = plan.memory, plan.target, plan.workload
    share = f"{plan.trainable_parameters / plan.total_parameters:.2%}" if plan.total_parameters else "-"
    strategy = {"single": "one process", "ddp": f"DDP over {plan.processes} processes",
                "fsdp": f"FSDP (full shard) over {plan.processes} processes"}[plan.strategy]
    lines = [
        f"model       {plan.model} ({plan.architecture}; config only, no weights read)",
        f"parameters  {count(plan.total_parameters)}{parts(plan)}, {count(plan.trainable_parameters)} trainable "
        f"({share}); adapter {plan.adapter}"
        + (f"; {count(plan.quantized_parameters)} quantized" if plan.quantized_parameters else ""),
        f"batch       {workload.rows} x {count(workload.length)} tokens, {count(workload.labelled)} trained on "
        f"({workload.source})",
        f"training    {plan.dtype}, optimizer {plan.optimizer}, gradient checkpointing "
        f"{'on' if plan.checkpointing else 'off'}, {strategy}",
        f"device      {target.name}: {human(target.memory)}, planned with {human(target.usable)}",
        "",
        "memory per " + ("process" if target.kind == "cpu" else "device"),
    ]
    rows = [("weights", memory.weights), ("gradients", memory.gradients), ("optimizer state", memory.optimizer),
            ("activations", memory.activations), ("optimizer step", memory.step)]
    if memory.strategy_extra:
        rows.append((memory.strategy_note, memory.strategy_extra))
    rows.append(("peak", memory.peak))
    if target.kind == "cpu" and plan.processes > 1:
        rows.append((f"{plan.processes} processes together", plan.needed))
    unit = unit_for(plan.needed)
    width = max(len(name) for name, _ in rows) + 2
    lines += [f"  {name.ljust(width)}{human(size, unit):>14}" for name, size in rows]
    lines.append("")
    verdict = "fits" if plan.fits else "does NOT fit"
    lines.append(f"{verdict}: {human(plan.needed)} of {human(target.usable)} "
                 f"({plan.needed / max(target.usable, 1):.0%})")
    if plan.options:
        lines.append("to make it fit:")
        lines += [f"  - {option.change}: {human(option.peak)} per device, "
                  f"{'fits' if option.fits else 'still does not fit'}" for option in plan.options]
    lines += [f"note: {note}" for note in plan.notes]
    return lines
