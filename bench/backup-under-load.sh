#!/usr/bin/env bash
# backup-under-load.sh — the seed's job (fio randwrite 32k QD8 on a 1 GiB volume) with no backup,
# then while `ovis vdi backup` of the volume runs to an nbdkit target limited by --filter=rate
# to 20 MB/s and to 1 MB/s (issue 11). Prints IOPS and p99 latency of each, and their ratio to the
# run with no backup. Environment: RT (seconds per fio run, default 20), SIZE (1G), BENCH_DIR
# (default artifacts/bench-backup on this repository's disk).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir=${BENCH_DIR:-$root/artifacts/bench-backup}
rt=${RT:-20}; size=${SIZE:-1G}
ovis_port=${OVIS_PORT:-10831}; admin_port=${ADMIN_PORT:-7083}; kit_port=${KIT_PORT:-10832}
for cmd in fio nbdkit python3; do
  command -v "$cmd" >/dev/null || { echo "$cmd is missing: apt-get install -y fio nbdkit" >&2; exit 2; }
done
"$root/ovis" --version >/dev/null   # builds the Release binary once
rm -rf "$dir"; mkdir -p "$dir"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
ovis() { "$root/ovis" "$@" --admin "http://127.0.0.1:$admin_port"; }

dotnet "$root/artifacts/bin/ovis.dll" serve --data "$dir/ovis" --nbd "127.0.0.1:$ovis_port" --admin "127.0.0.1:$admin_port" \
  >"$dir/ovis.out" 2>"$dir/ovis.err" &
pids+=("$!")
for _ in $(seq 300); do grep -q '^admin listening' "$dir/ovis.out" 2>/dev/null && break; sleep 0.1; done
ovis vdi create bench "$size" >/dev/null
uri="nbd://127.0.0.1:$ovis_port/bench"
# A full volume, so that a backup has all of it to copy.
fio --ioengine=nbd --uri="$uri" --name=fill --rw=write --bs=1M --iodepth=8 --size="$size" >/dev/null

run_fio() { # prints "IOPS P99_US"
  fio --ioengine=nbd --uri="$uri" --name=seed --rw=randwrite --bs=32k --iodepth=8 --size="$size" \
      --time_based --runtime="$rt" --output-format=json 2>/dev/null \
    | python3 -c 'import json,sys; d=sys.stdin.read(); j=json.loads(d[d.index("{"):])["jobs"][0]["write"]; print("%.0f %.0f" % (j["iops"], j["clat_ns"]["percentile"]["99.000000"]/1000))'
}

echo "machine: $(nproc) cores, $(df -hT "$dir" | awk 'NR==2 {print $2 " on " $1}'); date: $(date -u +%F); fio randwrite 32k QD8, ${size}, ${rt}s"
read -r base_iops base_p99 < <(run_fio)
printf '%-28s %8s IOPS  p99 %6s us\n' "no backup" "$base_iops" "$base_p99"

for label in "20 MB/s:160M" "1 MB/s:8M"; do
  name=${label%%:*}; bits=${label##*:}
  truncate -s 0 "$dir/target.raw"; truncate -s "$size" "$dir/target.raw"
  nbdkit -f --exit-with-parent -i 127.0.0.1 -p "$kit_port" --filter=rate file "$dir/target.raw" rate="$bits" &
  kit=$!; pids+=("$kit")
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$kit_port) 2>/dev/null && break; sleep 0.1; done
  ovis vdi backup bench "nbd://127.0.0.1:$kit_port/" --json >"$dir/backup.log" 2>&1 &
  backup=$!
  # The backup runs once its job reports bytes.
  for _ in $(seq 200); do grep -q '"bytesDone"' "$dir/backup.log" 2>/dev/null && break; sleep 0.1; done
  read -r iops p99 < <(run_fio)
  done_bytes=$(tail -1 "$dir/backup.log" | python3 -c 'import json,sys; print(json.loads(sys.stdin.read()).get("bytesDone", 0))' 2>/dev/null || echo "?")
  job=$(tail -1 "$dir/backup.log" | python3 -c 'import json,sys; print(json.loads(sys.stdin.read())["id"])' 2>/dev/null || true)
  [ -n "$job" ] && ovis vdi jobs --cancel "$job" >/dev/null 2>&1 || true
  wait "$backup" 2>/dev/null || true
  kill "$kit" 2>/dev/null || true; wait "$kit" 2>/dev/null || true
  printf '%-28s %8s IOPS  p99 %6s us  = %.2fx  (backup copied %s bytes meanwhile)\n' "backup to nbdkit at $name" "$iops" "$p99" \
    "$(python3 -c "print($iops/$base_iops)")" "$done_bytes"
  # The cancelled backup left its snapshot for --resume; drop it for the next round.
  for s in $(ovis vdi list --json | python3 -c 'import json,sys; print(" ".join(v["name"] for v in json.load(sys.stdin) if v["isSnapshot"]))'); do
    ovis vdi delete "$s" >/dev/null; done
  rm -f "$dir/ovis/backups/"*.json
done
