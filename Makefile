# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.fw-installed
# torch first, pinned: this exact CPU build is on the machine's disk (any other spec pulls GBs of CUDA).
TORCH  := torch==2.13.0
PYTEST_ARGS ?=

.PHONY: install test demo bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

test: install
	$(BIN)/python -m pytest -n 2 -q $(PYTEST_ARGS)

demo: install
	$(BIN)/python examples/demo/run_demo.py

bench: install
	$(BIN)/python bench/cli_speed.py

clean:
	rm -rf $(VENV) results build dist *.egg-info
