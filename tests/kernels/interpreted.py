"""Runs a test module's Triton cases under the interpreter, in a subprocess.

TRITON_INTERPRET=1 must be set before triton is imported, and the rest of the suite may
already have imported it, so each kernel test file runs its CPU cases as ``python -m <module>``
and prints one JSON line of results, which its tests then check.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

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
