"""Smoke test of the mutation driver (``python -m tools.mutation``; the full run is not CI's).

One listed mutant, the Gamma variance ``a/b**2 -> a/b``, is applied in a copy of the tree and
killed by its selection, narrowed here to the one test that pins the moments; the original
tree is left untouched.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_one_listed_mutant_applies_in_a_copy_and_is_killed(tmp_path):
    target = ROOT / "pyro_vi" / "factors" / "gamma.py"
    before = target.read_text()
    script = (
        "import sys\n"
        "from dataclasses import replace\n"
        "import tools.mutation.run as run\n"
        "(m,) = [m for m in run.MUTANTS if m.id == 'gamma-variance']\n"
        "run.MUTANTS = (replace(m, tests=('tests/factors/test_factors.py::"
        "test_mean_variance_and_stddev_match_torch',)),)\n"
        f"sys.exit(run.main(['--out', {str(tmp_path)!r}]))\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (row,) = json.loads((tmp_path / "report.json").read_text())
    assert (row["id"], row["status"], row["outcome"]) == ("gamma-variance", "killed", "failed")
    assert "| pyro_vi/factors | 1 | 0 |" in (tmp_path / "report.md").read_text()
    assert target.read_text() == before
