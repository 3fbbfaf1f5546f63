#!/usr/bin/env bash
# Scaling of one study over worker processes: 1, 2, 4 and 8 `dsnn-hpo worker`s on a study whose
# objective is a command that sleeps 1 s per epoch (no CPU), with budgets 1-9 epochs (eta 3).
# Prints epochs finished per minute and the ratio to one worker, per schedule.
#
#   [WORKERS="1 8"] examples/study_scaling.sh [TRIALS] [SCHEDULES] [STORE]
#   e.g. examples/study_scaling.sh 60 "asha hyperband" sqlite     (or postgresql, using
#   $DSNN_HPO_TEST_POSTGRES; a fresh schema per run is made and dropped with psql)
#
# Epochs finished = the sum over finished trials of the epochs each trained (a promotion trains
# only the epochs above the state it continues). The time runs from the first worker's start to
# the last worker's exit.
set -euo pipefail
cd "$(dirname "$0")/.."
TRIALS="${1:-60}"
SCHEDULES="${2:-asha hyperband}"
STORE="${3:-sqlite}"
export PER_EPOCH="${PER_EPOCH:-1.0}"
BIN="${DSNN_HPO_BIN:-${CARGO_TARGET_DIR:-target}/release/dsnn-hpo}"
[ -x "$BIN" ] || { echo "build first: cargo build --release (or set DSNN_HPO_BIN)" >&2; exit 1; }
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

config() {
    # The objective is sh + awk (a few ms of CPU per trial), not Python: a Python start costs
    # 120-180 ms of CPU on a small machine, which on 2 cores with 8 workers is what limits the
    # rate, not the study. It reads the trial, sleeps PER_EPOCH s per epoch it trains (a
    # promotion trains the epochs above the third of its budget it continues), prints two
    # objectives.
    cat > "$TMP/objective.sh" <<'SH'
read -r l
set -- $(printf '%s\n' "$l" | awk -v pe="$PER_EPOCH" '{
    match($0, /"budget":[0-9.eE+-]+/); b = substr($0, RSTART + 9, RLENGTH - 9) + 0
    match($0, /"x":[0-9.eE+-]+/); x = substr($0, RSTART + 4, RLENGTH - 4) + 0
    match($0, /"y":[0-9.eE+-]+/); y = substr($0, RSTART + 4, RLENGTH - 4) + 0
    c = ($0 ~ /"continues":null/) ? 0 : b / 3
    printf "%.3f %.12g %.12g\n", pe * (b - c), (1 - x) ^ 2 + (y - 0.5) ^ 2 + 1 / (1 + b), x * b
}')
sleep "$1"
printf '{"loss": %s, "energy": %s}\n' "$2" "$3"
SH
    cat > "$TMP/study.toml" <<EOF
name = "scaling"
[objective]
kind = "command"
command = ["sh", "$TMP/objective.sh"]
names = ["loss", "energy"]
timeout_s = 120
[search]
trials = $TRIALS
seed = 0
[fidelity]
min_epochs = 1
max_epochs = 9
eta = 3
schedule = "$1"
[study]
heartbeat_s = 2
grace_s = 30
[[space]]
name = "x"
type = "float"
low = 0.0
high = 1.0
default = 0.5
[[space]]
name = "y"
type = "float"
low = 0.0
high = 1.0
default = 0.5
EOF
}

url_for() {
    if [ "$STORE" = postgresql ]; then
        local schema="scaling_$$_$1_$2"
        psql "${DSNN_HPO_TEST_POSTGRES_PSQL:-dsnn_hpo_test}" -qc "DROP SCHEMA IF EXISTS $schema CASCADE; CREATE SCHEMA $schema" >/dev/null
        echo "${DSNN_HPO_TEST_POSTGRES}?options=-csearch_path%3D$schema"
    else
        echo "sqlite://$TMP/$1-$2.db"
    fi
}

declare -A base
for schedule in $SCHEDULES; do
    config "$schedule"
    for n in ${WORKERS:-1 2 4 8}; do
        url=$(url_for "$schedule" "$n")
        "$BIN" study create --storage "$url" --study s --config "$TMP/study.toml" >/dev/null
        start=$(date +%s.%N)
        pids=()
        for _ in $(seq "$n"); do
            "$BIN" worker --storage "$url" --study s --quiet >/dev/null 2>"$TMP/err" &
            pids+=($!)
        done
        for p in "${pids[@]}"; do wait "$p"; done
        end=$(date +%s.%N)
        "$BIN" study export --storage "$url" --study s --out "$TMP/export-$schedule-$n" >/dev/null
        epochs=$(python3 - "$TMP/export-$schedule-$n/trials.jsonl" <<'PY'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
budget = {l["id"]: l["budget"] for l in lines}
print(sum(l["budget"] - (budget.get(l["continued_from"], 0) if l.get("continued_from") is not None else 0) for l in lines))
PY
)
        rate=$(python3 -c "print(f'{$epochs / (($end - $start) / 60):.1f}')")
        [ "$n" = 1 ] && base[$schedule]=$rate
        ratio=$(python3 -c "print(f'{$rate / ${base[$schedule]}:.2f}')")
        printf '%-10s %d workers: %5.0f epochs in %6.1f s = %6s epochs/min, %sx one worker\n' \
            "$schedule" "$n" "$epochs" "$(python3 -c "print($end - $start)")" "$rate" "$ratio"
        if [ "$STORE" = postgresql ]; then
            psql "${DSNN_HPO_TEST_POSTGRES_PSQL:-dsnn_hpo_test}" -qc "DROP SCHEMA scaling_$$_${schedule}_$n CASCADE" >/dev/null
        fi
    done
done
