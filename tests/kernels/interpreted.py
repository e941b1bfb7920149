"""Runs a test module's Triton cases under the interpreter, in a subprocess.

TRITON_INTERPRET=1 must be set before triton is imported, and the rest of the suite may
already have imported it, so each kernel test file runs its CPU cases as ``python -m <module>``
and prints one JSON line of results, which its tests then check.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from types import ModuleType

import pytest
import torch

from tests.helpers import ROOT, subprocess_env


def run_interpreted(module: str, *args: str, timeout: int = 600) -> dict:
    """``python -m module *args`` under TRITON_INTERPRET=1; the last stdout line, parsed."""
    pytest.importorskip("triton")
    env = subprocess_env(TRITON_INTERPRET="1", OMP_NUM_THREADS="2")
    proc = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def start_interpreter() -> None:
    """What each file's interpreter entry point does first: check it runs under the interpreter
    and keep torch to the 2 cores the suite may use."""
    assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1"
    torch.set_num_threads(min(2, os.cpu_count() or 1))


def count_calls(module: ModuleType, *names: str) -> list[str]:
    """Wraps ``module.<name>`` for each of ``names`` so that every call appends the name to the
    returned list (the cases clear it and check which launchers ran)."""
    calls: list[str] = []

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            calls.append(name)
            return fn(*args, **kwargs)

        return wrapper

    for name in names:
        setattr(module, name, counted(name, getattr(module, name)))
    return calls
