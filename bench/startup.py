"""Startup: ``fw train`` against plain ``transformers.Trainer`` + PEFT, from process start to the first optimizer
step, on the same model, rows and LoRA config (issue 15, point 11: fw must get there no later).

    .venv/bin/python bench/startup.py                 # a 35M-parameter Llama, 3 runs of each side, alternating
    .venv/bin/python bench/startup.py --runs 5
    .venv/bin/python bench/startup.py --smoke         # the tiny test model, 1 run each: checks the code paths

What runs (the same on both sides):

- model: a random-init Llama built here with ``fw.model.tiny`` (hidden 512, 10 layers, 8 heads, MLP 1536, the
  tiny byte-level BPE tokenizer: 34.6M parameters), saved with ``save_pretrained``, loaded in float32 with SDPA;
- data: 64 question / answer rows in a CSV file, prompt ``Q: {question}\\nA:``, loss on the answer;
- LoRA r=8, alpha 16, dropout 0.05 on q_proj and v_proj; AdamW, lr 1e-4, batch 4, seed 42, one optimizer step.

Each side is a fresh subprocess; the clock starts just before it is spawned (interpreter start-up included) and
stops at the end of its first optimizer step. fw is the ``fw train`` command, with ``--no_progress`` and otherwise
its defaults (TensorBoard events, the chunked-loss probe); it writes its phase timestamps to the file named by
``FW_STARTUP_TRACE`` (:mod:`fw.trace`). The reference is this file run with ``--reference``: the script a
transformers user writes (pandas for the CSV, AutoTokenizer / AutoModelForCausalLM, ``get_peft_model``,
``DataCollatorForSeq2Seq``, ``Trainer`` with ``max_steps=1``, ``report_to="none"``, no progress bar), marking
the same phases. Its module level imports the standard library only, so its imports are its own.

Phases (each ends at a mark; a side without the phase shows "-"): interpreter and imports, plugin discovery,
config validation, data (read and split), model and tokenizer load, tokenize rows, adapter, trainer setup (fw:
speed options and the loss-path probe, optimizer; Trainer: its constructor), first optimizer step (the training
loop's own start-up included). The table gives the median of each phase and of the totals over the runs, in
wall-clock seconds and in the process's CPU seconds (all threads), and the ratios fw / reference of the median
totals; the JSON under ``bench/results/`` (``--smoke``: ``bench/results/smoke/``, not committed) keeps every run,
the device and the load average before and after. On a shared machine, ``--threads 1`` gives both sides one
torch thread: idle OpenMP threads then no longer spin while other jobs hold the cores, so the CPU times measure
the work.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
SIDES = ("fw", "reference")
LABELS = {"fw": "fw train", "reference": "Trainer + PEFT"}
PHASES = {"imports": "interpreter and imports", "plugins": "plugin discovery", "config": "config validation",
          "data": "data (read, split)", "model": "model and tokenizer load", "tokens": "tokenize rows",
          "adapter": "adapter (LoRA)", "setup": "trainer setup", "first_step": "first optimizer step"}
#: LlamaConfig fields of the benchmark model (the tiny test model for --smoke)
SHAPES = {"35m": dict(hidden_size=512, num_hidden_layers=10, num_attention_heads=8, num_key_value_heads=8,
                      intermediate_size=1536, max_position_embeddings=512),
          "smoke": {}}
ROWS = 64
PROMPT = "Q: {question}\nA:"
LORA = {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": ["q_proj", "v_proj"]}
BATCH_SIZE, LEARNING_RATE, SEED = 4, 1e-4, 42


# == the workspace both sides read ==============================================================================
def build_workspace(directory: Path, model: str) -> dict:
    """The model, the rows and fw's config under ``directory``; returns what was built."""
    import pandas as pd
    import yaml

    from fw.model.loading import quiet_libraries
    from fw.model.tiny import build_tiny_llama

    quiet_libraries()
    model_dir = build_tiny_llama(directory / "model", seed=SEED, **SHAPES[model])
    rows = pd.DataFrame({"question": [f"what is {i} plus one" for i in range(ROWS)],
                         "answer": [f"it is {i + 1}" for i in range(ROWS)]})
    rows.to_csv(directory / "train.csv", index=False)
    config = {"base_model": str(model_dir), "input_features": [{"name": "question", "type": "text"}],
              "output_features": [{"name": "answer", "type": "text"}], "prompt": {"template": PROMPT},
              "adapter": {"type": "lora", **LORA},
              "trainer": {"type": "finetune", "epochs": 1, "train_steps": 1, "batch_size": BATCH_SIZE,
                          "learning_rate": LEARNING_RATE,
                          "seed": SEED, "precision": "fp32"}}
    (directory / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return {"model": model, "parameters": parameter_count(model_dir), "rows": ROWS}


def parameter_count(model_dir: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(model_dir / "model.safetensors"), "pt") as weights:
        return sum(math.prod(weights.get_slice(name).get_shape()) for name in weights.keys())


# == one timed run ===============================================================================================
def fw_command(workspace: Path, output: Path) -> list[str]:
    script = Path(sys.executable).with_name("fw")
    launcher = [str(script)] if script.is_file() else [sys.executable, "-m", "fw"]
    return [*launcher, "train", "--config", str(workspace / "config.yaml"), "--training_set",
            str(workspace / "train.csv"), "--output_directory", str(output), "--no_progress"]


def reference_command(workspace: Path, output: Path) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--reference", str(workspace), "--output-dir", str(output)]


def timed_run(side: str, workspace: Path, timeout: float, threads: int | None = None) -> dict:
    """Spawn one side (with ``threads``: that many torch / OpenMP threads); its phase durations (seconds) from the
    marks it wrote, and the totals."""
    with tempfile.TemporaryDirectory(prefix=f"startup-{side}-", dir=workspace) as scratch:
        trace_file, output = Path(scratch) / "trace.jsonl", Path(scratch) / "out"
        command = (fw_command if side == "fw" else reference_command)(workspace, output)
        env = {**os.environ, "FW_STARTUP_TRACE": str(trace_file)}
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        started = time.time()
        process = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
        finished = time.time()
        marks = read_marks(trace_file)
    run = {"returncode": process.returncode, "exit_seconds": finished - started, **split(marks, started)}
    if process.returncode != 0 or "first_step" not in run["phases"]:
        run["error"] = (process.stderr or process.stdout)[-2000:]
    return run


def read_marks(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def split(marks: list[dict], started: float) -> dict:
    """Each phase's wall-clock duration (from the previous mark, the first from ``started``) and CPU time (the
    process's, all threads), and both totals to the last mark."""
    phases, cpu_phases, previous, previous_cpu = {}, {}, started, 0.0
    for mark in sorted(marks, key=lambda mark: mark["time"]):
        phases[mark["phase"]] = mark["time"] - previous
        cpu_phases[mark["phase"]] = mark["cpu"] - previous_cpu
        previous, previous_cpu = mark["time"], mark["cpu"]
    return {"phases": phases, "cpu_phases": cpu_phases, "total": previous - started if marks else None,
            "cpu_total": previous_cpu if marks else None}


# == the reference side (run as a subprocess of this file) =====================================================
def reference(workspace: Path, output: Path) -> int:
    """What a transformers user writes to LoRA-fine-tune on a CSV, marking the same phases as fw."""
    trace_file = os.environ.get("FW_STARTUP_TRACE")

    def mark(phase: str) -> None:
        if trace_file:
            with open(trace_file, "a", encoding="utf-8") as handle:
                handle.write(json.dumps({"phase": phase, "time": time.time(), "cpu": time.process_time()}) + "\n")

    import pandas as pd
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, Trainer,
                              TrainerCallback, TrainingArguments)

    mark("imports")
    frame = pd.read_csv(workspace / "train.csv")
    mark("data")
    tokenizer = AutoTokenizer.from_pretrained(workspace / "model")
    model = AutoModelForCausalLM.from_pretrained(workspace / "model", dtype=torch.float32, attn_implementation="sdpa")
    mark("model")
    rows = []
    for question, answer in zip(frame["question"], frame["answer"]):
        prompt = tokenizer(PROMPT.format(question=question))["input_ids"]
        target = tokenizer(" " + str(answer), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        rows.append({"input_ids": prompt + target, "attention_mask": [1] * (len(prompt) + len(target)),
                     "labels": [-100] * len(prompt) + target})
    mark("tokens")
    model = get_peft_model(model, LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                                             target_modules=LORA["target_modules"], task_type="CAUSAL_LM"))
    mark("adapter")

    class FirstStep(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            mark("first_step")

    arguments = TrainingArguments(output_dir=str(output), per_device_train_batch_size=BATCH_SIZE, max_steps=1,
                                  learning_rate=LEARNING_RATE, seed=SEED, report_to="none", save_strategy="no",
                                  disable_tqdm=True, remove_unused_columns=False)
    trainer = Trainer(model=model, args=arguments, train_dataset=rows, callbacks=[FirstStep()],
                      data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True))
    mark("setup")
    trainer.train()
    return 0


# == the comparison ==============================================================================================
def summarize(runs: dict[str, list[dict]]) -> dict:
    """Per side: the median of each phase and of the totals (wall clock and CPU) over the successful runs; the
    ratios fw / reference of the median totals."""
    summary = {}
    for side, side_runs in runs.items():
        done = [run for run in side_runs if run.get("total") is not None and "error" not in run]
        summary[side] = {"runs": len(done)}
        for phases_key, total_key in (("phases", "total"), ("cpu_phases", "cpu_total")):
            summary[side][phases_key] = {phase: statistics.median([run[phases_key][phase] for run in done])
                                         for phase in PHASES if done and all(phase in run[phases_key] for run in done)}
            summary[side][total_key] = statistics.median([run[total_key] for run in done]) if done else None
    for key, total_key in (("ratio", "total"), ("cpu_ratio", "cpu_total")):
        fw, ref = summary.get("fw", {}).get(total_key), summary.get("reference", {}).get(total_key)
        summary[key] = fw / ref if fw and ref else None
    return summary


def table(summary: dict) -> str:
    """Phases down; wall clock then CPU, each side, across: medians in seconds; the ratios below."""
    columns = [(side, phases_key, total_key)
               for phases_key, total_key in (("phases", "total"), ("cpu_phases", "cpu_total"))
               for side in SIDES if side in summary]
    header = "".join(f"{LABELS[side] + (' CPU' if key == 'cpu_phases' else ''):>19}" for side, key, _ in columns)
    lines = [f"{'median seconds':32}{header}"]
    for phase, label in PHASES.items():
        cells = [summary[side][key].get(phase) for side, key, _ in columns]
        lines.append(f"{label:32}" + "".join(f"{cell:19.2f}" if cell is not None else f"{'-':>19}" for cell in cells))
    totals = [summary[side][total] for side, _, total in columns]
    lines.append(f"{'process start -> first step':32}" + "".join(
        f"{cell:19.2f}" if cell is not None else f"{'failed':>19}" for cell in totals))
    if summary.get("ratio") is not None:
        lines.append(f"fw / Trainer + PEFT: {summary['ratio']:.2f} wall clock, {summary['cpu_ratio']:.2f} CPU time")
    return "\n".join(lines)


def device() -> dict:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def versions() -> dict:
    from importlib.metadata import version

    return {name: version(name) for name in ("fw", "torch", "transformers", "peft")}


def run_benchmark(model: str, runs: int, timeout: float, output_dir: Path | None, threads: int | None = None) -> Path:
    with tempfile.TemporaryDirectory(prefix="fw-startup-") as scratch:
        workspace = Path(scratch)
        built = build_workspace(workspace, model)
        load_before = os.getloadavg()
        results: dict[str, list[dict]] = {side: [] for side in SIDES}
        for index in range(runs):  # alternate which side goes first, so neither always runs on a warmer cache
            for side in (SIDES if index % 2 == 0 else SIDES[::-1]):
                run = timed_run(side, workspace, timeout, threads)
                results[side].append(run)
                total = f"{run['total']:.2f} s" if run.get("total") is not None else "failed"
                print(f"run {index + 1}/{runs} {LABELS[side]}: {total}", flush=True)
        load_after = os.getloadavg()
    summary = summarize(results)
    report = {"benchmark": "startup", "date": datetime.datetime.now().isoformat(timespec="seconds"),
              "smoke": model == "smoke", "model": built, "device": device(), "versions": versions(), "threads": threads,
              "load_average": {"before": load_before, "after": load_after}, "runs": results, "summary": summary}
    print(f"\nstartup of a {built['parameters'] / 1e6:.1f}M-parameter Llama, {runs} run(s) per side, "
          f"device {report['device']['gpu'] or report['device']['cpu']} ({report['device']['cores']} cores, "
          f"{threads or report['device']['torch_threads']} torch threads), "
          f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after")
    print(table(summary))
    for side, side_runs in results.items():
        for run in side_runs:
            if "error" in run:
                print(f"\n{LABELS[side]} failed (exit {run['returncode']}):\n{run['error']}", file=sys.stderr)
    directory = output_dir or (RESULTS / "smoke" if model == "smoke" else RESULTS)
    directory.mkdir(parents=True, exist_ok=True)
    where = "cuda" if report["device"]["gpu"] else "cpu"
    path = directory / f"startup-{model}-{where}{f'-{threads}thread' if threads else ''}-{report['date'][:10]}.json"
    path.write_text(json.dumps(report, indent=1))
    print(f"\nwrote {path}")
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=None, help="runs per side (default 3; --smoke: 1)")
    parser.add_argument("--smoke", action="store_true", help="the tiny test model: checks every code path")
    parser.add_argument("--timeout", type=float, default=600, help="seconds one run may take")
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS for both sides (default: torch's choice); "
                                                     "1 keeps a shared machine's contention out of the CPU times")
    parser.add_argument("--output-dir", type=Path, help="where the JSON goes (default bench/results[/smoke])")
    parser.add_argument("--reference", type=Path, metavar="WORKSPACE", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.reference:
        return reference(args.reference, args.output_dir)
    runs = args.runs or (1 if args.smoke else 3)
    path = run_benchmark("smoke" if args.smoke else "35m", runs, args.timeout, args.output_dir, args.threads)
    summary = json.loads(path.read_text())["summary"]
    return 0 if all(summary[side]["runs"] == runs for side in SIDES) else 1


if __name__ == "__main__":
    sys.exit(main())
