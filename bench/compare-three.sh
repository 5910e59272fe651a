#!/usr/bin/env bash
# compare-three.sh [ROUNDS] — Ovis, qemu-nbd and nbdkit's file plugin on the same disk, in one
# run, alternated (O Q K O Q K …): the fio jobs of shared/BENCHMARKS.md, then nbdcopy of a 1 GiB
# random file into each and back out, and qemu-img convert into each. Prints medians, Ovis's
# ratios to both peers, each server's CPU time per I/O (user+system of the server process over
# the job, divided by the I/Os fio counted) and peak resident memory, the flush latency of the
# QD1 write+flush job and the disk's own O_DIRECT 4k write + fdatasync floor (fio on a file).
# Environment: RT (seconds per fio job, default 8), SIZE (1G), JOBS (fio job names), COPY=0 to
# skip the copies, FRESH=0 to copy into the filled volume instead of an emptied one, BENCH_DIR (default artifacts/bench3 on this repository's disk), OVIS_ARGS,
# OVIS_BASE (a directory holding another build's ovis.dll, e.g. a copy of artifacts/bin made before
# a change: it runs as a fourth server B, alternated with the others, for a before/after in one run).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
rounds=${1:-3}
dir=${BENCH_DIR:-$root/artifacts/bench3}
size=${SIZE:-1G}
rt=${RT:-8}
jobs=${JOBS:-"randwrite4k_qd32 randread4k_qd32 seqwrite1M_qd8 randwrite4k_qd1_fsync"}
ovis_port=${OVIS_PORT:-10831}; admin_port=${ADMIN_PORT:-7091}; qemu_port=${QEMU_PORT:-10832}; kit_port=${KIT_PORT:-10833}
for cmd in fio qemu-nbd nbdkit nbdcopy qemu-img python3; do
  command -v "$cmd" >/dev/null || { echo "$cmd is missing: apt-get install -y fio qemu-utils nbdkit libnbd-bin" >&2; exit 2; }
done

"$root/ovis" --version >/dev/null   # builds the Release binary once
rm -rf "$dir"; mkdir -p "$dir/out"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

# shellcheck disable=SC2086
dotnet "$root/artifacts/bin/ovis.dll" serve --data "$dir/ovis" --nbd "127.0.0.1:$ovis_port" --admin "127.0.0.1:$admin_port" ${OVIS_ARGS:-} \
  >"$dir/ovis.out" 2>"$dir/ovis.err" &
ovis_pid=$!; pids+=("$ovis_pid")
for _ in $(seq 100); do grep -q '^admin listening' "$dir/ovis.out" 2>/dev/null && break; sleep 0.1; done
grep -q '^admin listening' "$dir/ovis.out" || { cat "$dir/ovis.err" >&2; exit 1; }
"$root/ovis" vdi create bench "$size" --admin "http://127.0.0.1:$admin_port" >/dev/null
servers="O Q K"
if [ -n "${OVIS_BASE:-}" ]; then
  base_port=$((ovis_port + 10)); base_admin=$((admin_port + 10))
  # shellcheck disable=SC2086
  dotnet "$OVIS_BASE/ovis.dll" serve --data "$dir/ovis-base" --nbd "127.0.0.1:$base_port" --admin "127.0.0.1:$base_admin" ${OVIS_ARGS:-} \
    >"$dir/ovis-base.out" 2>"$dir/ovis-base.err" &
  base_pid=$!; pids+=("$base_pid")
  for _ in $(seq 100); do grep -q '^admin listening' "$dir/ovis-base.out" 2>/dev/null && break; sleep 0.1; done
  grep -q '^admin listening' "$dir/ovis-base.out" || { cat "$dir/ovis-base.err" >&2; exit 1; }
  "$root/ovis" vdi create bench "$size" --admin "http://127.0.0.1:$base_admin" >/dev/null
  servers="O B Q K"
fi

