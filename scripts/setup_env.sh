#!/usr/bin/env bash
# Create (or update) the project's virtual environment in .venv: CPU torch pinned by constraints-cpu.txt, the
# bundle installed editable with its test extras. Idempotent: a stamp records what was installed.
# GPU users: create your own environment with your CUDA torch and run `pip install -e ".[test]"` instead.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
    echo "creating $VENV with $($PYTHON --version)"
    "$PYTHON" -m venv "$VENV"
fi
pip_install() {
    # pip's own output without the noise of index locations this machine's pip.conf names but lacks
    local log rc=0
    log=$(mktemp)
    "$VENV/bin/python" -m pip install -q -c constraints-cpu.txt "$@" >"$log" 2>&1 || rc=$?
    grep -v "^WARNING: Location" "$log" >&2 || true
    rm -f "$log"
    return "$rc"
}
stamp="$VENV/.installed"
want=$(cat pyproject.toml constraints-cpu.txt | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "installing the bundle and its dependencies into $VENV (torch pinned by constraints-cpu.txt)"
    # torch first, from the pin: no dependency can then pull a multi-GB CUDA build
    pip_install "torch==2.13.0"
    pip_install -e ".[test]"
    "$VENV/bin/python" -c "import torch, monai, bundle.sam, segment_anything" >/dev/null
    echo "$want" > "$stamp"
fi
