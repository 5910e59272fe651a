#!/usr/bin/env bash
# cluster-3-nodes.sh [ROUNDS] — replicated Ovis against qemu-nbd on the same disk, in one run:
# an etcd, three Ovis nodes in three zones on this machine (3 copies of every object), the
# volume written through node a; qemu-nbd serves a raw file. Alternates A B A B via
# shared/tools/compare-fio.sh and prints medians and A/B ratios.
# Environment: RT (seconds per job, default 10), SIZE (1G), JOBS (default randwrite4k_qd32),
# BENCH_DIR (default artifacts/bench-cluster), COMPARE_FIO (path of compare-fio.sh). Ends with each
# node's peak resident memory.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
rounds=${1:-3}
dir=${BENCH_DIR:-$root/artifacts/bench-cluster}
compare=${COMPARE_FIO:-$root/../shared/tools/compare-fio.sh}
size=${SIZE:-1G}
export JOBS=${JOBS:-randwrite4k_qd32}
etcd_port=${ETCD_PORT:-23791}; qemu_port=${QEMU_PORT:-10832}
[ -f "$compare" ] || { echo "compare-fio.sh not found at $compare (set COMPARE_FIO)" >&2; exit 2; }
for cmd in fio qemu-nbd python3 etcd; do
  command -v "$cmd" >/dev/null || { echo "$cmd is missing: apt-get install -y fio qemu-utils etcd-server" >&2; exit 2; }
done

"$root/ovis" --version >/dev/null   # builds the Release binary once
rm -rf "$dir"; mkdir -p "$dir"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

etcd --data-dir "$dir/etcd" --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
  --listen-peer-urls "http://127.0.0.1:$((etcd_port + 1))" --initial-advertise-peer-urls "http://127.0.0.1:$((etcd_port + 1))" \
  --initial-cluster "default=http://127.0.0.1:$((etcd_port + 1))" >"$dir/etcd.log" 2>&1 &
pids+=("$!")
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$etcd_port/health" >/dev/null 2>&1 && break; sleep 0.1; done
uri="etcd://127.0.0.1:$etcd_port/bench"
"$root/ovis" cluster format --copies 3 --etcd "$uri" >/dev/null

i=0
declare -A node_pid
for zone in a b c; do
  dotnet "$root/artifacts/bin/ovis.dll" serve --data "$dir/$zone" --nbd "127.0.0.1:$((10840 + i))" --admin "127.0.0.1:$((7090 + i))" \
    --peer "127.0.0.1:$((7190 + i))" --cluster "$uri" --zone "$zone" --node-id "n-$zone" >"$dir/$zone.out" 2>"$dir/$zone.err" &
  pids+=("$!"); node_pid[$zone]=$!
  for _ in $(seq 200); do grep -q '^admin listening' "$dir/$zone.out" 2>/dev/null && break; sleep 0.1; done
  grep -q '^admin listening' "$dir/$zone.out" || { cat "$dir/$zone.err" >&2; exit 1; }
  i=$((i + 1))
done
"$root/ovis" vdi create bench "$size" --admin "http://127.0.0.1:7090" >/dev/null

truncate -s "$size" "$dir/qemu.raw"
qemu-nbd -f raw --persistent -e 8 -b 127.0.0.1 -p "$qemu_port" "$dir/qemu.raw" &
pids+=("$!")
sleep 0.5

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(df -hT "$dir" | awk 'NR==2 {print $2 " on " $1}'); date: $(date -u +%F)"
echo "A = Ovis, 3 nodes on this machine, 3 copies (nbd://127.0.0.1:10840/bench), B = qemu-nbd (raw file), RT=${RT:-10}s, rounds=$rounds"
SIZE="$size" bash "$compare" "nbd://127.0.0.1:10840/bench" "nbd://127.0.0.1:$qemu_port" "$rounds"
"$root/ovis" node list --admin "http://127.0.0.1:7090"
# Peak resident memory of each node over the whole run (the kernel's high-water mark).
echo "peak RSS: $(for zone in a b c; do printf 'n-%s %s MiB  ' "$zone" "$(awk '/^VmHWM/ {print int($2 / 1024)}' "/proc/${node_pid[$zone]}/status")"; done)"
