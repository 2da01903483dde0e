#!/usr/bin/env bash
# SAM-Mix on phantoms: SAM-Mix with N = 5 and N = 50 labelled slices vs the U-Net trained on the same N slices and
# zero-shot SAM prompted with the same kind of CAM boxes (its classifier needs no labelled slice: run once), seeds, on phantom LiTS liver, with
# configs/train_sam_mix.json + configs/evaluate_sam_mix.json; then one table per protocol (fair: CAM boxes, every
# slice, 3D Dice / HD95 mm; anchor: ground-truth boxes on the slices holding the liver, slice Dice / pixel HD95) with
# scripts/compare_runs.py. docs/sam_mix.md reports a run of it.
#
#   bash scripts/run_comparison_sam_mix.sh                    # everything under runs/comparison_sam_mix (git-ignored)
#   ROOT=/tmp/cmp SEEDS="0" NS="5" bash scripts/run_comparison_sam_mix.sh
#   ROOT=/tmp/cmp METHODS=sam_mix NS=5 EXTRA="--output_stride 16 --train_prompts gt" bash scripts/run_comparison_sam_mix.sh
#
# Environment: ROOT, PYTHON, SEEDS, NS (labelled slices), METHODS (default "sam_mix unet zero_shot"), CASES and SIZE
# (phantoms), ROI (slice size of the classifier and the U-Net), SAM_MODEL_TYPE (default lite_medsam), EXTRA (more
# overrides for every run). Each run
# resumes where an interrupted one stopped, and a finished model or evaluation is not run again.
set -euo pipefail
cd "$(dirname "$0")/.."

ROOT=${ROOT:-runs/comparison_sam_mix}
PYTHON=${PYTHON:-python}
SEEDS=${SEEDS:-"0 1 2"}
NS=${NS:-"5 50"}
METHODS=${METHODS:-"sam_mix unet zero_shot"}
CASES=${CASES:-12}
SIZE=${SIZE:-64}
ROI=${ROI:-64}
EXTRA=${EXTRA:-}

mkdir -p "$ROOT/logs"
TIMES="$ROOT/times_sam_mix.tsv"
[[ -f "$TIMES" ]] || printf "step\tseconds\n" > "$TIMES"

# shellcheck source=scripts/comparison_steps.sh
source scripts/comparison_steps.sh

data="$ROOT/data/lits"
if [[ ! -f "$data/datalist.json" ]]; then
    timed lits_phantoms "$PYTHON" scripts/make_phantoms.py --dataset lits --out "$data" --cases "$CASES" \
        --size "$SIZE" --seed 0
fi
# also a datalist of an older version, without the "summarised" record of its label files (SAM-Mix refuses it)
if ! grep -qs '"summarised"' "$data/datalist.json"; then
    # enough training cases for 50 labelled slices holding the liver
    timed lits_datalist "$PYTHON" scripts/prepare_datalist.py --dataset lits --root "$data" \
        --out "$data/datalist.json" --val-fraction 0.1 --test-fraction 0.25 --seed 0 --no-progress
fi

files="['configs/sam_priors.json','configs/train_sam_mix.json','configs/presets/lits.json']"
eval_files="['configs/sam_priors.json','configs/train_sam_mix.json','configs/presets/lits.json','configs/evaluate_sam_mix.json']"
fair=()
anchor=()
first_n=${NS%% *}
for n in $NS; do
    for method in $METHODS; do
        # zero-shot SAM uses no labelled slice (only the classifier, which N does not change): run it once
        [[ $method == zero_shot && $n != "$first_n" ]] && continue
        folders=()
        for seed in $SEEDS; do
            keys=(--bundle_root "$ROOT" --dataset_dir "$data" --method "$method" --num_labelled "$n" --seed "$seed"
                  --roi_size "[$ROI,$ROI]" --batch_size 32 --seg_batch_size 2
                  --priors#sam_model_type "${SAM_MODEL_TYPE:-lite_medsam}")
            name="${method}_n${n}_liver_seed${seed}"
            eval_dir="$ROOT/runs/sam_mix/$name/eval"
            if [[ ! -f "$eval_dir/sam_mix_evaluation.json" ]]; then
                # shellcheck disable=SC2086
                timed "${name}_train" "$PYTHON" -m monai.bundle run training --config_file "$files" "${keys[@]}" $EXTRA
                # shellcheck disable=SC2086
                timed "${name}_eval" "$PYTHON" -m monai.bundle run evaluating --config_file "$eval_files" \
                    "${keys[@]}" $EXTRA
            fi
            folders+=("$eval_dir")
        done
        label=$([[ $method == zero_shot ]] && echo "$method" || echo "${method}-${n}")
        fair+=(--run "$label=$(IFS=,; echo "${folders[*]/%//fair}")")
        anchor+=(--run "$label=$(IFS=,; echo "${folders[*]/%//anchor}")")
    done
done
timed fair_table "$PYTHON" scripts/compare_runs.py "${fair[@]}" --metric dice --metric hd95 \
    --out "$ROOT/sam_mix_fair_table.md"
timed anchor_table "$PYTHON" scripts/compare_runs.py "${anchor[@]}" --metric slice_dice --metric slice_hd95_px \
    --out "$ROOT/sam_mix_anchor_table.md"
cat "$ROOT/sam_mix_fair_table.md" "$ROOT/sam_mix_anchor_table.md"
