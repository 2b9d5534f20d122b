"""``fw train|predict|evaluate --num_processes N``: the torchrun command it builds, what it refuses, the
processes' environment, and the job's exit code. The jobs that generate are in
tests/infer/test_distributed_infer.py."""
from __future__ import annotations

import argparse
import subprocess
import sys

import pytest
import yaml

from fw.cli import launch
from fw.cli.main import build_parser, main


def parsed(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


PREDICT = ("predict", "--config", "c.yaml", "--dataset", "d.csv")


# -- the command -------------------------------------------------------------------------------------------------
def test_one_machine_is_torchrun_with_nproc_per_node_and_the_same_fw_command():
    argv = [*PREDICT, "--num_processes", "4", "--no_progress"]
    assert launch.torchrun_arguments(parsed(*argv), argv) == [
        "--nproc_per_node", "4", "-m", "fw", *PREDICT, "--no_progress"]


@pytest.mark.parametrize("spelling", [["--num_processes", "2"], ["--num_processes=2"], ["--num_proc", "2"]])
def test_the_launch_flags_are_taken_off_in_any_spelling_the_parser_accepts(spelling):
    argv = ["train", "--config", "c.yaml", *spelling, "--dataset", "d.csv"]
    assert parsed(*argv).num_processes == 2
    assert launch.without_launch_flags(argv) == ["train", "--config", "c.yaml", "--dataset", "d.csv"]


def test_several_machines_meet_at_a_rendezvous_endpoint_or_at_machine_0():
    argv = [*PREDICT, "--num_processes", "8", "--nnodes", "2", "--rdzv_endpoint", "host0:29400"]
    assert launch.torchrun_arguments(parsed(*argv), argv)[:-7] == [
        "--nproc_per_node", "8", "--nnodes", "2", "--rdzv_backend", "c10d", "--rdzv_endpoint", "host0:29400"]
    argv = [*PREDICT, "--nnodes", "2", "--node_rank", "1", "--master_addr", "host0", "--master_port", "29500"]
    assert launch.torchrun_arguments(parsed(*argv), argv) == [
        "--nproc_per_node", "1", "--nnodes", "2", "--node_rank", "1", "--master_addr", "host0", "--master_port",
        "29500", "-m", "fw", *PREDICT]


def test_the_processes_share_the_cores_unless_omp_num_threads_is_set(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(launch.os, "cpu_count", lambda: 16)
    assert launch.environment(parsed(*PREDICT, "--num_processes", "4"))["OMP_NUM_THREADS"] == "4"
    assert launch.environment(parsed(*PREDICT, "--num_processes", "32"))["OMP_NUM_THREADS"] == "1"
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert launch.environment(parsed(*PREDICT, "--num_processes", "4"))["OMP_NUM_THREADS"] == "3"


# -- when it launches, and what it refuses ---------------------------------------------------------------------
def test_one_process_on_one_machine_is_no_launch():
    assert not launch.requested(parsed(*PREDICT))
    assert not launch.requested(parsed(*PREDICT, "--num_processes", "1"))
    assert launch.requested(parsed(*PREDICT, "--num_processes", "2"))
    assert launch.requested(parsed(*PREDICT, "--nnodes", "2", "--rdzv_endpoint", "h:1"))


@pytest.mark.parametrize("flags, message", [
    (["--num_processes", "0"], "error: --num_processes: 0 is less than 1; give the number of processes per machine"),
    (["--nnodes", "0"], "error: --nnodes: 0 is less than 1"),
    (["--node_rank", "1"], "error: --node_rank: only for a job on several machines; add --nnodes M"),
    (["--nnodes", "2"], "error: --nnodes 2: the machines need a meeting point: --rdzv_endpoint HOST:PORT"),
    (["--nnodes", "2", "--rdzv_endpoint", "h:1", "--master_addr", "h"],
     "error: --rdzv_endpoint and --master_addr / --master_port / --node_rank are two ways for the machines to meet"),
])
def test_impossible_launches_are_usage_errors(flags, message, capsys):
    assert main([*PREDICT, *flags]) == 2
    assert message in capsys.readouterr().err


def test_a_process_started_by_a_launcher_does_not_launch_again(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert main([*PREDICT, "--num_processes", "2"]) == 2
    assert capsys.readouterr().err.startswith(
        "[rank 1] error: this process is already one of 2 started by a launcher (torchrun or accelerate launch): "
        "drop --num_processes")


def test_the_launch_flags_belong_to_the_pipeline_verbs_only(capsys):
    with pytest.raises(SystemExit):
        main(["validate", "c.yaml", "--num_processes", "2"])
    assert "unrecognized arguments: --num_processes 2" in capsys.readouterr().err
    assert not launch.requested(parsed("plan", "c.yaml", "--num_processes", "8"))  # plan's own flag: no launch


# -- a failed process ------------------------------------------------------------------------------------------
def test_a_failed_process_is_named_with_its_exit_code_or_signal():
    assert launch.failure_line(1, 2) == "rank 1 exited with code 2 (its error is above)"
    assert launch.failure_line(3, -9) == "rank 3 was killed by SIGKILL (out of memory?)"
    assert (launch.exit_code(2), launch.exit_code(-9), launch.exit_code(-15)) == (2, 137, 143)


def test_a_collective_step_that_lost_its_peer_is_one_line_in_a_job(monkeypatch):
    def collective():
        code = "raise RuntimeError('[pair.cc:553] Connection closed by peer [127.0.0.1]:4242. GLHF')"
        exec(compile(code, "distributed_c10d.py", "exec"), {"__name__": "torch.distributed.distributed_c10d"})

    with pytest.raises(RuntimeError) as caught:
        collective()
    assert launch.peer_failure(caught.value) is None  # not in a job: a real bug keeps its traceback
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert launch.peer_failure(caught.value) == ("stopped: another process of the job failed (its error is above); "
                                                 "torch.distributed: Connection closed by peer [127.0.0.1]:4242. GLHF")
    assert launch.peer_failure(RuntimeError("a bug of fw's own")) is None


def test_every_process_runs_and_the_job_ends_with_their_exit_code(tmp_path, capfd):
    """Two real processes (torchrun) fail the same way before loading any model: both say so with their rank,
    and ``fw train`` ends with their exit code. (Training itself on several processes: test_distributed_train.)"""
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"base_model": "unused", "input_features": [{"name": "q"}],
                                      "output_features": [{"name": "a"}], "trainer": {"type": "none"}}))
    argv = ["train", "--config", str(config), "--dataset", str(tmp_path / "d.csv"), "--num_processes", "2"]
    assert main(argv) == 1
    err = capfd.readouterr().err
    assert f"fw train: starting torchrun --nproc_per_node 2 -m fw train --config {config} --dataset" in err
    for rank in (0, 1):
        assert err.count(f"[rank {rank}] error: trainer.type is none: there is nothing to train.") == 1
    assert "exited with code 1 (its error is above); torchrun stopped the other processes." in err
    assert "Traceback" not in err


