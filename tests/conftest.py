"""Shared fixtures: tiny offline models, built once per test session; every test runs in its own directory.

Tests never write into the checkout: each test runs with its tmp_path as the working directory (so a default
such as ``results/`` lands there), and the session fails if any file of the checkout was added, changed or
removed while the tests ran.
"""
from __future__ import annotations

import os

import pytest

from repo_root import REPO

#: directories whose contents the test run may change: the virtualenv, bytecode and pytest's caches
NOT_CHECKED = {".git", ".venv", "__pycache__", ".pytest_cache"}
CHECKOUT = pytest.StashKey[dict]()


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    from fw.model.tiny import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory):
    from fw.model.tiny import build_tiny_gpt2

    return build_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture(autouse=True)
def _run_in_tmp_path(tmp_path, monkeypatch):
    """Every test runs in its own directory, so a relative default (``results/``) never lands in the checkout."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(autouse=True)
def _fresh_console_messages():
    """Every test starts with no recorded messages (fw.console keeps every message of the process)."""
    from fw import console

    console.clear()
    yield
    console.clear()


# -- the checkout stays as it was -------------------------------------------------------------------------------
def checkout_files() -> dict[str, tuple[int, int]]:
    """Every file of the checkout (outside ``NOT_CHECKED``) with its size and modification time."""
    found = {}
    for directory, subdirectories, files in os.walk(REPO):
        subdirectories[:] = [name for name in subdirectories if name not in NOT_CHECKED]
        for name in files:
            stat = os.lstat(os.path.join(directory, name))
            found[os.path.relpath(os.path.join(directory, name), REPO)] = (stat.st_size, stat.st_mtime_ns)
    return found


def changed_files(before: dict, after: dict) -> list[str]:
    added = [f"added {path}" for path in sorted(set(after) - set(before))]
    removed = [f"removed {path}" for path in sorted(set(before) - set(after))]
    modified = [f"changed {path}" for path in sorted(set(before) & set(after)) if before[path] != after[path]]
    return added + removed + modified


def _is_controller(config) -> bool:
    return not hasattr(config, "workerinput")  # pytest-xdist workers check nothing: the controller checks once


def pytest_sessionstart(session):
    if _is_controller(session.config):
        session.config.stash[CHECKOUT] = checkout_files()


def pytest_sessionfinish(session, exitstatus):
    before = session.config.stash.get(CHECKOUT, None)
    if before is None:
        return
    changes = changed_files(before, checkout_files())
    if changes:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        lines = ["tests wrote into the checkout (use tmp_path):", *(f"  {change}" for change in changes[:20])]
        if reporter is not None:
            reporter.write_line("\n".join(lines), red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def smollm2_dir():
    """SmolLM2-135M-Instruct in fw's cache (``make smollm2``, run by ``make test``), else the test is skipped."""
    from fw.model import smollm2

    if not smollm2.is_ready():
        pytest.skip(smollm2.missing_reason())
    return smollm2.model_dir()
