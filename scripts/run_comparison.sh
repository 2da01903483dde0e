#!/usr/bin/env bash
# Raw baseline (prior_mode none) vs SAMAug (each preset's prior_mode) on phantom BraTS 2021 and phantom LiTS,
# three training seeds each: 12 trainings + 12 evaluations with the bundle's own configs, then one comparison table
# per dataset (scripts/compare_runs.py). Results are written under $ROOT; docs/comparison.md reports a run of it.
# Phantoms and datalists already under $ROOT/data are reused (scripts/comparison_steps.sh).
#
#   bash scripts/run_comparison.sh                     # everything under runs/comparison (git-ignored)
#   ROOT=/tmp/cmp SEEDS="0 1" bash scripts/run_comparison.sh
#
# Environment: ROOT (output folder), PYTHON (interpreter), SEEDS, CASES and SIZE (phantoms per dataset, in-plane
# size), DATASETS (subset of "brats lits"), SAM_MODEL_TYPE and SAM_CHECKPOINT (the SAM that makes the priors; default
# lite_medsam with its packaged weights, `fallback` for the weight-free generator), EXTRA (more overrides for every
# run, e.g. "--max_epochs 20").
set -euo pipefail
cd "$(dirname "$0")/.."

ROOT=${ROOT:-runs/comparison}
PYTHON=${PYTHON:-python}
SEEDS=${SEEDS:-"0 1 2"}
CASES=${CASES:-10}
SIZE=${SIZE:-64}
DATASETS=${DATASETS:-"brats lits"}
EXTRA=${EXTRA:-}
SAM=(--priors#sam_model_type "${SAM_MODEL_TYPE:-lite_medsam}")
if [[ -n "${SAM_CHECKPOINT:-}" ]]; then
    SAM+=(--priors#sam_checkpoint "$SAM_CHECKPOINT")
fi

mkdir -p "$ROOT/logs"
TIMES="$ROOT/times.tsv"
printf "step\tseconds\n" > "$TIMES"

# shellcheck source=scripts/comparison_steps.sh
source scripts/comparison_steps.sh

for preset in $DATASETS; do
    case $preset in
        brats) layout=brats2021; samaug_mode=concat ;;
        lits) layout=lits; samaug_mode=add ;;
        *) echo "unknown dataset $preset (brats, lits)" >&2; exit 2 ;;
    esac
    phantom_data "$preset" "$layout"
    timed "${preset}_priors" "$PYTHON" -m monai.bundle run precompute \
        --config_file "['configs/sam_priors.json','configs/precompute_priors.json','configs/presets/$preset.json']" \
        --bundle_root "$ROOT" "${SAM[@]}"

    train_files="['configs/sam_priors.json','configs/train_samaug_seg.json','configs/presets/$preset.json']"
    eval_files="['configs/sam_priors.json','configs/train_samaug_seg.json','configs/presets/$preset.json','configs/evaluate.json']"
    for seed in $SEEDS; do
        for label in raw samaug; do
            mode=$([[ $label == raw ]] && echo none || echo "$samaug_mode")
            run="${preset}_${label}_s${seed}"
            # shellcheck disable=SC2086  # EXTRA is a list of overrides
            keys=(--bundle_root "$ROOT" --prior_mode "$mode" --seed "$seed" --run_name "$run"
                  --ckpt_dir "$ROOT/runs/$run" "${SAM[@]}" $EXTRA)
            timed "${run}_train" "$PYTHON" -m monai.bundle run training --config_file "$train_files" "${keys[@]}"
            timed "${run}_eval" "$PYTHON" -m monai.bundle run evaluating --config_file "$eval_files" "${keys[@]}"
        done
    done
    evals() { local s; for s in $SEEDS; do printf "%s," "$ROOT/runs/${preset}_$1_s$s/eval_testing_aug_only"; done; }
    "$PYTHON" scripts/compare_runs.py --run "raw=$(evals raw)" --run "samaug=$(evals samaug)" \
        --metric dice --metric hd95 --metric slice_dice --out "$ROOT/${preset}_table.md"
done
echo "tables: $ROOT/*_table.md; wall times: $TIMES"