def test_the_launch_imports_no_torch_in_the_fw_process():
    code = ("import sys; from fw.cli import launch; from fw.cli.main import build_parser; "
            "args = build_parser().parse_args(['predict', '--num_processes', '2']); "
            "launch.requested(args); launch.torchrun_arguments(args, []); print('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


# -- Ludwig's Ray backend ----------------------------------------------------------------------------------------
def test_a_ray_backend_gets_the_command_that_runs_the_same_job():
    import fw

    base = {"base_model": "m", "input_features": [{"name": "q"}], "output_features": [{"name": "a"}]}
    ray = {"type": "ray", "trainer": {"num_workers": 4, "use_gpu": True, "strategy": "ddp",
                                      "resources_per_worker": {"GPU": 1}}, "processor": {"type": "dask"}}
    report = fw.validate_config({**base, "backend": ray})
    assert [str(issue) for issue in report.issues if issue.path.startswith("backend")] == [
        "backend.type: 'ray' is not supported: fw runs several processes with torch.distributed, without Ray. The "
        "same job (backend.trainer.num_workers: 4): fw train --num_processes 4 --config CONFIG --dataset DATA, or "
        "torchrun --nproc_per_node 4 -m fw train ..., or accelerate launch --num_processes 4 -m fw train ...; "
        "fw predict / fw evaluate the same way; several machines: README, Scale out. (set backend.type: local and "
        "remove backend.processor, backend.trainer.num_workers, backend.trainer.use_gpu, "
        "backend.trainer.resources_per_worker)"]
    report = fw.validate_config({**base, "backend": {"type": "ray"}})
    assert [str(issue) for issue in report.issues] == [
        "backend.type: 'ray' is not supported: fw runs several processes with torch.distributed, without Ray. The "
        "same job (N: one per GPU): fw train --num_processes N --config CONFIG --dataset DATA, or torchrun "
        "--nproc_per_node N -m fw train ..., or accelerate launch --num_processes N -m fw train ...; fw predict / "
        "fw evaluate the same way; several machines: README, Scale out. (set backend.type: local)"]
