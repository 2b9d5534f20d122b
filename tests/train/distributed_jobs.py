"""The worker of the 2-process tests (tests/train/test_distributed_train.py), run by torchrun in each process:

    torchrun --standalone --nproc_per_node 2 tests/train/distributed_jobs.py JOBS.json
    torchrun --standalone --nproc_per_node 2 tests/train/distributed_jobs.py fw train --config ...

The second form is ``fw`` itself, with faults injected by environment variables: ``KILL_AFTER_CHECKPOINTS=K``
(the main process SIGKILLs every process of the job, torchrun included, once its K-th checkpoint is on disk),
``FAIL_AT_STEP=S`` (process ``FAIL_RANK`` raises at optimizer step S), ``TERMINATE_AT_STEP=S`` (process 1 sends
SIGTERM to torchrun after step S, as a scheduler would).

JOBS.json: ``{"runs": [{"name", "config", "training_set", "validation_set", "output_directory"}, ...],
"results": path}``. Every process trains each run with ``fw.pipeline.train`` (one launch, several runs: the
imports and the process group are paid once). Each process writes ``<results>.rank<N>.json``: per run, the training
statistics, the rows it trained on per epoch (the shares the trainer sums tokens over), how many EVA calibration
passes and retrieval index builds it ran, how many weight files transformers opened for it, and whether its model
recomputed activations.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def main(jobs_file: str) -> None:
    import peft
    from transformers import modeling_utils

    from fw import distributed, pipeline
    from fw.data import retrieval
    from fw.train import trainer as training
    from fw.train.loss import transformers_model

    jobs = json.loads(Path(jobs_file).read_text())
    rows: dict[str, dict[int, list[int]]] = {}
    current = {"run": None, "eva_passes": 0, "index_builds": 0, "weight_reads": 0}
    counted, calibrate, build = training.Trainer.trained_tokens, peft.initialize_lora_eva_weights, retrieval.build
    safe_open = modeling_utils.safe_open

    def recording(self, shares):
        seen = rows.setdefault(current["run"], {}).setdefault(self.position.epoch, [])
        seen.extend(index for share in shares for index in share)
        return counted(self, shares)

    def counting_eva(*args, **kwargs):
        current["eva_passes"] += 1
        return calibrate(*args, **kwargs)

    def counting_builds(params, texts, directory):
        current["index_builds"] += Path(directory).name.startswith(".")  # a new index, in its temporary directory
        return build(params, texts, directory)

    def counting_reads(*args, **kwargs):
        current["weight_reads"] += 1
        return safe_open(*args, **kwargs)

    training.Trainer.trained_tokens = recording
    modeling_utils.safe_open = counting_reads
    peft.initialize_lora_eva_weights = counting_eva
    retrieval.build = counting_builds
    results = {}
    for run in jobs["runs"]:
        current.update(run=run["name"], eva_passes=0, index_builds=0, weight_reads=0)
        result = pipeline.train(run["config"], training_set=run["training_set"],
                                validation_set=run.get("validation_set"),
                                output_directory=run["output_directory"], show_progress=False)
        results[run["name"]] = {"statistics": result.statistics, "rows": rows.get(run["name"], {}),
                                "run_dir": str(result.run_dir), "eva_passes": current["eva_passes"],
                                "index_builds": current["index_builds"], "weight_reads": current["weight_reads"],
                                "checkpointing": transformers_model(result.model).is_gradient_checkpointing}
    Path(f"{jobs['results']}.rank{distributed.rank()}.json").write_text(json.dumps(results))


def fw_with_faults(argv: list[str]) -> int:
    import os
    import signal

    from fw import distributed
    from fw.cli.main import main as fw_main
    from fw.train import checkpoint
    from fw.train import trainer as training

    environment = os.environ
    if "KILL_AFTER_CHECKPOINTS" in environment:
        everyone = distributed.gather(os.getpid())
        point_latest, written = checkpoint.point_latest, []

        def point_then_kill_the_job(*args, **kwargs):
            path = point_latest(*args, **kwargs)
            written.append(path)
            if len(written) == int(environment["KILL_AFTER_CHECKPOINTS"]):
                for pid in [os.getppid(), *everyone]:  # torchrun first, this process last
                    os.kill(pid, signal.SIGKILL)
            return path

        checkpoint.point_latest = point_then_kill_the_job
    for variable, rank, action in (("FAIL_AT_STEP", int(environment.get("FAIL_RANK", 1)), "fail"),
                                   ("TERMINATE_AT_STEP", 1, "terminate")):
        if variable in environment and distributed.rank() == rank:
            inject_after_step(training.Trainer, int(environment[variable]), action)
    return fw_main(argv)


def inject_after_step(trainer_class, step: int, action: str) -> None:
    import os
    import signal

    real_step = trainer_class.optimizer_step

    def step_then_act(self, *args, **kwargs):
        real_step(self, *args, **kwargs)
        if self.position.step == step:
            if action == "fail":
                raise RuntimeError("injected failure: this process ran out of memory")
            os.kill(os.getppid(), signal.SIGTERM)

    trainer_class.optimizer_step = step_then_act


if __name__ == "__main__":
    if sys.argv[1] == "fw":
        sys.exit(fw_with_faults(sys.argv[2:]))
    main(sys.argv[1])
