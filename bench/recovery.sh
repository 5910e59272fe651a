#!/usr/bin/env bash
# recovery.sh [ROUNDS] — what recovery costs clients, on a 3-node cluster on this machine (an etcd,
# nodes a b c in three zones, 3 copies of every object):
#  1. The dirty-region log: randwrite 4k QD32 through node a (--dirty-log on) against node b
#     (--dirty-log off), each on its own 1 GiB volume whose copies live on the same three nodes,
#     alternated A B A B by compare-fio.sh. Ratio A/B.
#  2. A full node's recovery: a 1 GiB volume is filled; randwrite 4k QD32 through node a for RT s
#     without recovery; then node c is stopped, its data directory wiped and c started again (it
#     must get every object back, at --recovery-bandwidth), and the same job runs meanwhile.
#     Ratio during/without, and the bytes recovery copied during the job.
# Environment: RT (seconds per job, default 10), BW (--recovery-bandwidth, default 64M),
# BENCH_DIR (default artifacts/bench-recovery), COMPARE_FIO (path of compare-fio.sh).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
rounds=${1:-3}
dir=${BENCH_DIR:-$root/artifacts/bench-recovery}
compare=${COMPARE_FIO:-$root/../shared/tools/compare-fio.sh}
rt=${RT:-10}; bw=${BW:-64M}
etcd_port=${ETCD_PORT:-23801}
[ -f "$compare" ] || { echo "compare-fio.sh not found at $compare (set COMPARE_FIO)" >&2; exit 2; }
for cmd in fio python3 etcd curl; do
  command -v "$cmd" >/dev/null || { echo "$cmd is missing: apt-get install -y fio etcd-server curl" >&2; exit 2; }
done

"$root/ovis" --version >/dev/null   # builds the Release binary once
rm -rf "$dir"; mkdir -p "$dir"
declare -A pid
cleanup() { for p in "${pid[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

etcd --data-dir "$dir/etcd" --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
  --listen-peer-urls "http://127.0.0.1:$((etcd_port + 1))" --initial-advertise-peer-urls "http://127.0.0.1:$((etcd_port + 1))" \
  --initial-cluster "default=http://127.0.0.1:$((etcd_port + 1))" >"$dir/etcd.log" 2>&1 &
pid[etcd]=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$etcd_port/health" >/dev/null 2>&1 && break; sleep 0.1; done
uri="etcd://127.0.0.1:$etcd_port/bench"
"$root/ovis" cluster format --copies 3 --etcd "$uri" >/dev/null

start_node() { # zone index [serve options...]
  local zone=$1 i=$2; shift 2
  : >"$dir/$zone.out"
  dotnet "$root/artifacts/bin/ovis.dll" serve --data "$dir/$zone" --nbd "127.0.0.1:$((10860 + i))" --admin "127.0.0.1:$((7100 + i))" \
    --peer "127.0.0.1:$((7200 + i))" --cluster "$uri" --zone "$zone" --node-id "n-$zone" --recovery-bandwidth "$bw" "$@" \
    >"$dir/$zone.out" 2>>"$dir/$zone.err" &
  pid[$zone]=$!
  for _ in $(seq 300); do grep -q '^admin listening' "$dir/$zone.out" 2>/dev/null && break; sleep 0.1; done
  grep -q '^admin listening' "$dir/$zone.out" || { cat "$dir/$zone.err" >&2; exit 1; }
}
start_node a 0 --dirty-log on
start_node b 1 --dirty-log off
start_node c 2
admin="http://127.0.0.1:7100"
"$root/ovis" vdi create drl-on 1G --admin "$admin" >/dev/null
"$root/ovis" vdi create drl-off 1G --admin "$admin" >/dev/null
"$root/ovis" vdi create full 1G --admin "$admin" >/dev/null

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(df -hT "$dir" | awk 'NR==2 {print $2 " on " $1}'); date: $(date -u +%F)"
echo "== 1. dirty-region log: A = through node a, --dirty-log on; B = through node b, --dirty-log off; 3 copies; RT=${rt}s, rounds=$rounds"
RT=$rt JOBS=randwrite4k_qd32 bash "$compare" "nbd://127.0.0.1:10860/drl-on" "nbd://127.0.0.1:10861/drl-off" "$rounds"

iops() { # uri
  fio --name=r --ioengine=nbd --uri="$1" --size=1G --rw=randwrite --bs=4k --iodepth=32 --time_based --runtime="$rt" --ramp_time=2 \
    --output-format=json 2>/dev/null | sed '/^fio: /d' | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["jobs"][0]["write"]["iops"]))'
}
copied() { "$root/ovis" cluster recovery --json --admin "$admin" | python3 -c 'import json,sys; j=json.load(sys.stdin); print(j["bytesMoved"]+j["bytesResynced"])'; }

echo "== 2. a full node's recovery: randwrite 4k QD32 through node a on a filled 1 GiB volume, RT=${rt}s, --recovery-bandwidth $bw"
fio --name=fill --ioengine=nbd --uri="nbd://127.0.0.1:10860/full" --size=1G --rw=write --bs=1M --iodepth=8 >/dev/null 2>&1
without=$(iops "nbd://127.0.0.1:10860/full")
kill "${pid[c]}"; wait "${pid[c]}" 2>/dev/null || true
rm -rf "$dir/c"
start_node c 2
before=$(copied)
during=$(iops "nbd://127.0.0.1:10860/full")
after=$(copied)
python3 - "$without" "$during" "$before" "$after" <<'PY'
import sys
without, during, before, after = map(int, sys.argv[1:])
print(f"without recovery: {without} IOPS; during recovery of node c: {during} IOPS; ratio {during / without:.2f}; "
      f"recovery copied {(after - before) / 2**20:.0f} MiB during the job")
PY
for _ in $(seq 120); do
  "$root/ovis" node list --json --admin "$admin" | python3 -c 'import json,sys; sys.exit(0 if not any(n["stale"] for n in json.load(sys.stdin)) else 1)' && break
  sleep 1
done
"$root/ovis" cluster recovery --admin "$admin"
"$root/ovis" node list --admin "$admin"
