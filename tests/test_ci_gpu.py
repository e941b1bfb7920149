"""``.ci/gpu`` runs every test file that has GPU tests: a file left out of its groups would
never run on the device."""

from __future__ import annotations

import re

from tests.helpers import ROOT


def _groups() -> list[str]:
    """The script's groups with its path variables (``F=tests/...``) expanded."""
    script = (ROOT / ".ci" / "gpu").read_text()
    variables = dict(re.findall(r"^([A-Z])=(\S+)$", script, flags=re.M))
    body = re.search(r"^groups=\($(.*?)^\)$", script, flags=re.M | re.S)
    assert body, "no groups=( ... ) array in .ci/gpu"
    groups = re.findall(r'^\s*"(.*)"\s*$', body.group(1), flags=re.M)
    return [re.sub(r"\$([A-Z])", lambda m: variables[m.group(1)], g) for g in groups]


def test_every_gpu_test_file_is_in_a_group():
    groups = _groups()
    assert len(groups) >= 10
    named = set()
    for group in groups:
        for word in group.split():
            if word.startswith("tests"):
                named.add(word.split("::")[0].rstrip("/"))
    gpu_files = [
        path.relative_to(ROOT).as_posix()
        for path in sorted((ROOT / "tests").rglob("test_*.py"))
        if re.search(r"^\s*(@pytest\.mark\.gpu\b|pytestmark\b.*\bgpu\b)", path.read_text(), re.M)
    ]
    assert gpu_files
    missing = [
        f for f in gpu_files if f not in named and not any(f.startswith(d + "/") for d in named)
    ]
    assert not missing, f".ci/gpu runs none of {missing}"
