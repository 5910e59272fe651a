#!/usr/bin/env bash
# backup-throughput.sh — the backup's own speed to an unthrottled target against nbdcopy of the
# same data (issue 11). A 1 GiB volume full of random data; then, alternated ROUNDS times:
#   `ovis vdi backup bench FILE.raw`            vs  `nbdcopy --flush nbd://…/bench@s FILE.raw`
#   `ovis vdi backup bench nbd://nbdkit/`       vs  `nbdcopy --flush nbd://…/bench@s nbd://nbdkit/`
# where bench@s is a snapshot of the volume (what the backup reads too). The backup's time is the
# whole command: its snapshot, the copy, the target's fsync and the snapshot's merge at the end.
# Environment: SIZE (1G), ROUNDS (2), BENCH_DIR (default artifacts/bench-backup-throughput).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir=${BENCH_DIR:-$root/artifacts/bench-backup-throughput}
size=${SIZE:-1G}; rounds=${ROUNDS:-2}
ovis_port=${OVIS_PORT:-10841}; admin_port=${ADMIN_PORT:-7084}; kit_port=${KIT_PORT:-10842}
for cmd in fio nbdkit nbdcopy python3; do
  command -v "$cmd" >/dev/null || { echo "$cmd is missing: apt-get install -y fio nbdkit libnbd-bin" >&2; exit 2; }
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
uri="nbd://127.0.0.1:$ovis_port"
fio --ioengine=nbd --uri="$uri/bench" --name=fill --rw=write --bs=1M --iodepth=8 --size="$size" \
    --refill_buffers --randrepeat=0 >/dev/null
ovis vdi snapshot bench s >/dev/null
bytes=$(python3 -c "import sys; s='$size'; m={'K':1<<10,'M':1<<20,'G':1<<30}; print(int(s[:-1])*m[s[-1]] if s[-1] in m else int(s))")

nbdkit -f --exit-with-parent -i 127.0.0.1 -p "$kit_port" file "$dir/kit.raw" &
pids+=("$!")
reset_kit() { truncate -s 0 "$dir/kit.raw"; truncate -s "$size" "$dir/kit.raw"; }
reset_kit
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$kit_port) 2>/dev/null && break; sleep 0.1; done

timed() { # runs "$@", prints MB/s of $bytes
  local t0 t1; t0=$(date +%s.%N); "$@" >/dev/null; t1=$(date +%s.%N)
  python3 -c "print('%.0f' % ($bytes / 1e6 / ($t1 - $t0)))"
}
drop_backups() { rm -f "$dir"/dest*.raw "$dir"/dest*.raw.json; sync; }

echo "machine: $(nproc) cores, $(df -hT "$dir" | awk 'NR==2 {print $2 " on " $1}'); date: $(date -u +%F); commit $(git -C "$root" rev-parse --short HEAD); ${size} of random data"
printf '%-6s %-34s %8s\n' round job MB/s
for r in $(seq "$rounds"); do
  drop_backups
  printf '%-6s %-34s %8s\n' "$r" "ovis vdi backup → raw file" "$(timed ovis vdi backup bench "$dir/dest-ovis.raw")"
  drop_backups
  printf '%-6s %-34s %8s\n' "$r" "nbdcopy snapshot → raw file" "$(timed nbdcopy --flush "$uri/bench@s" "$dir/dest-copy.raw")"
  reset_kit
  printf '%-6s %-34s %8s\n' "$r" "ovis vdi backup → nbdkit file" "$(timed ovis vdi backup bench "nbd://127.0.0.1:$kit_port/")"
  reset_kit
  printf '%-6s %-34s %8s\n' "$r" "nbdcopy snapshot → nbdkit file" "$(timed nbdcopy --flush "$uri/bench@s" "nbd://127.0.0.1:$kit_port/")"
done
