#!/usr/bin/env bash
# cluster-ab.sh COMMIT [ROUNDS] — the replicated write path of this tree against the same of an
# earlier COMMIT, in one run: two etcds and two three-node clusters (3 copies, zones a b c) on
# this machine, each volume written through its node a, alternating A B A B via
# shared/tools/compare-fio.sh. A = this tree, B = COMMIT (checked out into a worktree under
# BENCH_DIR and built there). Measures what a change costs on the data path, e.g. fencing:
#   RT=10 bench/cluster-ab.sh 5d67776 3
# Environment: RT (seconds per job, default 10), SIZE (1G), JOBS (default randwrite4k_qd32
# randwrite4k_qd1_fsync), BENCH_DIR (default artifacts/bench-ab), COMPARE_FIO.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
commit=${1:?usage: cluster-ab.sh COMMIT [ROUNDS]}
rounds=${2:-3}
dir=${BENCH_DIR:-$root/artifacts/bench-ab}
compare=${COMPARE_FIO:-$root/../shared/tools/compare-fio.sh}
size=${SIZE:-1G}
export JOBS=${JOBS:-"randwrite4k_qd32 randwrite4k_qd1_fsync"}
[ -f "$compare" ] || { echo "compare-fio.sh not found at $compare (set COMPARE_FIO)" >&2; exit 2; }
for cmd in fio python3 etcd git; do
  command -v "$cmd" >/dev/null || { echo "$cmd is missing: apt-get install -y fio etcd-server git" >&2; exit 2; }
done

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  git -C "$root" worktree remove --force "$dir/base" 2>/dev/null || true
}
trap cleanup EXIT
rm -rf "$dir"; mkdir -p "$dir"
git -C "$root" worktree add --detach "$dir/base" "$commit" >/dev/null
"$root/ovis" --version >/dev/null        # builds this tree's Release binary once
"$dir/base/ovis" --version >/dev/null    # and the base's

# start TREE LABEL PORT_BASE: etcd on PORT_BASE, nodes' NBD on PORT_BASE+10.., admin +20.., peer +30..
start() {
  local tree=$1 label=$2 base=$3 uri i=0
  etcd --data-dir "$dir/$label/etcd" --listen-client-urls "http://127.0.0.1:$base" --advertise-client-urls "http://127.0.0.1:$base" \
    --listen-peer-urls "http://127.0.0.1:$((base + 1))" --initial-advertise-peer-urls "http://127.0.0.1:$((base + 1))" \
    --initial-cluster "default=http://127.0.0.1:$((base + 1))" >"$dir/$label.etcd.log" 2>&1 &
  pids+=("$!")
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$base/health" >/dev/null 2>&1 && break; sleep 0.1; done
  uri="etcd://127.0.0.1:$base/bench"
  "$tree/ovis" cluster format --copies 3 --etcd "$uri" >/dev/null
  for zone in a b c; do
    dotnet "$tree/artifacts/bin/ovis.dll" serve --data "$dir/$label/$zone" --nbd "127.0.0.1:$((base + 10 + i))" \
      --admin "127.0.0.1:$((base + 20 + i))" --peer "127.0.0.1:$((base + 30 + i))" --cluster "$uri" --zone "$zone" \
      --node-id "n-$zone" >"$dir/$label.$zone.out" 2>"$dir/$label.$zone.err" &
    pids+=("$!")
    for _ in $(seq 200); do grep -q '^admin listening' "$dir/$label.$zone.out" 2>/dev/null && break; sleep 0.1; done
    grep -q '^admin listening' "$dir/$label.$zone.out" || { cat "$dir/$label.$zone.err" >&2; exit 1; }
    i=$((i + 1))
  done
  "$tree/ovis" vdi create bench "$size" --admin "http://127.0.0.1:$((base + 20))" >/dev/null
}
start "$root" a 24100
start "$dir/base" b 24200

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(df -hT "$dir" | awk 'NR==2 {print $2 " on " $1}'); date: $(date -u +%F)"
echo "A = this tree ($(git -C "$root" rev-parse --short HEAD)), B = $(git -C "$dir/base" rev-parse --short HEAD); 3 nodes, 3 copies each; RT=${RT:-10}s, rounds=$rounds"
SIZE="$size" bash "$compare" "nbd://127.0.0.1:24110/bench" "nbd://127.0.0.1:24210/bench" "$rounds"
