#!/usr/bin/env bash
# Here, before a GPU run: the wheels the device machine lacks, for its Python 3.12, into .whl/
# (ignored by git; the device tool's `run` takes it with carry [".whl"]). The device's image has
# torch, numpy, pandas, matplotlib, tqdm, scipy, scikit-learn, opt_einsum, pytest and xdist, but
# not Pyro. Versions are the Python 3.12 lock's (constraints-py312.txt). ArviZ is not needed: the
# GPU checks never import it (pyro_vi imports ArviZ only in diagnostics._arviz_compat).
set -euo pipefail
cd "$(dirname "$0")/../.."
pin() { grep -i "^$1==" constraints-py312.txt | cut -d= -f3; }
rm -rf .whl && mkdir -p .whl
for pkg in pyro-ppl pyro-api; do
    python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
        --python-version 3.12 --implementation py --abi none --platform any \
        -d .whl "$pkg==$(pin "$pkg")"
done
ls -l .whl
