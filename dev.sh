#!/usr/bin/env bash
# The project's two commands. Each sets itself up on a fresh machine: it creates project-local
# virtualenvs, installs pyro-vi with its dev extra under a lock, and reinstalls only when
# pyproject.toml or that lock changed.
#
#   .venv/        Python 3.11 (python3, or $PYTHON), ArviZ 0.23, CPU torch 2.13.0: constraints.txt
#   .venv-py312/  Python 3.12 ($PYTHON312, python3.12, or pyenv's 3.12), ArviZ 1.x: constraints-py312.txt
#
#   bash dev.sh demo    # the main job: CAVI vs SVI on the bundled Old Faithful data (.venv)
#   bash dev.sh test    # what CI runs: ruff, mypy, then the whole pytest suite on both venvs
set -euo pipefail
cd "$(dirname "$0")"

# setup VENV PYTHON CONSTRAINTS [pip options...]: create VENV and (re)install when the pins changed
setup() {
    local venv=$1 python=$2 lock=$3
    shift 3
    local stamp="$venv/.pyro-vi-installed" want
    want=$(cat pyproject.toml "$lock" | sha256sum | cut -d' ' -f1)
    if [ ! -x "$venv/bin/python" ]; then
        echo "[dev.sh] creating $venv with $python" >&2
        "$python" -m venv "$venv"
    fi
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        echo "[dev.sh] installing pyro-vi[dev] into $venv (pinned by $lock)" >&2
        "$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip setuptools wheel
        "$venv/bin/python" -m pip install -q --disable-pip-version-check "$@" -c "$lock" -e ".[dev]"
        echo "$want" > "$stamp"
    fi
}

setup_py311() {
    local extra=()
    [ -d /opt/wheels ] && extra+=(--find-links /opt/wheels)  # the local CPU torch wheel
    setup .venv "${PYTHON:-python3}" constraints.txt "${extra[@]}"
}

# A Python 3.12 interpreter: $PYTHON312, python3.12 on PATH (one that runs: a pyenv shim may
# not), or pyenv's newest 3.12.
find_py312() {
    local candidates=("${PYTHON312:-}" "$(command -v python3.12 || true)")
    if command -v pyenv >/dev/null 2>&1; then
        local prefix
        prefix=$(pyenv prefix 3.12 2>/dev/null || true)
        [ -n "$prefix" ] && candidates+=("$prefix/bin/python3.12")
    fi
    local root=${PYENV_ROOT:-$HOME/.pyenv}
    candidates+=($(ls -d "$root"/versions/3.12.*/bin/python3.12 2>/dev/null | sort -V -r))
    local exe
    for exe in "${candidates[@]}"; do
        if [ -n "$exe" ] && "$exe" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null; then
            echo "$exe"
            return 0
        fi
    done
    return 1
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
    demo)
        setup_py311
        exec .venv/bin/pyro-vi demo "$@"
        ;;
    test)
        setup_py311
        if ! py312=$(find_py312); then
            echo "[dev.sh] ERROR: no Python 3.12 found (tried \$PYTHON312, python3.12 on PATH, pyenv's" \
                 "3.12.*). CI must run the suite on Python 3.12 with ArviZ 1.x too; install one" \
                 "(e.g. 'pyenv install 3.12') or point PYTHON312 at it." >&2
            exit 2
        fi
        setup .venv-py312 "$py312" constraints-py312.txt
        export MPLBACKEND=Agg
        .venv/bin/ruff check .
        .venv/bin/mypy
        .venv/bin/ruff format --check . >/dev/null || echo "[dev.sh] note: ruff format would reformat some files" >&2
        echo "[dev.sh] pytest on Python 3.11 / ArviZ 0.23 (.venv)" >&2
        PYRO_VI_OTHER_PYTHON="$PWD/.venv-py312/bin/python" .venv/bin/python -m pytest -n 2 "$@"
        echo "[dev.sh] pytest on Python 3.12 / ArviZ 1.x (.venv-py312)" >&2
        PYRO_VI_OTHER_PYTHON="$PWD/.venv/bin/python" exec .venv-py312/bin/python -m pytest -n 2 "$@"
        ;;
    *)
        echo "usage: bash dev.sh demo|test [args...]" >&2
        exit 2
        ;;
esac
