#!/usr/bin/env bash
# layers.sh — the snapshot figures of issue 3, on one Ovis node:
#  1. time of `vdi snapshot` and `vdi clone` for a thin 1 GiB and a thin 1 TiB volume, each with
#     data written at its start and its end (the time must not follow the size);
#  2. fio randwrite 4k QD32 before a snapshot and right after it (every write then lands in an
#     object inherited from the snapshot), and the ratio;
#  3. fio randwrite 4k QD32 with 1 and with 4 connections (numjobs, multi-conn), and the ratio.
# Environment: RT (seconds per fio job, default 10), BENCH_DIR (default artifacts/bench-layers).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir=${BENCH_DIR:-$root/artifacts/bench-layers}
rt=${RT:-10}
nbd=10861; admin=7161
"$root/ovis" --version >/dev/null
rm -rf "$dir"; mkdir -p "$dir"
dotnet "$root/artifacts/bin/ovis.dll" serve --data "$dir/data" --nbd "127.0.0.1:$nbd" --admin "127.0.0.1:$admin" >"$dir/out" 2>"$dir/err" &
pid=$!
trap 'kill $pid 2>/dev/null; wait 2>/dev/null' EXIT
for _ in $(seq 100); do grep -q '^admin listening' "$dir/out" 2>/dev/null && break; sleep 0.1; done
ovis() { "$root/ovis" "$@" --admin "http://127.0.0.1:$admin"; }
ms() { local s e; s=$(date +%s%N); "$@" >/dev/null; e=$(date +%s%N); echo $(( (e - s) / 1000000 )); }
iops() { fio --name=j --ioengine=nbd --uri="$1" --size=1G --time_based --runtime="$rt" --ramp_time=2 \
           --rw=randwrite --bs=4k --iodepth=32 ${2:-} --group_reporting --output-format=json 2>/dev/null \
         | sed '/^fio: /d' | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["jobs"][0]["write"]["iops"]))'; }

echo "machine: $(nproc) cores; date: $(date -u +%F); RT=${rt}s"
for size in 1G 1T; do
  ovis vdi create "thin$size" "$size" >/dev/null
  qemu-io -f raw -c 'write -P 1 0 1M' -c "write -P 2 $(( $(numfmt --from=iec $size) - 1048576 )) 1M" "nbd://127.0.0.1:$nbd/thin$size" >/dev/null
  snap=$(ms ovis vdi snapshot "thin$size" s1)
  clone=$(ms ovis vdi clone "thin$size@s1" "clone$size")
  echo "snapshot of a thin $size volume: ${snap} ms; clone: ${clone} ms (CLI round trip included)"
done

ovis vdi create w 1G >/dev/null
fio --name=fill --ioengine=nbd --uri="nbd://127.0.0.1:$nbd/w" --size=1G --rw=write --bs=1M --iodepth=8 >/dev/null 2>&1
before=$(iops "nbd://127.0.0.1:$nbd/w")
ovis vdi snapshot w before-bench >/dev/null
after=$(iops "nbd://127.0.0.1:$nbd/w")
echo "randwrite 4k QD32: before snapshot $before IOPS, right after $after IOPS, ratio $(python3 -c "print(round($after/$before, 2))")"

ovis vdi create m 1G >/dev/null
fio --name=fill --ioengine=nbd --uri="nbd://127.0.0.1:$nbd/m" --size=1G --rw=write --bs=1M --iodepth=8 >/dev/null 2>&1
one=$(iops "nbd://127.0.0.1:$nbd/m")
four=$(iops "nbd://127.0.0.1:$nbd/m" "--numjobs=4 --size=256M --offset_increment=256M")
echo "randwrite 4k QD32: 1 connection $one IOPS, 4 connections $four IOPS, ratio $(python3 -c "print(round($four/$one, 2))")"
