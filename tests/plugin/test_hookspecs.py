"""Meta-tests: every hook spec is documented, exercised by a built-in plugin, and described in the README."""
from __future__ import annotations

import inspect

import pytest

from fw.plugin import hookspecs
from fw.plugin.registry import get_registry
from fw.plugin.descriptors import HOOK_FOR_KIND

from repo_root import REPO

HOOKS = [name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("fw_")]
README = (REPO / "README.md").read_text()


def test_every_kind_has_a_hook_and_every_hook_a_kind():
    assert sorted(HOOK_FOR_KIND.values()) == sorted(HOOKS)


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_documented(hook):
    assert (getattr(hookspecs, hook).__doc__ or "").strip(), f"{hook} has no docstring"
    assert hook in README, f"{hook} is not described in README.md"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_implemented_by_a_builtin(hook):
    kind = {v: k for k, v in HOOK_FOR_KIND.items()}[hook]
    assert get_registry().all(kind), f"no built-in plugin implements {hook}"
