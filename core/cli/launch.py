"""``fw train|predict|evaluate --num_processes N``: the same command on N processes, started by torchrun.

    fw predict --model_path m --dataset d.csv --num_processes 4     # one machine: 4 processes (one per GPU)
    fw train --config c.yaml --dataset d.csv --num_processes 8 --nnodes 2 --rdzv_endpoint host0:29400   # each machine

is ``torchrun --nproc_per_node 4 -m fw predict --model_path m --dataset d.csv``: fw builds that command, prints it
and runs it with torch.distributed.run (the module behind ``torchrun``, its own argument parser and process
management; fw has no launcher code of its own). Each process then finds its place in the job in the environment
torchrun sets (:mod:`fw.distributed`), exactly as under ``torchrun`` or ``accelerate launch`` typed by hand.

Two things differ from a bare ``torchrun``: when a process fails, the job ends with that process's exit code and
one line (``rank 1 exited with code 1 ...``) instead of torchrun's traceback, and ``OMP_NUM_THREADS``, when unset,
is the machine's cores shared between the processes (torchrun would set 1).

The torchrun process runs as ``python -m fw.cli.launch TORCHRUN-ARGUMENTS`` (this module), a child of the ``fw``
command, which waits for it and passes SIGTERM on.
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import Sequence

from fw.errors import Terminated, UsageError

#: the flags this module takes off the command line before handing the rest to every process
FLAGS = ("num_processes", "nnodes", "node_rank", "rdzv_endpoint", "master_addr", "master_port")


def add_flags(parser: argparse.ArgumentParser) -> None:
    """The launch flags, on a verb that can run on several processes (``fw plan`` has a --num_processes of its
    own, which launches nothing)."""
    group = parser.add_argument_group("several processes (started with torchrun; see README: Scale out)")
    _launch_flags(group)
    parser.set_defaults(launchable=True)


def _launch_flags(parser) -> None:
    parser.add_argument("--num_processes", type=int, default=None, metavar="N",
                        help="run on N processes on this machine, one per GPU (gloo on CPU), started by torchrun")
    parser.add_argument("--nnodes", type=int, default=None, metavar="M",
                        help="machines in the job (run the same command on each; default 1)")
    parser.add_argument("--node_rank", type=int, default=None, metavar="I",
                        help="this machine's index 0..M-1, with --master_addr")
    parser.add_argument("--rdzv_endpoint", default=None, metavar="HOST:PORT",
                        help="where the machines meet (c10d rendezvous; every machine gives the same)")
    parser.add_argument("--master_addr", default=None, metavar="HOST",
                        help="the address of machine 0 (with --node_rank and --master_port)")
    parser.add_argument("--master_port", type=int, default=None, metavar="PORT", help="a free port on machine 0")


# -- the fw side: when to launch, and the command ----------------------------------------------------------------
def requested(args: argparse.Namespace) -> bool:
    """Whether ``args`` ask for more than this one process (refusing impossible asks with a usage error)."""
    processes, nodes = getattr(args, "num_processes", None), getattr(args, "nnodes", None)
    if not getattr(args, "launchable", False) or (processes is None and nodes is None and not _node_flags(args)):
        return False
    if processes is not None and processes < 1:
        raise UsageError(f"--num_processes: {processes} is less than 1; give the number of processes per machine "
                         "(e.g. --num_processes 4 for a machine with 4 GPUs).")
    if nodes is not None and nodes < 1:
        raise UsageError(f"--nnodes: {nodes} is less than 1; give the number of machines in the job.")
    several = (processes or 1) * (nodes or 1) > 1
    if several and os.environ.get("WORLD_SIZE"):
        raise UsageError(f"this process is already one of {os.environ['WORLD_SIZE']} started by a launcher (torchrun "
                         "or accelerate launch): drop --num_processes / --nnodes, or run fw without that launcher.")
    if _node_flags(args) and (nodes or 1) == 1:
        flags = ", ".join(f"--{name}" for name in _node_flags(args))
        raise UsageError(f"{flags}: only for a job on several machines; add --nnodes M (M machines) or leave it out.")
    if (nodes or 1) > 1:
        _check_meeting_point(args)
    return several


def _node_flags(args: argparse.Namespace) -> list[str]:
    return [name for name in ("node_rank", "rdzv_endpoint", "master_addr", "master_port")
            if getattr(args, name, None) is not None]


def _check_meeting_point(args: argparse.Namespace) -> None:
    if args.rdzv_endpoint and (args.master_addr or args.master_port is not None or args.node_rank is not None):
        raise UsageError("--rdzv_endpoint and --master_addr / --master_port / --node_rank are two ways for the "
                         "machines to meet: give --rdzv_endpoint HOST:PORT alone, or the other three.")
    if not args.rdzv_endpoint and (args.master_addr is None or args.node_rank is None):
        raise UsageError(f"--nnodes {args.nnodes}: the machines need a meeting point: --rdzv_endpoint HOST:PORT (the "
                         "same on every machine), or --master_addr HOST --master_port PORT and --node_rank I.")


def torchrun_arguments(args: argparse.Namespace, argv: Sequence[str]) -> list[str]:
    """torchrun's arguments for ``argv`` (the fw command line that asked for them): the launch flags become
    torchrun's, the rest goes to every process unchanged (``-m fw VERB ...``)."""
    launch = ["--nproc_per_node", str(args.num_processes or 1)]
    if (args.nnodes or 1) > 1:
        launch += ["--nnodes", str(args.nnodes)]
        if args.rdzv_endpoint:
            launch += ["--rdzv_backend", "c10d", "--rdzv_endpoint", args.rdzv_endpoint]
        else:
            launch += ["--node_rank", str(args.node_rank), "--master_addr", args.master_addr]
            launch += ["--master_port", str(args.master_port)] if args.master_port is not None else []
    return [*launch, "-m", "fw", *without_launch_flags(argv)]


