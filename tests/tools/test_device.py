"""tools/device: the GPU checks run only on a lent machine, so what can be checked here is checked here.

A GPU's few minutes must not go to a script that does not parse, a pin that is not in the lock
or a test that was renamed: each is a failure here instead.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEVICE = ROOT / "tools" / "device"
SCRIPTS = sorted(DEVICE.glob("*.sh"))


def test_there_are_two_scripts():
    assert [p.name for p in SCRIPTS] == ["gpu_checks.sh", "wheels.sh"]


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.name for p in SCRIPTS])
def test_each_script_parses(script):
    done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def test_every_wheel_the_scripts_fetch_is_pinned_in_the_312_lock():
    text = (DEVICE / "wheels.sh").read_text()
    packages = re.search(r"for pkg in ([^;]+);", text).group(1).split()
    lock = (ROOT / "constraints-py312.txt").read_text().lower()
    assert packages == ["pyro-ppl", "pyro-api"]
    for pkg in packages:
        assert re.search(rf"^{re.escape(pkg)}==\S+$", lock, re.MULTILINE), pkg


def test_every_test_the_gpu_run_selects_exists():
    text = (DEVICE / "gpu_checks.sh").read_text()
    targets = re.findall(r"(tests/\S+?\.py)(?:::(\w+))?", text)
    assert len(targets) == 3
    for path, name in targets:
        assert (ROOT / path).is_file(), path
        source = (ROOT / path).read_text()
        if name:
            assert re.search(rf"^def {name}\(", source, re.MULTILINE), f"{path}::{name}"
        # each selected file holds a test that runs only with CUDA: the point of the GPU run
        assert "torch.cuda.is_available()" in source, path