truncate -s "$size" "$dir/qemu.raw" "$dir/nbdkit.raw"
qemu-nbd -f raw --persistent -e 8 -b 127.0.0.1 -p "$qemu_port" "$dir/qemu.raw" &
qemu_pid=$!; pids+=("$qemu_pid")
nbdkit -f -i 127.0.0.1 -p "$kit_port" file "$dir/nbdkit.raw" &
kit_pid=$!; pids+=("$kit_pid")
sleep 0.5

declare -A uri=([O]="nbd://127.0.0.1:$ovis_port/bench" [Q]="nbd://127.0.0.1:$qemu_port" [K]="nbd://127.0.0.1:$kit_port")
declare -A pid=([O]=$ovis_pid [Q]=$qemu_pid [K]=$kit_pid)
if [ -n "${OVIS_BASE:-}" ]; then uri[B]="nbd://127.0.0.1:$base_port/bench"; pid[B]=$base_pid; fi

# Peak resident set of each server while everything runs.
for s in $servers; do
  ( p=${pid[$s]}; peak=0; while kill -0 "$p" 2>/dev/null; do
      rss=$(awk '/^VmRSS/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)
      [ "${rss:-0}" -gt "$peak" ] && peak=$rss && echo "$peak" > "$dir/peak-rss-$s"
      sleep 0.5
    done ) &
  pids+=("$!")
done

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
args_for() {
  case $1 in
    randwrite4k_qd32)      echo "--rw=randwrite --bs=4k --iodepth=32" ;;
    randread4k_qd32)       echo "--rw=randread --bs=4k --iodepth=32" ;;
    seqwrite1M_qd8)        echo "--rw=write --bs=1M --iodepth=8" ;;
    randwrite4k_qd1_fsync) echo "--rw=randwrite --bs=4k --iodepth=1 --fsync=1" ;;
    backup_guest)          echo "--rw=randwrite --bs=32k --iodepth=8" ;;
    *) echo "unknown job $1" >&2; exit 2 ;;
  esac
}
fio_run() { # server job round
  local before after
  before=$(cpu_ticks "${pid[$1]}")
  # shellcheck disable=SC2046
  fio --name="$2" --ioengine=nbd --uri="${uri[$1]}" --size="$size" --time_based --runtime="$rt" --ramp_time=2 \
      --output-format=json $(args_for "$2") 2>/dev/null | sed '/^fio: /d' > "$dir/out/$1.$2.$3.json" || true
  after=$(cpu_ticks "${pid[$1]}")
  echo $((after - before)) > "$dir/out/$1.$2.$3.ticks"
}
timed() { # file command… — wall seconds and the server's CPU ticks into file
  local s=$1 f=$2; shift 2
  local before after t0 t1
  before=$(cpu_ticks "${pid[$s]}"); t0=$(date +%s.%N)
  "$@" >/dev/null 2>&1 || echo "failed: $*" >&2
  t1=$(date +%s.%N); after=$(cpu_ticks "${pid[$s]}")
  echo "$(echo "$t1 - $t0" | bc) $((after - before))" > "$f"
}

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(df -hT "$dir" | awk 'NR==2 {print $2 " on " $1}'); kernel $(uname -r); date: $(date -u '+%F %H:%M') UTC; ovis $(git -C "$root" rev-parse --short HEAD)"
echo "O = Ovis, Q = qemu-nbd -f raw -e 8, K = nbdkit file${OVIS_BASE:+, B = Ovis built in $OVIS_BASE}; RT=${rt}s, rounds=$rounds, size=$size"

# The disk's floor for a 4k write + flush (no NBD): O_DIRECT write then fdatasync.
fio --name=floor --filename="$dir/floor" --size=64M --rw=randwrite --bs=4k --direct=1 --fsync=1 \
    --time_based --runtime="$rt" --output-format=json 2>/dev/null > "$dir/out/floor.json" || true
rm -f "$dir/floor"

for s in $servers; do
  fio --name=fill --ioengine=nbd --uri="${uri[$s]}" --size="$size" --rw=write --bs=1M --iodepth=8 >/dev/null 2>&1 || true
