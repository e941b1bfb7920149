"""The installed project owns its top-level import names.

longconv installs the packages ``kernels``, ``models``, ``data`` and ``benchmarks`` and the
modules ``train`` and ``eval`` at the top level (the layout of the repository). Another
distribution in the environment with one of those names breaks both: a regular install writes
the two into one directory (the later one's ``__init__.py`` wins, the other's modules stay
behind), and beside an editable install, the other one is what ``import kernels`` finds outside
the checkout. Hugging Face's ``kernels`` is the case that happened: transformers 5.25 made it a
requirement, hence the pin in pyproject.toml.
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _installed() -> importlib.metadata.Distribution:
    try:
        return importlib.metadata.distribution("longconv")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("longconv is not installed here (README: pip install -e '.[dev]')")


def _top_level(dist: importlib.metadata.Distribution) -> list[str]:
    names = (dist.read_text("top_level.txt") or "").split()
    assert "kernels" in names, f"longconv's top_level.txt lists {names}"
    return names


def test_no_other_distribution_provides_our_top_level_names():
    names = _top_level(_installed())
    owners = importlib.metadata.packages_distributions()
    shared = {
        name: sorted(set(owners.get(name, [])) - {"longconv"})
        for name in names
        if set(owners.get(name, [])) - {"longconv"}
    }
    assert not shared, (
        f"other distributions install longconv's top-level names: {shared}; "
        "uninstall them or pin whatever requires them (pyproject.toml)"
    )


def test_import_outside_the_checkout_finds_this_project(tmp_path):
    """From another directory (no checkout on sys.path), ``import kernels`` and the rest must
    still be longconv's: the public API is there, and the files are this checkout's (editable
    install) or the longconv distribution's."""
    dist = _installed()
    names = [n for n in _top_level(dist) if n not in ("train", "eval")]
    probe = (
        "import importlib, json, sys\n"
        f"names = {names!r}\n"
        "out = {n: importlib.import_module(n).__file__ for n in names}\n"
        "import kernels\n"
        "out['api'] = all(hasattr(kernels, a) for a in ('fftconv', 'short_conv', 'FFTConv'))\n"
        "print(json.dumps(out))\n"
    )
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-I", "-c", probe], cwd=tmp_path, capture_output=True, text=True, env=env
    )
    assert result.returncode == 0, result.stderr[-2000:]
    import json

    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found.pop("api") is True, "import kernels found a package without longconv's API"
    site = Path(str(dist.locate_file(""))).resolve()
    for name, file in found.items():
        path = Path(file).resolve()
        assert path.is_relative_to(ROOT) or path.is_relative_to(site / name), (
            f"import {name} outside the checkout found {path}, neither in {ROOT} nor "
            f"longconv's install at {site / name}"
        )
