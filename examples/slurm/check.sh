#!/usr/bin/env bash
# Opt-in check (not in .ci/run): a single-node SLURM on this machine runs
# `sbatch --wait --array=0-3 examples/slurm/workers.sbatch` against a PostgreSQL study whose
# objective is a command that sleeps, then checks that every trial finished exactly once.
#
#   sudo examples/slurm/check.sh            # as root, on a Debian machine with apt
#
# Installs Debian's slurm-wlm and munge when absent, writes /etc/slurm/slurm.conf for this one
# node (no cgroups: proctrack/linuxproc, task/none; no GPUs, so the array runs CPU workers with
# the script's --gres line removed), starts munged, slurmctld and slurmd. Uses the PostgreSQL
# that .ci/run starts (DSNN_HPO_TEST_POSTGRES, else the local socket and database dsnn_hpo_test).
set -euo pipefail
cd "$(dirname "$0")/../.."
[ "$(id -u)" = 0 ] || { echo "run as root (it installs and starts SLURM)" >&2; exit 1; }
BIN="${DSNN_HPO_BIN:-$(pwd)/target/release/dsnn-hpo}"
[ -x "$BIN" ] || { echo "build first: cargo build --release (or set DSNN_HPO_BIN)" >&2; exit 1; }
URL="${DSNN_HPO_TEST_POSTGRES:-postgresql://root@%2Fvar%2Frun%2Fpostgresql/dsnn_hpo_test}"

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q slurm-wlm munge >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q slurm-wlm munge >/dev/null; }
fi
host=$(hostname -s)
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge
[ -s /etc/munge/munge.key ] || { mkdir -p /etc/munge; dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none; }
chown -R munge: /etc/munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
chmod 400 /etc/munge/munge.key
pgrep -x munged >/dev/null || runuser -u munge -- /usr/sbin/munged
node=$(slurmd -C | head -n 1)
cat > /etc/slurm/slurm.conf <<EOF
ClusterName=dsnnhpo
SlurmctldHost=$host
SlurmUser=root
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
ReturnToService=2
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
$node
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
EOF
pgrep -x slurmctld >/dev/null || slurmctld
pgrep -x slurmd >/dev/null || slurmd
for _ in $(seq 30); do sinfo -h -o %T 2>/dev/null | grep -qE 'idle|mix' && break; sleep 1; done
sinfo

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cat > "$tmp/study.toml" <<'EOF'
name = "slurm-check"
[objective]
kind = "command"
shell = "python3 -c \"import json,sys,time; t=json.loads(sys.stdin.readline()); time.sleep(0.5*t['budget']); x=t['config']['x']; print(json.dumps({'loss': (1-x)**2 + 1/(1+t['budget']), 'energy': x*t['budget']}))\""
names = ["loss", "energy"]
[search]
trials = 20
[fidelity]
min_epochs = 1
max_epochs = 9
eta = 3
schedule = "asha"
[study]
heartbeat_s = 2
grace_s = 20
[[space]]
name = "x"
type = "float"
low = 0.0
high = 1.0
default = 0.5
EOF
study="slurm-check-$(date +%s)"
"$BIN" study create --storage "$URL" --study "$study" --config "$tmp/study.toml"
grep -v -- '--gres' examples/slurm/workers.sbatch > "$tmp/workers.sbatch"
DSNN_HPO_STORAGE="$URL" DSNN_HPO_STUDY="$study" DSNN_HPO_DEVICE=cpu DSNN_HPO_BIN="$BIN" \
    sbatch --wait --array=0-3 --cpus-per-task=1 --mem=512M --chdir="$tmp" "$tmp/workers.sbatch"
"$BIN" study show --storage "$URL" --study "$study"
"$BIN" study export --storage "$URL" --study "$study" --out "$tmp/export"
python3 - "$tmp/export/trials.jsonl" <<'PY'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
ids = [l["id"] for l in lines]
assert len(ids) == len(set(ids)), "a trial finished twice"
assert sum(1 for i in ids if i < 1_000_000) == 20, f"{len(ids)} trials finished"
assert all(l["status"] == "success" for l in lines)
print(f"slurm check: {len(ids)} trials finished exactly once by the array's workers")
PY
cat "$tmp"/dsnn-hpo-*.out 2>/dev/null | tail -n 8