done
for job in $jobs; do
  for r in $(seq 1 "$rounds"); do
    for s in $servers; do fio_run "$s" "$job" "$r"; done
    # The disk's flush time moves with the machine's other load: measure its floor in every round.
    if [ "$job" = randwrite4k_qd1_fsync ]; then
      fio --name=floor --filename="$dir/floor" --size=64M --rw=randwrite --bs=4k --direct=1 --fsync=1 \
          --time_based --runtime="$rt" --output-format=json 2>/dev/null > "$dir/out/floor.$r.json" || true
    fi
  done
done

if [ "${COPY:-1}" != 0 ]; then
  head -c "$size" /dev/urandom > "$dir/random.img" 2>/dev/null || dd if=/dev/urandom of="$dir/random.img" bs=1M count=1024 status=none
  bytes=$(stat -c %s "$dir/random.img")
  echo "$bytes" > "$dir/out/copy-bytes"
  # A copy in goes to an empty disk, as a new user's first import does: a volume trimmed whole
  # (its blocks holes again), a raw file with its blocks punched out. FRESH=0 copies over the data.
  empty() {
    [ "${FRESH:-1}" = 0 ] && return 0
    case $1 in
      O|B) qemu-io -f raw -c "discard 0 $bytes" "${uri[$1]}" >/dev/null ;;
      Q) fallocate --punch-hole -o 0 -l "$bytes" "$dir/qemu.raw" ;;
      K) fallocate --punch-hole -o 0 -l "$bytes" "$dir/nbdkit.raw" ;;
    esac
    sleep 1
  }
  for r in $(seq 1 "$rounds"); do
    for s in $servers; do empty "$s"; timed "$s" "$dir/out/$s.nbdcopy_in.$r" nbdcopy "$dir/random.img" "${uri[$s]}"; done
    for s in $servers; do rm -f "$dir/copy.out"; timed "$s" "$dir/out/$s.nbdcopy_out.$r" nbdcopy "${uri[$s]}" "$dir/copy.out"; done
    for s in $servers; do empty "$s"; timed "$s" "$dir/out/$s.convert_in.$r" qemu-img convert -n -f raw -O raw "$dir/random.img" "${uri[$s]}"; done
  done
  # The copy out of each server holds what went in.
  for s in $servers; do
    nbdcopy "${uri[$s]}" "$dir/copy.out"
    cmp -s "$dir/random.img" "$dir/copy.out" || echo "WARNING: the copy out of $s differs from what went in" >&2
  done
  rm -f "$dir/copy.out" "$dir/random.img"
fi

python3 - "$dir" "$rounds" "$(getconf CLK_TCK)" "$servers" $jobs <<'PY'
import json, sys, statistics, os
d, rounds, hz, servers, jobs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4].split(), sys.argv[5:]
BASE = "B" in servers
S = ["O", "B", "Q", "K"] if BASE else ["O", "Q", "K"]
NAMES = {"O": "Ovis", "B": "Ovis before", "Q": "qemu-nbd", "K": "nbdkit file"}
HEAD = " | ".join(NAMES[s] for s in S)
def load(path):
    try:
        return json.load(open(path))["jobs"][0]
    except Exception:
        return None
def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None
def fig(j):
    side = j["write"] if j["write"]["io_bytes"] > 0 else j["read"]
    return side["bw_bytes"] / 1e6 if j["job options"].get("bs") == "1M" else side["iops"]
def ios(j):
    return j["write"]["total_ios"] + j["read"]["total_ios"]
def cpu_us(s, job, r):
    j = load(f"{d}/out/{s}.{job}.{r}.json")
    try:
        t = int(open(f"{d}/out/{s}.{job}.{r}.ticks").read())
    except Exception:
        return None
    # Ticks cover the ramp too; fio's I/O count does not: scale the count by (ramp+run)/run.
    if j is None or ios(j) == 0:
        return None
    rt = j["job options"].get("runtime", "8")
    run = float(rt.rstrip("s")); ramp = 2.0
    return t / hz * 1e6 / (ios(j) * (run + ramp) / run)