def without_launch_flags(argv: Sequence[str]) -> list[str]:
    """``argv`` without the launch flags and their values, in any spelling the fw parser accepted
    (``--num_processes 2``, ``--num_processes=2``, ``--num_proc 2``)."""
    parser = argparse.ArgumentParser(add_help=False)
    _launch_flags(parser)
    return parser.parse_known_args(list(argv))[1]


def environment(args: argparse.Namespace) -> dict[str, str]:
    """The processes' environment: this one, with ``OMP_NUM_THREADS`` (when unset) the cores shared between the
    processes of this machine."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // (args.num_processes or 1))))
    return env


def run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """Run ``argv`` on the processes ``args`` ask for; the job's exit code (the first failed process's)."""
    from fw import console

    arguments = torchrun_arguments(args, argv)
    console.info(f"fw {args.verb}: starting torchrun {shlex.join(arguments)}")
    agent = subprocess.Popen([sys.executable, "-m", "fw.cli.launch", *arguments], env=environment(args))
    try:
        return agent.wait()
    except Terminated:  # SIGTERM to fw: torchrun passes it to every process, then ends
        agent.send_signal(signal.SIGTERM)
        agent.wait()
        raise
    except KeyboardInterrupt:  # Ctrl-C reached torchrun too (same process group): let it stop its processes
        agent.wait()
        raise


# -- inside a process of the job ------------------------------------------------------------------------------
def peer_failure(exc: BaseException) -> str | None:
    """When ``exc`` is a collective step (torch.distributed) failing because another process of the job is gone
    (it failed and said why; torchrun is stopping the job), the line to say instead of a traceback; else None."""
    from fw import distributed

    frames, traceback = [], exc.__traceback__
    while traceback is not None:
        frames.append(traceback.tb_frame.f_globals.get("__name__", ""))
        traceback = traceback.tb_next
    if not distributed.launched() or not any(name.startswith("torch.distributed") for name in frames):
        return None
    reason = re.sub(r"^\[[^\]]*\]\s*", "", str(exc).splitlines()[0]) if str(exc) else type(exc).__name__
    return f"stopped: another process of the job failed (its error is above); torch.distributed: {reason[:200]}"


# -- the torchrun side: ``python -m fw.cli.launch TORCHRUN-ARGUMENTS`` --------------------------------------------
def agent(arguments: Sequence[str]) -> int:
    """torch.distributed.run with ``arguments``; a failed process ends the job with its exit code and one line."""
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    try:
        torchrun.run(torchrun.parse_args(list(arguments)))
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        print(f"fw: {failure_line(rank, failure.exitcode)}; torchrun stopped the other processes.", file=sys.stderr)
        return exit_code(failure.exitcode)
    except SignalException as exc:  # torchrun stopped every process with that signal
        return 128 + int(exc.sigval)
    except KeyboardInterrupt:  # Ctrl-C before torchrun started its processes
        return 128 + signal.SIGINT
    return 0


def failure_line(rank: int, exitcode: int) -> str:
    if exitcode < 0:
        name = signal.Signals(-exitcode).name
        hint = " (out of memory?)" if name == "SIGKILL" else ""
        return f"rank {rank} was killed by {name}{hint}"
    return f"rank {rank} exited with code {exitcode} (its error is above)"


def exit_code(exitcode: int) -> int:
    """A process's exit code as a shell reports it (128 + N for signal N)."""
    return 128 - exitcode if exitcode < 0 else exitcode


if __name__ == "__main__":
    sys.exit(agent(sys.argv[1:]))
