#!/usr/bin/env bash
# WeakMedSAM on phantoms: the segmentation network trained on CAM-alone labels vs on CAM + random-walk pseudo labels
# vs on the real labels (fully supervised, same settings), several seeds, on phantom BraTS 2021 whole tumour
# (brats_wt) and phantom AbdomenCT-1K's four organs (abdomenct_organs), with configs/train_weak.json; then one
# comparison table per task (scripts/compare_runs.py) and the pseudo-label quality of each seed. docs/weak.md
# reports a run of it.
#
#   bash scripts/run_comparison_weak.sh                       # everything under runs/comparison (git-ignored)
#   ROOT=/tmp/cmp SEEDS="0" TASKS=brats_wt bash scripts/run_comparison_weak.sh
#
# It shares ROOT, phantoms and datalists with scripts/run_comparison.sh. The SAM features are computed once per
# dataset (they depend on no seed); every stage of every seed resumes where an interrupted run stopped.
#
# Environment: ROOT, PYTHON, SEEDS, TASKS (subset of "brats_wt abdomenct_organs"), CASES and SIZE (phantoms), ROI
# (in-plane size of the classifier's slices), SAM_MODEL_TYPE (default lite_medsam), EXTRA (more overrides for every
# run, e.g. "--seg_max_epochs 100").
set -euo pipefail
cd "$(dirname "$0")/.."

ROOT=${ROOT:-runs/comparison}
PYTHON=${PYTHON:-python}
SEEDS=${SEEDS:-"0 1 2"}
TASKS=${TASKS:-"brats_wt abdomenct_organs"}
CASES=${CASES:-10}
SIZE=${SIZE:-64}
ROI=${ROI:-64}
EXTRA=${EXTRA:-}
SAM=(--priors#sam_model_type "${SAM_MODEL_TYPE:-lite_medsam}")

mkdir -p "$ROOT/logs"
TIMES="$ROOT/times_weak.tsv"
[[ -f "$TIMES" ]] || printf "step\tseconds\n" > "$TIMES"

# shellcheck source=scripts/comparison_steps.sh
source scripts/comparison_steps.sh

for task in $TASKS; do
    case $task in
        brats_wt) preset=brats; layout=brats2021 ;;
        abdomenct_organs) preset=abdomenct1k; layout=abdomenct1k ;;
        *) echo "unknown task $task (brats_wt, abdomenct_organs)" >&2; exit 2 ;;
    esac
    phantom_data "$preset" "$layout"
    files="['configs/sam_priors.json','configs/train_weak.json','configs/presets/$preset.json']"
    specs=()
    quality=()
    for labels in cam_label pseudo_label ground_truth; do
        folders=()
        for seed in $SEEDS; do
            run="weak_${task}_s${seed}"
            keys=(--bundle_root "$ROOT" --task "$task" --seed "$seed" --run_name "$run" --roi_size "[$ROI,$ROI]"
                  --seg_labels "$labels" "${SAM[@]}")
            suffix=$([[ $labels == pseudo_label ]] && echo "" || echo "_$labels")
            eval_dir=$(ls -d "$ROOT/runs/$run/segmentation$suffix"/eval_testing_* 2>/dev/null | head -1 || true)
            if [[ -z "$eval_dir" ]]; then
                # every earlier stage is found done (cache, sub-class file, classifier card) and only skipped
                # shellcheck disable=SC2086
                timed "${run}_$labels" "$PYTHON" -m monai.bundle run training --config_file "$files" \
                    "${keys[@]}" $EXTRA
                eval_dir=$(ls -d "$ROOT/runs/$run/segmentation$suffix"/eval_testing_* | head -1)
            fi
            folders+=("$eval_dir")
            [[ $labels == pseudo_label ]] && quality+=("$ROOT/runs/$run/pseudo_label_quality.json")
        done
        specs+=(--run "$labels=$(IFS=,; echo "${folders[*]}")")
    done
    timed "${task}_weak_table" "$PYTHON" scripts/compare_runs.py "${specs[@]}" --metric dice --metric hd95 \
        --metric slice_dice --metric slice_hd95 --out "$ROOT/${task}_weak_table.md"
    "$PYTHON" - "${quality[@]}" > "$ROOT/${task}_pseudo_quality.md" <<'PY'
import json, sys
import numpy as np
runs = [json.load(open(p)) for p in sys.argv[1:]]
kinds = list(runs[0]["mean"])
classes = list(runs[0]["mean"][kinds[0]])
print("| labels (training + validation cases) | " + " | ".join(classes) + " |")
print("|---" * (len(classes) + 1) + "|")
for kind in kinds:
    cells = []
    for c in classes:
        v = np.array([r["mean"][kind][c] for r in runs if r["mean"][kind][c] is not None], float)
        cells.append(f"{v.mean():.3f} ± {v.std(ddof=1) if len(v) > 1 else 0:.3f} (n={len(v)})")
    print(f"| {runs[0]['kinds'][kind]} | " + " | ".join(cells) + " |")
PY
    echo "tables: $ROOT/${task}_weak_table.md $ROOT/${task}_pseudo_quality.md"
done