def row(name, vals, fmt="{:,.0f}"):
    v = dict(zip(S, vals))
    o, q, k = v["O"], v["Q"], v["K"]
    cells = [fmt.format(x) if x is not None else "failed" for x in vals]
    rq = f"{o / q:.2f}" if o and q else "-"
    rk = f"{o / k:.2f}" if o and k else "-"
    rb = [f"{o / v['B']:.2f}" if o and v["B"] else "-"] if BASE else []
    print(f"| {name} | " + " | ".join(cells + [rq, rk] + rb) + " |")
print()
print(f"| job (median of {rounds}) | {HEAD} | Ovis ÷ qemu-nbd | Ovis ÷ nbdkit |" + (" Ovis ÷ before |" if BASE else ""))
print("|---|" + "---|" * (len(S) + 2 + BASE))
for job in jobs:
    unit = "MB/s" if job.startswith("seq") else "IOPS"
    row(f"{job} ({unit})", [med(fig(j) if (j := load(f"{d}/out/{s}.{job}.{r}.json")) else None for r in range(1, rounds + 1)) for s in S])
copy_bytes = None
try:
    copy_bytes = int(open(f"{d}/out/copy-bytes").read())
except Exception:
    pass
if copy_bytes:
    for op in ["nbdcopy_in", "nbdcopy_out", "convert_in"]:
        vals = []
        for s in S:
            xs = []
            for r in range(1, rounds + 1):
                try:
                    secs = float(open(f"{d}/out/{s}.{op}.{r}").read().split()[0])
                    xs.append(copy_bytes / secs / 1e6)
                except Exception:
                    pass
            vals.append(med(xs))
        row(f"{op} 1 GiB (MB/s)", vals)
print()
print(f"| CPU per I/O, µs (server user+system) | {HEAD} |")
print("|---|" + "---|" * len(S))
for job in jobs:
    vals = [med(cpu_us(s, job, r) for r in range(1, rounds + 1)) for s in S]
    print(f"| {job} | " + " | ".join(f"{v:.1f}" if v is not None else "-" for v in vals) + " |")
if copy_bytes:
    for op in ["nbdcopy_in", "nbdcopy_out", "convert_in"]:
        vals = []
        for s in S:
            xs = []
            for r in range(1, rounds + 1):
                try:
                    ticks = int(open(f"{d}/out/{s}.{op}.{r}").read().split()[1])
                    xs.append(ticks / hz * 1e3)  # ms of server CPU per GiB copied
                except Exception:
                    pass
            vals.append(med(xs))
        print(f"| {op} (ms of CPU for the 1 GiB) | " + " | ".join(f"{v:.0f}" if v is not None else "-" for v in vals) + " |")
print()
if "randwrite4k_qd1_fsync" in jobs:
    print(f"| flush latency, QD1 write+flush job | {HEAD} | disk floor (O_DIRECT 4k + fdatasync) |")
    print("|---|" + "---|" * (len(S) + 1))
    def lat(j):
        sync = j.get("sync", {})
        ln = sync.get("lat_ns") or {}
        p99 = (ln.get("percentile") or {}).get("99.000000")
        return (ln.get("mean"), p99)
    means, p99s = [], []
    for s in S:
        m = [lat(j) for r in range(1, rounds + 1) if (j := load(f"{d}/out/{s}.randwrite4k_qd1_fsync.{r}.json"))]
        means.append(med(x[0] for x in m)); p99s.append(med(x[1] for x in m))
    fls = [lat(j) for r in range(1, rounds + 1) if (j := load(f"{d}/out/floor.{r}.json"))] or ([lat(j)] if (j := load(f"{d}/out/floor.json")) else [])
    fm, fp = (med(x[0] for x in fls), med(x[1] for x in fls)) if fls else (None, None)
    cell = lambda m, p: f"{m / 1000:.0f} / {p / 1000:.0f} µs" if m and p else "-"
    print("| mean / p99 | " + " | ".join(cell(m, p) for m, p in zip(means, p99s)) + f" | {cell(fm, fp)} |")
print()
rss = []
for s in S:
    try:
        rss.append(f"{int(open(f'{d}/peak-rss-{s}').read()) // 1024} MiB")
    except Exception:
        rss.append("-")
print("peak RSS: " + ", ".join(f"{NAMES[s]} {r}" for s, r in zip(S, rss)))
PY
