#!/usr/bin/env bash
# delayed-links.sh — what latency between nodes costs the replicated write path, write-through
# and with the gateway writeback cache (docs/writeback-cache.md). An etcd and three nodes in three
# zones, 3 copies; every node's peer port sits behind bench/tools/delay-proxy.py and is published
# with --advertise-peer, so every copy crosses the delay. For each one-way delay in DELAYS (ms,
# default "none 0 2"; "none" is no proxy at all, to show the proxy's own cost) and each cache mode
# in CACHES (default "writethrough writeback"), through node a: fio 4k QD1 randwrite (mean and p99
# latency), 4k QD1 write + fsync (fio's fsync is NBD_CMD_FLUSH; the flush's own latency is the
# "flush" line), and 4k QD32 randwrite (IOPS). First, the disk's floor for one durable 4 KiB
# write: fio O_DIRECT write + fdatasync on a file beside the nodes' data, no NBD.
# Environment: RT (seconds per job, default 10), SIZE (256M), DELAYS, CACHES, CACHE_SIZE (the
# per-node --cache-size, default 128M), JOBS (any of "qd1 flush qd32", default all), SERVE_ARGS
# (more options for every node, e.g. --no-write-around), BENCH_DIR.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir=${BENCH_DIR:-$root/artifacts/bench-delayed-links}
rt=${RT:-10}; size=${SIZE:-256M}; delays=${DELAYS:-none 0 2}; caches=${CACHES:-writethrough writeback}
cache_size=${CACHE_SIZE:-128M}; jobs=" ${JOBS:-qd1 flush qd32} "
etcd_port=${ETCD_PORT:-23795}
for cmd in fio python3 etcd curl; do
  command -v "$cmd" >/dev/null || { echo "$cmd is missing: apt-get install -y fio etcd-server curl" >&2; exit 2; }
done
"$root/ovis" --version >/dev/null   # builds the Release binary once
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

# fio's JSON -> "IOPS MEAN_US P99_US" of its writes, then "N MEAN_US P99_US" of its syncs (0 0 0 without)
summarize='import json,sys
d=sys.stdin.read(); j=json.loads(d[d.index("{"):])["jobs"][0]; w=j["write"]; s=j.get("sync", {}).get("lat_ns", {})
p=lambda l: l.get("percentile", {}).get("99.000000", 0)/1000
print("%.0f %.0f %.0f %d %.0f %.0f" % (w["iops"], w["clat_ns"]["mean"]/1000, p(w["clat_ns"]), s.get("N", 0), s.get("mean", 0)/1000, p(s)))'
fio_job() { # NAME ARGS... -> prints "IOPS MEAN_US P99_US SYNCS SYNC_MEAN_US SYNC_P99_US"
  fio --ioengine=nbd --uri="nbd://127.0.0.1:10850/bench" --name="$1" --bs=4k --size="$size" --time_based --runtime="$rt" \
      --output-format=json "${@:2}" 2>/dev/null | python3 -c "$summarize"
}
row() { printf '%-10s %-13s %-24s %10s %10s %10s\n' "$@"; }

echo "machine: $(nproc) cores, $(df -hT "$root" | awk 'NR==2 {print $2 " on " $1}'); date: $(date -u +%F); commit $(git -C "$root" rev-parse --short HEAD); 3 nodes, 3 copies, ${rt}s per job, --cache-size $cache_size"
row "one-way" cache job IOPS "mean us" "p99 us"
mkdir -p "$dir"
read -r iops mean p99 syncs smean sp99 < <(fio --name=floor --filename="$dir/floor" --size=64M --rw=randwrite --bs=4k --iodepth=1 \
  --direct=1 --fdatasync=1 --time_based --runtime="$rt" --output-format=json 2>/dev/null | python3 -c "$summarize")
row "disk" "-" "O_DIRECT 4k + fdatasync" "$iops" "$((mean + smean))" "-"
rm -f "$dir/floor"
for delay in $delays; do
  cleanup; pids=()
  rm -rf "$dir"; mkdir -p "$dir"
  etcd --data-dir "$dir/etcd" --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$((etcd_port + 1))" --initial-advertise-peer-urls "http://127.0.0.1:$((etcd_port + 1))" \
    --initial-cluster "default=http://127.0.0.1:$((etcd_port + 1))" >"$dir/etcd.log" 2>&1 &
  pids+=("$!")
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$etcd_port/health" >/dev/null 2>&1 && break; sleep 0.1; done
  uri="etcd://127.0.0.1:$etcd_port/bench"
  "$root/ovis" cluster format --copies 3 --etcd "$uri" >/dev/null
  i=0
  for zone in a b c; do
    advertised=$((7190 + i))
    if [ "$delay" != none ]; then
      python3 "$root/bench/tools/delay-proxy.py" "$((7290 + i))" "$((7190 + i))" "$delay" &
      pids+=("$!")
      advertised=$((7290 + i))
    fi
    dotnet "$root/artifacts/bin/ovis.dll" serve --data "$dir/$zone" --nbd "127.0.0.1:$((10850 + i))" --admin "127.0.0.1:$((7095 + i))" \
      --peer "127.0.0.1:$((7190 + i))" --advertise-peer "127.0.0.1:$advertised" --cluster "$uri" --zone "$zone" --node-id "n-$zone" \
      --cache-size "$cache_size" ${SERVE_ARGS:-} \
      >"$dir/$zone.out" 2>"$dir/$zone.err" &
    pids+=("$!")
    for _ in $(seq 200); do grep -q '^admin listening' "$dir/$zone.out" 2>/dev/null && break; sleep 0.1; done
    grep -q '^admin listening' "$dir/$zone.out" || { cat "$dir/$zone.err" >&2; exit 1; }
    i=$((i + 1))
  done
  "$root/ovis" vdi create bench "$size" --admin "http://127.0.0.1:7095" >/dev/null
  label=$([ "$delay" = none ] && echo "no proxy" || echo "${delay} ms")
  fio --ioengine=nbd --uri="nbd://127.0.0.1:10850/bench" --name=fill --rw=write --bs=1M --iodepth=8 --size="$size" >/dev/null 2>&1
  for cache in $caches; do
    "$root/ovis" vdi set bench "cache=$cache" --admin "http://127.0.0.1:7095" >/dev/null
    if [[ $jobs == *" qd1 "* ]]; then
      read -r iops mean p99 _ < <(fio_job qd1 --rw=randwrite --iodepth=1)
      row "$label" "$cache" "randwrite 4k QD1" "$iops" "$mean" "$p99"
    fi
    if [[ $jobs == *" flush "* ]]; then
      read -r iops mean p99 syncs smean sp99 < <(fio_job flush --rw=randwrite --iodepth=1 --fsync=1)
      row "$label" "$cache" "4k QD1 write + flush" "$iops" "$((mean + smean))" "-"
      row "$label" "$cache" "  the flush alone" "$syncs" "$smean" "$sp99"
    fi
    if [[ $jobs == *" qd32 "* ]]; then
      read -r iops mean p99 _ < <(fio_job qd32 --rw=randwrite --iodepth=32)
      row "$label" "$cache" "randwrite 4k QD32" "$iops" "$mean" "$p99"
    fi
  done
done
