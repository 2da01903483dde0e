# Steps shared by scripts/run_comparison.sh and scripts/run_comparison_cls.sh (sourced, not run).
# Needs ROOT, PYTHON, CASES and SIZE; `timed` appends to $TIMES.

timed() {  # timed NAME COMMAND...: run, log to $ROOT/logs/NAME.log, append the wall time to $TIMES
    local name=$1; shift
    local start=$SECONDS
    echo "[$(date +%H:%M:%S)] $name"
    if ! "$@" > "$ROOT/logs/$name.log" 2>&1; then
        echo "FAILED: $name (see $ROOT/logs/$name.log)" >&2
        tail -20 "$ROOT/logs/$name.log" >&2
        exit 1
    fi
    printf "%s\t%s\n" "$name" "$((SECONDS - start))" >> "$TIMES"
}

phantom_data() {  # phantom_data PRESET LAYOUT: phantoms and their datalist under $ROOT/data/LAYOUT, unless there
    local preset=$1 layout=$2
    local data="$ROOT/data/$layout"
    # a datalist of an older version (no "summarised" record of its label files) is written again: the workflows
    # that train on slice labels refuse it
    grep -qs '"summarised"' "$data/datalist.json" && return 0
    [[ -f "$data/datalist.json" ]] || timed "${preset}_phantoms" "$PYTHON" scripts/make_phantoms.py \
        --dataset "$layout" --out "$data" --cases "$CASES" --size "$SIZE" --seed 0
    timed "${preset}_datalist" "$PYTHON" scripts/prepare_datalist.py --dataset "$preset" --root "$data" \
        --out "$data/datalist.json" --val-fraction 0.2 --test-fraction 0.4 --seed 0 --no-progress
}
