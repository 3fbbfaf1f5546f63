#!/usr/bin/env bash
# GPU benchmark: ResNet20 training throughput, float / all-Q / all-PS, on each device given,
# with the energy of each run and its source (nvml on NVIDIA GPUs), next to PyTorch's float
# ResNet20 step on the same device (benches/torch_resnet20_step.py). Every row of one run comes
# from one machine within minutes, so the ratios are what to read.
#
#   benches/gpu.sh [DEVICE...]        # default: cuda:0 wgpu   (cpu works too, as a self-test)
#
# Environment:
#   CIFAR10       folder holding cifar-10-batches-bin (default: a synthetic CIFAR-10-format set of
#                 random images is generated in the work folder; throughput does not depend on
#                 pixel values, accuracy then means nothing)
#   LIMIT_TRAIN   training images per epoch (default 10000; each device trains 2 epochs)
#   EPOCHS        epochs per run (default 2: the first includes kernel compilation/autotuning)
#   PYTHON        the Python with torch (default python3); without torch the anchor is skipped
#   FEATURES      cargo features (default: those the devices need)
#   BENCH_DIR     work folder (default: a fresh temporary folder); results.jsonl collects the rows
set -euo pipefail
cd "$(dirname "$0")/.."

devices=("$@")
[ ${#devices[@]} -gt 0 ] || devices=(cuda:0 wgpu)
feats=()
for d in "${devices[@]}"; do
    case "$d" in
        cpu) ;;
        wgpu*) feats+=(wgpu) ;;
        vulkan*) feats+=(vulkan) ;;
        cuda*) feats+=(cuda) ;;
        *) echo "unknown device '$d': expected cpu, wgpu, wgpu:N, vulkan, vulkan:N or cuda:N" >&2; exit 2 ;;
    esac
done
features="${FEATURES:-$(printf '%s\n' dsnn "${feats[@]}" | sort -u | paste -sd, -)}"
limit="${LIMIT_TRAIN:-10000}"
epochs="${EPOCHS:-2}"
python="${PYTHON:-python3}"
command -v jq >/dev/null || { echo "this benchmark needs jq" >&2; exit 2; }

target="${CARGO_TARGET_DIR:-target}"
echo "== cargo build --release --features $features (bin dsnn-hpo)"
cargo build --release --features "$features" --bin dsnn-hpo
bin="$target/release/dsnn-hpo"

work="${BENCH_DIR:-$(mktemp -d -t dsnn-gpu-bench.XXXXXX)}"
mkdir -p "$work"
results="$work/results.jsonl"
: > "$results"

data="${CIFAR10:-}"
if [ -z "$data" ]; then
    data="$work/cifar10"
    n_images=$(( limit + limit / 9 + 1000 ))
    echo "== no CIFAR10 given: $n_images synthetic CIFAR-10-format images in $data (random pixels)"
    mkdir -p "$data/cifar-10-batches-bin"
    "$python" - "$data/cifar-10-batches-bin" "$n_images" <<'EOF'
import os, random, sys
out, n = sys.argv[1], int(sys.argv[2])
rng = random.Random(0)
def batch(path, count):
    with open(path, "wb") as f:
        for _ in range(count):
            f.write(bytes([rng.randrange(10)]))
            f.write(rng.randbytes(3072))
batch(os.path.join(out, "data_batch_1.bin"), n)
batch(os.path.join(out, "test_batch.bin"), 1000)
EOF
fi
echo "== data $data, $limit training images, $epochs epochs per run, work folder $work"

printf '\n%-8s %-8s %12s %10s %14s %-10s %s\n' device network "images/s" "epoch s" "energy J/ep" source "vs torch float"
for d in "${devices[@]}"; do
    anchor=""
    tdev="$d"
    [ "$d" = cpu ] || tdev="cuda:${d#*:}"
    [[ "$d" == cuda* || "$d" == cpu ]] || tdev="cuda"
    threads=()
    [ "$d" = cpu ] && threads=(--threads "$(nproc)") # rayon's default, which dsnn-hpo uses
    a=$("$python" benches/torch_resnet20_step.py --device "$tdev" "${threads[@]}" --steps 20 2>/dev/null || true)
    if [ -n "$a" ] && jq -e '.images_per_s' >/dev/null 2>&1 <<<"$a"; then
        anchor=$(jq -r '.images_per_s' <<<"$a")
        jq -c --arg d "$d" '{kind: "torch", bench_device: $d} + .' <<<"$a" >> "$results"
    else
        echo "torch anchor on $tdev skipped: ${a:-no output from $python}" >&2
    fi
    for net in float q ps; do
        sets=(--set "data.path=$data" --set "data.limit_train=$limit" --set data.augment=false
              --set train.schedule=constant)
        case $net in
            float) sets+=(--set train.shift_depth=0) ;;
            q) sets+=(--set train.shift_depth=20 --set train.shift_type=q) ;;
            ps) sets+=(--set train.shift_depth=20 --set train.shift_type=ps) ;;
        esac
        out="$work/$d-$net.json"
        if ! "$bin" train --config configs/cifar10.toml "${sets[@]}" --epochs "$epochs" \
            --device "$d" --quiet --json > "$out" 2> "$work/$d-$net.err"; then
            echo "$d $net failed: $(tail -n 3 "$work/$d-$net.err")" >&2
            continue
        fi
        jq -c --arg d "$d" --arg n "$net" '{kind: "dsnn-hpo", bench_device: $d, network: $n,
            images_per_s: .report.images_per_s, train_s: .report.train_s, epochs: .report.epochs,
            energy_j: .energy.energy_j, gpu_j: .energy.gpu.energy_j, gpu_source: .energy.gpu.source,
            cpu_j: .energy.cpu.energy_j, cpu_source: .energy.cpu.source}' "$out" >> "$results"
        row=$(tail -n 1 "$results")
        ips=$(jq -r '.images_per_s' <<<"$row")
        src=$(jq -r 'if .gpu_source != "none" then "gpu " + .gpu_source else "cpu " + .cpu_source end' <<<"$row")
        ej=$(jq -r "(if .gpu_source != \"none\" then .gpu_j else .energy_j end) / $epochs" <<<"$row")
        ratio="-"
        [ -n "$anchor" ] && ratio=$(jq -nr --argjson a "$ips" --argjson b "$anchor" '$a / $b * 1000 | round / 1000 | tostring + "x"')
        printf '%-8s %-8s %12.1f %10.1f %14.1f %-10s %s\n' "$d" "$net" "$ips" \
            "$(jq -r ".train_s / $epochs" <<<"$row")" "$ej" "$src" "$ratio"
    done
    [ -n "$anchor" ] && printf '%-8s %-8s %12.1f %10s %14s %-10s %s\n' "$d" "torch" "$anchor" "-" "-" "-" \
        "(PyTorch float step, $(jq -r '.torch' <<<"$a"))"
done
echo
echo "rows: $results (images/s over all $epochs epochs, training only; energy per epoch includes validation)"
