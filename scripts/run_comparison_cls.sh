#!/usr/bin/env bash
# SAMAug-C on phantoms: raw-only vs augmented-only vs dual-branch classifiers, several training seeds, slice-level
# tumour-present tasks on phantom BraTS 2021 (brats_wt) and phantom LiTS (lits_tumour), with the bundle's own configs;
# then one comparison table per task (scripts/compare_runs.py). docs/comparison_cls.md reports a run of it.
#
#   bash scripts/run_comparison_cls.sh                         # everything under runs/comparison (git-ignored)
#   ROOT=/tmp/cmp SEEDS="0 1" VARIANTS="raw dual" bash scripts/run_comparison_cls.sh
#   VARIANTS=augmented MODES="emphasis emphasis_min add" bash scripts/run_comparison_cls.sh   # the emphases
#
# It shares ROOT, phantoms and datalists with scripts/run_comparison.sh (made here when missing). Runs whose
# evaluation exists are skipped, and an interrupted training resumes from its last epoch.
#
# Environment: ROOT, PYTHON, SEEDS, VARIANTS (subset of "raw augmented dual"), TASKS (subset of "brats_wt
# lits_tumour"), MODES (cls_aug_mode values of the augmented and dual variants, default the config's default
# emphasis_min; with one mode the runs are named TASK_VARIANT_sSEED and the table columns VARIANT, with several
# TASK_VARIANT_MODE_sSEED and VARIANT_MODE), CASES and SIZE (phantoms), ROI (in-plane size the slices are resized
# to), SAM_MODEL_TYPE (default
# lite_medsam), GRID (box-grid overrides; default side-by-side boxes without refinement, the README main job's grid),
# EXTRA (more overrides for every training and evaluation, e.g. "--max_epochs 30").
set -euo pipefail
cd "$(dirname "$0")/.."

ROOT=${ROOT:-runs/comparison}
PYTHON=${PYTHON:-python}
SEEDS=${SEEDS:-"0 1 2"}
VARIANTS=${VARIANTS:-"raw augmented dual"}
read -r -a MODE_LIST <<< "${MODES:-emphasis_min}"
TASKS=${TASKS:-"brats_wt lits_tumour"}
CASES=${CASES:-10}
SIZE=${SIZE:-64}
ROI=${ROI:-64}
EXTRA=${EXTRA:-}
read -r -a GRID_ARGS <<< "${GRID:---priors#box_grid#box_stride 1.0 --priors#box_grid#refine_rounds 0}"
SAM=(--priors#sam_model_type "${SAM_MODEL_TYPE:-lite_medsam}" "${GRID_ARGS[@]}")

mkdir -p "$ROOT/logs"
TIMES="$ROOT/times_cls.tsv"
[[ -f "$TIMES" ]] || printf "step\tseconds\n" > "$TIMES"

# shellcheck source=scripts/comparison_steps.sh
source scripts/comparison_steps.sh

for task in $TASKS; do
    case $task in
        brats_wt) preset=brats; layout=brats2021 ;;
        lits_tumour) preset=lits; layout=lits ;;
        *) echo "unknown task $task (brats_wt, lits_tumour)" >&2; exit 2 ;;
    esac
    phantom_data "$preset" "$layout"
    train_files="['configs/sam_priors.json','configs/train_samaug_cls.json','configs/presets/$preset.json']"
    eval_files="['configs/sam_priors.json','configs/train_samaug_cls.json','configs/presets/$preset.json','configs/evaluate_cls.json']"
    # the priors of the augmented branch, computed once per mode's prior kinds (up-to-date cases are skipped: the
    # emphases and add share one partition, samaug has its own)
    for mode in "${MODE_LIST[@]}"; do
        timed "${task}_${mode}_cls_priors" "$PYTHON" -m monai.bundle run precompute \
            --config_file "['configs/sam_priors.json','configs/precompute_priors.json','configs/train_samaug_cls.json','configs/presets/$preset.json']" \
            --bundle_root "$ROOT" --task "$task" --cls_aug_mode "$mode" "${SAM[@]}"
    done

    specs=()
    for variant in $VARIANTS; do
        # the raw variant sees no prior: one set of runs, whatever MODES holds
        modes=("${MODE_LIST[@]}")
        [[ $variant == raw ]] && modes=("${MODE_LIST[0]}")
        for mode in "${modes[@]}"; do
            label=$variant
            (( ${#modes[@]} > 1 )) && label="${variant}_${mode}"
            folders=()
            for seed in $SEEDS; do
                run="${task}_${label}_s${seed}"
                keys=(--bundle_root "$ROOT" --task "$task" --cls_branches "$variant" --cls_aug_mode "$mode"
                      --seed "$seed" --run_name "$run" --roi_size "[$ROI,$ROI,$ROI]" "${SAM[@]}")
                if [[ ! -f "$ROOT/runs/cls_$run/eval_testing/metrics_summary.json" ]]; then
                    # an interrupted training resumes from its checkpoint_last.pt
                    # shellcheck disable=SC2086
                    timed "train_$run" "$PYTHON" -m monai.bundle run training --config_file "$train_files" "${keys[@]}" $EXTRA
                    # shellcheck disable=SC2086
                    timed "eval_$run" "$PYTHON" -m monai.bundle run evaluating --config_file "$eval_files" "${keys[@]}" $EXTRA
                fi
                folders+=("$ROOT/runs/cls_$run/eval_testing")
            done
            specs+=(--run "$label=$(IFS=,; echo "${folders[*]}")")
        done
    done
    timed "${task}_table" "$PYTHON" scripts/compare_runs.py "${specs[@]}" --metric auc --metric balanced_accuracy \
        --metric f1 --metric sensitivity --metric specificity --out "$ROOT/${task}_cls_table.md"
    echo "table: $ROOT/${task}_cls_table.md"
done
