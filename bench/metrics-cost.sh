#!/usr/bin/env bash
# CPU per I/O of the daemon: 100,000 4k random writes at QD16, BASE_DLL (A) vs NEW_DLL (B), alternated three times.
# Usage: BASE_DLL=/tmp/base/ovis.dll NEW_DLL=artifacts/bin/ovis.dll bench/metrics-cost.sh
set -euo pipefail
ticks() { awk '{print $14+$15}' /proc/$1/stat; }
run() { # $1 label $2 dll $3 port-base
  local d; d=$(mktemp -d /tmp/ops-perf.XXXX)
  dotnet "$2" serve --data "$d/data" --nbd 127.0.0.1:$3 --admin 127.0.0.1:$(($3+1)) > "$d/log" 2>&1 &
  local pid=$!
  for _ in $(seq 100); do grep -q "admin listening" "$d/log" && break; sleep 0.1; done
  dotnet "$2" vdi create b 1G --admin 127.0.0.1:$(($3+1)) >/dev/null
  fio --ioengine=nbd --uri=nbd://127.0.0.1:$3/b --name=warm --rw=randwrite --bs=4k --size=1G --iodepth=16 --number_ios=20000 >/dev/null 2>&1
  local t0; t0=$(ticks $pid)
  local iops
  iops=$(fio --ioengine=nbd --uri=nbd://127.0.0.1:$3/b --name=w --rw=randwrite --bs=4k --size=1G --iodepth=16 --number_ios=100000 \
      --output-format=json 2>/dev/null | sed -n '/^{/,$p' | python3 -c "import json,sys; print(round(json.load(sys.stdin)['jobs'][0]['write']['iops']))")
  local t1; t1=$(ticks $pid)
  echo "$1 iops=$iops cpu_us_per_io=$(python3 -c "print(round(($t1-$t0)*10000/100000, 1))")"
  kill $pid; wait $pid 2>/dev/null || true
  rm -rf "$d"
}
for i in 1 2 3; do
  run base "${BASE_DLL:?set BASE_DLL to the ovis.dll of the build to compare with}" 11010
  run new "${NEW_DLL:?set NEW_DLL to the ovis.dll of the build under test}" 11020
done
