"""models/ installs as pyro_vi.models (wheel and editable), and nothing named plain `models`."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_editable_install_maps_models_into_the_package(tmp_path):
    import pyro_vi.models.gmm.model

    assert Path(pyro_vi.models.gmm.model.__file__).resolve() == ROOT / "models" / "gmm" / "model.py"
    # Outside the source tree (so the checkout itself is not on sys.path), the installed
    # package must not make a top-level `models` importable.
    code = "import importlib.util as u, pyro_vi.models as m; print(u.find_spec('models'), m.__name__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, check=True).stdout.split()
    assert out == ["None", "pyro_vi.models"]


@pytest.mark.skipif(not (ROOT / "pyproject.toml").exists(), reason="needs the source tree")
def test_wheel_holds_pyro_vi_models_and_no_top_level_models(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    (wheel,) = tmp_path.glob("pyro_vi-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert "models" not in tops
    assert tops <= {"pyro_vi", next(t for t in tops if t.endswith(".dist-info"))}
    for must in ("pyro_vi/models/gmm/model.py", "pyro_vi/models/__init__.py",
                 "pyro_vi/data/old_faithful.csv", "pyro_vi/factors/wishart.py", "pyro_vi/py.typed"):
        assert must in names, must
    entry = [n for n in names if n.endswith("entry_points.txt")]
    assert entry
    assert "pyro-vi = pyro_vi.cli.main:main" in zipfile.ZipFile(wheel).read(entry[0]).decode()
