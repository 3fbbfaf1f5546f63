#!/usr/bin/env bash
# Opt-in end-to-end check of the GPU path (not part of .ci/run: the wgpu build takes ~50 minutes
# cold on 2 cores). Trains on a wgpu adapter and on the CPU from the same saved state and compares
# them, then runs a tiny `optimize` and `pareto` on the GPU. Works on a real GPU and on Mesa's
# software Vulkan driver (lavapipe: `apt-get install -y mesa-vulkan-drivers libvulkan1`).
#
#   tests/gpu_end_to_end.sh [DEVICE]          # DEVICE: wgpu (default), vulkan, cuda:0 ..., or cpu
#                                             # (cpu against cpu: a self-test of the script)
#
# Environment: CARGO_TARGET_DIR as for any build; FEATURES (default: the device's feature);
# E2E_LIMIT_TRAIN (default 512 training images), E2E_DIR (default: a fresh temporary folder),
# E2E_MODELS (default "small-cnn resnet20": every weight layer shift, PS and Q, on each).
#
# Why a saved state: burn's random initialisation differs between backends, so both runs resume
# the same CPU-trained epoch-1 state (weights, optimizer state, the data order comes from the
# seed). Rounding is deterministic, augmentation off; what is left are float differences in
# summation order, which a power-of-two rounding boundary can amplify for single weights. The
# tolerances below say how close that leaves the two runs after one more epoch.
set -euo pipefail
cd "$(dirname "$0")/.."

device="${1:-wgpu}"
case "$device" in
    wgpu*) feature=wgpu ;;
    vulkan*) feature=vulkan ;;
    cuda*) feature=cuda ;;
    # cpu against cpu: a self-test of this script (the two runs must agree exactly).
    cpu) feature=dsnn ;;
    *) echo "unknown device '$device': expected wgpu, wgpu:N, vulkan, vulkan:N, cuda:N or cpu" >&2; exit 2 ;;
esac
features="${FEATURES:-$feature}"
limit="${E2E_LIMIT_TRAIN:-512}"
# Loss tolerances: absolute, on cross-entropy of order 1; accuracy: a fraction of the validation
# split, which is 10% of the training images (51 of 512: 0.04 = 2 images).
loss_tol="${E2E_LOSS_TOL:-0.02}"
acc_tol="${E2E_ACC_TOL:-0.04}"
for tool in cargo jq; do
    command -v "$tool" >/dev/null || { echo "this check needs $tool" >&2; exit 2; }
done

target="${CARGO_TARGET_DIR:-target}"
echo "== cargo build --release --features $features (bin dsnn-hpo)"
cargo build --release --features "$features" --bin dsnn-hpo
bin="$target/release/dsnn-hpo"

work="${E2E_DIR:-$(mktemp -d -t dsnn-e2e.XXXXXX)}"
mkdir -p "$work"
echo "== work folder $work"
t0=$(date +%s)
fail=0

common=(--config configs/quickstart.toml --set "data.limit_train=$limit" --set data.augment=false
        --set train.rounding=deterministic --set train.batch_size=64 --quiet --json)

compare() { # name cpu.json gpu.json
    local name=$1 cpu=$2 gpu=$3
    for key in valid_loss train_loss valid_accuracy; do
        local a b tol
        a=$(jq -r ".report.$key" "$cpu")
        b=$(jq -r ".report.$key" "$gpu")
        tol=$loss_tol
        [ "$key" = valid_accuracy ] && tol=$acc_tol
        local verdict
        verdict=$(jq -nr --argjson a "$a" --argjson b "$b" --argjson t "$tol" \
            'if (($a - $b) | fabs) <= $t then "ok" else "FAIL" end')
        printf '%-14s %-15s cpu %-10.6f %-6s %-10.6f |diff| %.6f (tolerance %s) %s\n' "$name" "$key" "$a" \
            "$device" "$b" "$(jq -nr --argjson a "$a" --argjson b "$b" '($a - $b) | fabs')" "$tol" "$verdict"
        [ "$verdict" = ok ] || fail=1
    done
    local ga gb
    ga=$(jq -r '.report.images_per_s' "$cpu"); gb=$(jq -r '.report.images_per_s' "$gpu")
    printf '%-14s %-15s cpu %.1f  %s %.1f images/s; energy sources: cpu run %s, %s run gpu %s\n' "$name" throughput \
        "$ga" "$device" "$gb" "$(jq -r '.energy.cpu.source' "$cpu")" "$device" "$(jq -r '.energy.gpu.source' "$gpu")"
}

for model in ${E2E_MODELS:-small-cnn resnet20}; do
    for shift in ps q; do
        tag="$model-$shift"
        sets=(--set "train.model=$model" --set "train.shift_type=$shift" --set train.shift_depth=999)
        echo "== $tag: epoch 1 on the CPU, saved"
        "$bin" train "${common[@]}" "${sets[@]}" --epochs 1 --device cpu \
            --save "$work/$tag-init" > "$work/$tag-init.json"
        echo "== $tag: epoch 2 from that state, on cpu and on $device"
        "$bin" train "${common[@]}" "${sets[@]}" --epochs 2 --device cpu \
            --resume "$work/$tag-init" > "$work/$tag-cpu.json"
        if ! "$bin" train "${common[@]}" "${sets[@]}" --epochs 2 --device "$device" \
            --resume "$work/$tag-init" > "$work/$tag-gpu.json"; then
            echo "$tag: the $device run failed" >&2
            fail=1
            continue
        fi
        compare "$tag" "$work/$tag-cpu.json" "$work/$tag-gpu.json"
    done
done

echo "== a tiny optimize on $device (4 trials, budgets 1-2 epochs), then pareto"
"$bin" optimize --config configs/quickstart.toml --run-dir "$work/opt" --quiet \
    --set "device=$device" --set "data.limit_train=$limit" --set search.trials=4 \
    --set fidelity.min_epochs=1 --set fidelity.max_epochs=2 --set fidelity.eta=2 > "$work/optimize.txt"
"$bin" pareto --run "$work/opt" | tee "$work/pareto.txt"
trials=$(jq '.trials' "$work/opt/summary.json"); failed=$(jq '.failed' "$work/opt/summary.json")
echo "summary.json: $trials trials, $failed failed, front $(jq -c '.front' "$work/opt/summary.json"), search energy source gpu: $(jq -r '.search_energy.gpu.source' "$work/opt/summary.json")"
if [ "$trials" -lt 4 ] || [ "$failed" != 0 ]; then
    echo "the optimize run on $device did not finish its 4 trials cleanly" >&2
    fail=1
fi

echo "== done in $(( $(date +%s) - t0 )) s (work folder $work)"
if [ "$fail" != 0 ]; then
    echo "the $device run differs from the CPU run by more than the tolerances" >&2
    exit 1
fi
