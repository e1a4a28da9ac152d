#!/usr/bin/env bash
# The project's two commands. Each sets itself up on a fresh machine: it creates a project-local
# virtualenv (.venv), installs pyro-vi with its dev extra under the lock in constraints.txt (CPU
# torch 2.13.0), and reinstalls only when pyproject.toml or constraints.txt changed.
#
#   bash dev.sh demo    # the main job: CAVI vs SVI on the bundled Old Faithful data
#   bash dev.sh test    # the whole test suite: ruff, mypy, pytest (what CI runs)
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}
VENV=.venv
stamp="$VENV/.pyro-vi-installed"
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)

setup() {
    if [ ! -x "$VENV/bin/python" ]; then
        echo "[dev.sh] creating $VENV" >&2
        "$PYTHON" -m venv "$VENV"
    fi
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        echo "[dev.sh] installing pyro-vi[dev] into $VENV (pinned by constraints.txt)" >&2
        local extra=()
        [ -d /opt/wheels ] && extra+=(--find-links /opt/wheels)
        "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip setuptools wheel
        "$VENV/bin/python" -m pip install -q --disable-pip-version-check "${extra[@]}" \
            -c constraints.txt -e ".[dev]"
        echo "$want" > "$stamp"
    fi
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
    demo)
        setup
        exec "$VENV/bin/pyro-vi" demo "$@"
        ;;
    test)
        setup
        export MPLBACKEND=Agg
        "$VENV/bin/ruff" check .
        "$VENV/bin/mypy"
        "$VENV/bin/ruff" format --check . >/dev/null || echo "[dev.sh] note: ruff format would reformat some files" >&2
        exec "$VENV/bin/python" -m pytest -n 2 "$@"
        ;;
    *)
        echo "usage: bash dev.sh demo|test [args...]" >&2
        exit 2
        ;;
esac
