"""Run each mutant of :data:`tools.mutation.mutants.MUTANTS` against its test selection.

For every mutant the driver copies the working tree once into a temporary folder (tracked
and untracked-but-not-ignored files, so the run measures the tree as it is), replaces the
mutant's exact snippet in its file (the snippet must occur exactly once, otherwise the mutant
is reported ``stale``), runs ``pytest -x -q`` on the mutant's selection in the copy, and puts
the file back. A test failure or a time-out kills the mutant; a clean pass means it survived.
Each distinct selection is first run on the unmutated copy: a selection that already fails
there cannot judge a mutant, so its mutants are reported ``baseline-failed`` and not scored.

The copy imports its own sources: ``pyro_vi`` from the copy's root (first on ``sys.path``)
and ``pyro_vi.models`` through a symlink ``pyro_vi/models -> ../models`` (the editable
install would otherwise map it back to the original tree); the driver checks this before
it starts.

Usage (from the repository root, outside CI; minutes per package on two cores)::

    .venv/bin/python -m tools.mutation                  # every mutant
    .venv/bin/python -m tools.mutation --only psis      # ids containing "psis"
    .venv/bin/python -m tools.mutation --list           # the mutant ids

It writes ``report.json`` and ``report.md`` (per-package score, every survivor) into
``--out`` (default ``tools/mutation/results/``), atomically.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from tools.mutation.mutants import MUTANTS, Mutant

ROOT = Path(__file__).resolve().parents[2]


def package_of(path: str) -> str:
    """The package a mutated file belongs to, as TESTING.md scores it."""
    parts = Path(path).parts
    if parts[0] == "models":
        return "models"
    if parts[:2] == ("pyro_vi", "diagnostics"):
        return "trust layer"
    if parts[:2] == ("pyro_vi", "svi"):
        return "svi runtime"
    if parts[:2] == ("pyro_vi", "cavi"):
        return "cavi engine"
    return "/".join(parts[:2])


def _tree_files(root: Path) -> list[str]:
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=root,
                         check=True, capture_output=True).stdout.decode()
    return [f for f in out.split("\0") if f and (root / f).is_file()]


def copy_tree(root: Path, dest: Path) -> None:
    """Copy the working tree's source files to ``dest`` and link ``pyro_vi/models``."""
    for rel in _tree_files(root):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, target)
    (dest / "pyro_vi" / "models").symlink_to(Path("..") / "models")


def _env(copy: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(copy) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("MKL_NUM_THREADS", "1")
    return env


def check_isolation(copy: Path) -> None:
    """Fail unless ``pyro_vi`` and ``pyro_vi.models`` import from the copy."""
    probe = ("import pyro_vi, pyro_vi.models.gmm.model as m; "
             "print(pyro_vi.__file__); print(m.__file__)")
    out = subprocess.run([sys.executable, "-c", probe], cwd=copy, env=_env(copy), check=True,
                         capture_output=True, text=True).stdout.split()
    for path in out:
        if not Path(path).absolute().is_relative_to(copy):
            raise RuntimeError(f"the copy imports {path} from outside {copy}; mutants would "
                               "not be seen")


def run_tests(copy: Path, selection: tuple[str, ...], timeout: float) -> tuple[str, float, str]:
    """Run ``pytest -x -q`` on ``selection`` in ``copy``: ``(passed|failed|timeout, s, tail)``."""
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:xdist", "-p", "no:cacheprovider",
           "--no-header", *selection]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=copy, env=_env(copy), capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", time.perf_counter() - t0, ""
    tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-3:])
    return ("passed" if proc.returncode == 0 else "failed"), time.perf_counter() - t0, tail


def apply(copy: Path, m: Mutant) -> str | None:
    """Write the mutant into the copy; return the original text, or None when stale."""
    path = copy / m.file
    if not path.is_file():
        return None
    text = path.read_text()
    if text.count(m.original) != 1:
        return None
    path.write_text(text.replace(m.original, m.replacement, 1))
    return text


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def report_markdown(rows: list[dict[str, object]]) -> str:
    """Per-package score table and the survivors, as Markdown."""
    per: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for r in rows:
        per[str(r["package"])][str(r["status"])] += 1
    lines = ["| package | killed | survived | stale | baseline-failed | score |",
             "|---|---|---|---|---|---|"]
    for pkg in sorted(per):
        c = per[pkg]
        scored = c["killed"] + c["survived"]
        score = f"{100 * c['killed'] / scored:.0f} %" if scored else "n/a"
        lines.append(f"| {pkg} | {c['killed']} | {c['survived']} | {c['stale']} | "
                     f"{c['baseline-failed']} | {score} |")
    lines += ["", "Survivors:", ""]
    lines += [f"- `{r['id']}` ({r['file']}): {r['note']}" for r in rows
              if r["status"] == "survived"] or ["- none"]
    stale = [r for r in rows if r["status"] in ("stale", "baseline-failed")]
    if stale:
        lines += ["", "Not scored:", ""]
        lines += [f"- `{r['id']}`: {r['status']}" for r in stale]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns 0 when every scored mutant was killed, else 1."""
    ap = argparse.ArgumentParser(prog="python -m tools.mutation", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", action="append", default=[],
                    help="run mutants whose id contains this text (repeatable)")
    ap.add_argument("--list", action="store_true", help="print the mutant ids and exit")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per test run")
    ap.add_argument("--out", type=Path, default=ROOT / "tools" / "mutation" / "results")
    ap.add_argument("--root", type=Path, default=ROOT, help="the tree to mutate (a git checkout)")
    args = ap.parse_args(argv)
    chosen = [m for m in MUTANTS if not args.only or any(o in m.id for o in args.only)]
    if args.list:
        print("\n".join(f"{m.id}\t{m.file}" for m in chosen))
        return 0
    if not chosen:
        print(f"no mutant id contains {args.only}", file=sys.stderr)
        return 2
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="pyro-vi-mutation-") as tmp:
        copy = Path(tmp) / "tree"
        copy_tree(args.root.resolve(), copy)
        check_isolation(copy)
        baseline: dict[tuple[str, ...], str] = {}
        for m in chosen:
            if m.tests not in baseline:
                baseline[m.tests] = run_tests(copy, m.tests, args.timeout)[0]
                print(f"baseline {' '.join(m.tests)}: {baseline[m.tests]}", flush=True)
            row: dict[str, object] = {"id": m.id, "file": m.file, "package": package_of(m.file),
                                      "tests": list(m.tests), "note": m.note, "seconds": 0.0}
            if baseline[m.tests] != "passed":
                row["status"] = "baseline-failed"
            else:
                original = apply(copy, m)
                if original is None:
                    row["status"] = "stale"
                else:
                    try:
                        outcome, secs, tail = run_tests(copy, m.tests, args.timeout)
                    finally:
                        (copy / m.file).write_text(original)
                    row.update(status="survived" if outcome == "passed" else "killed",
                               outcome=outcome, seconds=round(secs, 1), tail=tail)
            rows.append(row)
            print(f"{row['status']:>15}  {m.id}  ({row['seconds']} s)", flush=True)
            _write_atomic(args.out / "report.json", json.dumps(rows, indent=1) + "\n")
    md = report_markdown(rows)
    _write_atomic(args.out / "report.md", md)
    print(md)
    return 0 if all(r["status"] != "survived" for r in rows) else 1
