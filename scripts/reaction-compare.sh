#!/usr/bin/env bash
# Reaction latency (kernel event timestamp -> new limit in place, i.e. the limit write
# returned), OLD binary against NEW, interleaved, idle and with both cores busy.
#
#   sudo scripts/reaction-compare.sh OLD NEW [OUTDIR]
#
# Environment: ROUNDS (README OOM-race runs per binary and load, default 20), BENCH_REPEAT
# (rounds of `scaler bench --competitors ebpf --repeat 1` per binary and load, default 3; 0
# skips the bench), WORKLOADS (default steps,spike,ramp,threads,procs,pagecache),
# LOADS (default "idle loaded"), STRESS (the load, default "stress-ng --cpu N" with N the CPU
# count).
#
# Each round runs OLD then NEW, or NEW then OLD (alternating), so that drift in the machine's
# load falls on both alike. The load (stress-ng) is started and stopped by its pid. Figures:
# p50/p99/max (nearest rank) of every reaction of every run, per binary, load and source (the
# README's OOM race: `scaler exec --json-summary`'s actions; the bench: runs[].reaction_latency_us
# of the ebpf competitor), OOM kills, the load average before and after; the goals of issue 17
# (p99 <= 100 us idle, <= 300 us loaded) marked met or not. Raw samples: OUTDIR/samples.json.
# Needs root (cgroups, eBPF), python3 and stress-ng.
set -euo pipefail
OLD=${1:?usage: reaction-compare.sh OLD NEW [OUTDIR]}
NEW=${2:?usage: reaction-compare.sh OLD NEW [OUTDIR]}
OUT=${3:-$(mktemp -d /tmp/reaction-compare.XXXXXX)}
ROUNDS=${ROUNDS:-20}
BENCH_REPEAT=${BENCH_REPEAT:-3}
WORKLOADS=${WORKLOADS:-steps,spike,ramp,threads,procs,pagecache}
LOADS=${LOADS:-idle loaded}
NCPU=$(nproc)
STRESS=${STRESS:-stress-ng --cpu $NCPU --quiet}
mkdir -p "$OUT"
for b in "$OLD" "$NEW"; do [ -x "$b" ] || { echo "not an executable: $b" >&2; exit 2; }; done
command -v python3 >/dev/null || { echo "python3 is needed" >&2; exit 2; }
if [[ " $LOADS " == *" loaded "* ]] && ! command -v "${STRESS%% *}" >/dev/null; then
    echo "${STRESS%% *} is needed for the loaded arm (apt-get install stress-ng)" >&2
    exit 2
fi

STRESS_PID=
stop_stress() {
    if [ -n "$STRESS_PID" ]; then
        kill "$STRESS_PID" 2>/dev/null || true
        wait "$STRESS_PID" 2>/dev/null || true
        STRESS_PID=
    fi
}
trap stop_stress EXIT

echo "loadavg before: $(cut -d' ' -f1-3 /proc/loadavg)" | tee "$OUT/loadavg"
echo "old: $OLD" | tee "$OUT/binaries"
echo "new: $NEW" | tee -a "$OUT/binaries"

race() { # BIN FILE
    "$1" exec -q --memory 64M --memory-max 2G --json-summary "$2" -- \
        "$1" workload steps --total 256M --step 8M --interval 10ms >/dev/null 2>>"$OUT/stderr.log" || true
}

for load in $LOADS; do
    if [ "$load" = loaded ]; then
        $STRESS &
        STRESS_PID=$!
        sleep 2
    fi
    echo "== $load: OOM race, $ROUNDS rounds per binary"
    for i in $(seq 1 "$ROUNDS"); do
        if [ $((i % 2)) = 1 ]; then order="old new"; else order="new old"; fi
        for arm in $order; do
            bin=$OLD; [ "$arm" = new ] && bin=$NEW
            race "$bin" "$OUT/race-$load-$arm-$i.json"
        done
        printf '.'
    done
    echo
    if [ "$BENCH_REPEAT" -gt 0 ]; then
        echo "== $load: scaler bench ($WORKLOADS, ebpf), $BENCH_REPEAT rounds per binary"
        for i in $(seq 1 "$BENCH_REPEAT"); do
            if [ $((i % 2)) = 1 ]; then order="old new"; else order="new old"; fi
            for arm in $order; do
                bin=$OLD; [ "$arm" = new ] && bin=$NEW
                "$bin" bench --workloads "$WORKLOADS" --competitors ebpf --repeat 1 --no-progress \
                    --json "$OUT/bench-$load-$arm-$i.json" >/dev/null 2>>"$OUT/stderr.log" || true
            done
            printf '.'
        done
        echo
    fi
    stop_stress
done
echo "loadavg after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/loadavg"

python3 - "$OUT" <<'PY'
import glob, json, math, os, sys
out = sys.argv[1]
GOAL = {"idle": 100.0, "loaded": 300.0}
def rank(xs, q):
    xs = sorted(xs)
    return xs[max(0, math.ceil(q * len(xs)) - 1)] if xs else float("nan")
samples, rows = {}, []
for kind in ("race", "bench"):
    for load in ("idle", "loaded"):
        for arm in ("old", "new"):
            lat, ooms, runs = [], 0, 0
            for f in sorted(glob.glob(f"{out}/{kind}-{load}-{arm}-*.json")):
                try:
                    d = json.load(open(f))
                except (OSError, ValueError):
                    continue
                if kind == "race":
                    runs += 1
                    ooms += d.get("oom_kills", 0) or 0
                    lat += [a["latency_us"] for a in d.get("actions", [])
                            if a.get("resource") == "memory" and a.get("ok", True)]
                else:
                    for r in d.get("runs", []):
                        if r.get("competitor") != "ebpf" or r.get("error"):
                            continue
                        runs += 1
                        ooms += r.get("oom_kills", 0) or 0
                        lat += list(r.get("reaction_latency_us") or [])
            if not runs:
                continue
            samples[f"{kind}/{load}/{arm}"] = lat
            p99 = rank(lat, 0.99)
            rows.append((kind, load, arm, runs, len(lat), rank(lat, 0.5), p99, max(lat, default=float("nan")),
                         ooms, "met" if p99 <= GOAL[load] else "NOT met"))
json.dump(samples, open(f"{out}/samples.json", "w"))
hdr = ("source", "load", "binary", "runs", "reactions", "p50 us", "p99 us", "max us", "OOM kills", "goal (p99)")
lines = ["| " + " | ".join(hdr) + " |", "|" + "---|" * len(hdr)]
for r in rows:
    lines.append("| " + " | ".join(str(x) if not isinstance(x, float) else f"{x:.1f}" for x in r) + " |")
for kind in ("race", "bench"):
    for load in ("idle", "loaded"):
        o, n = samples.get(f"{kind}/{load}/old"), samples.get(f"{kind}/{load}/new")
        if o and n:
            lines.append(f"\n{kind} {load}: new/old p50 {rank(n,.5)/rank(o,.5):.2f}x, p99 {rank(n,.99)/rank(o,.99):.2f}x"
                         f" (goal p99 <= {GOAL[load]:.0f} us)")
text = "\n".join(lines)
open(f"{out}/table.md", "w").write(text + "\n")
print(text)
PY
echo "(raw samples and per-run JSON in $OUT)"
