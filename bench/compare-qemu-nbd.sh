#!/usr/bin/env bash
# compare-qemu-nbd.sh [ROUNDS] — the fio jobs of shared/BENCHMARKS.md against Ovis (A) and
# qemu-nbd (B) on the same disk, in one run, alternating A B A B; prints medians and A/B ratios,
# and Ovis's peak resident memory. Environment: RT (seconds per job, default 10), SIZE (1G),
# JOBS (job names, see compare-fio.sh), BENCH_DIR (where both keep their data; default
# artifacts/bench on this repository's disk), COMPARE_FIO (path of shared/tools/compare-fio.sh).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
rounds=${1:-3}
dir=${BENCH_DIR:-$root/artifacts/bench}
compare=${COMPARE_FIO:-$root/../shared/tools/compare-fio.sh}
size=${SIZE:-1G}
ovis_port=${OVIS_PORT:-10821}; admin_port=${ADMIN_PORT:-7081}; qemu_port=${QEMU_PORT:-10822}
[ -x "$compare" ] || [ -f "$compare" ] || { echo "compare-fio.sh not found at $compare (set COMPARE_FIO)" >&2; exit 2; }
for cmd in fio qemu-nbd python3; do
  command -v "$cmd" >/dev/null || { echo "$cmd is missing: apt-get install -y fio qemu-utils" >&2; exit 2; }
done

"$root/ovis" --version >/dev/null   # builds the Release binary once
rm -rf "$dir"; mkdir -p "$dir"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

dotnet "$root/artifacts/bin/ovis.dll" serve --data "$dir/ovis" --nbd "127.0.0.1:$ovis_port" --admin "127.0.0.1:$admin_port" \
  >"$dir/ovis.out" 2>"$dir/ovis.err" &
ovis_pid=$!; pids+=("$ovis_pid")
for _ in $(seq 100); do grep -q '^admin listening' "$dir/ovis.out" 2>/dev/null && break; sleep 0.1; done
grep -q '^admin listening' "$dir/ovis.out" || { cat "$dir/ovis.err" >&2; exit 1; }
"$root/ovis" vdi create bench "$size" --admin "http://127.0.0.1:$admin_port" >/dev/null

truncate -s "$size" "$dir/qemu.raw"
qemu-nbd -f raw --persistent -e 8 -b 127.0.0.1 -p "$qemu_port" "$dir/qemu.raw" &
pids+=("$!")
sleep 0.5

# Peak resident set of the Ovis daemon while the jobs run.
( peak=0; while kill -0 "$ovis_pid" 2>/dev/null; do
    rss=$(awk '/^VmRSS/ {print $2}' "/proc/$ovis_pid/status" 2>/dev/null || echo 0)
    [ "${rss:-0}" -gt "$peak" ] && peak=$rss && echo "$peak" > "$dir/peak-rss-kib"
    sleep 0.5
  done ) &
pids+=("$!")

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(df -hT "$dir" | awk 'NR==2 {print $2 " on " $1}'); date: $(date -u +%F)"
echo "A = Ovis (nbd://127.0.0.1:$ovis_port/bench), B = qemu-nbd (raw file), RT=${RT:-10}s, rounds=$rounds"
SIZE="$size" bash "$compare" "nbd://127.0.0.1:$ovis_port/bench" "nbd://127.0.0.1:$qemu_port" "$rounds"
echo "ovis peak RSS: $(( $(cat "$dir/peak-rss-kib" 2>/dev/null || echo 0) / 1024 )) MiB"
