#!/usr/bin/env bash
# Old vs new `scaler overhead`, interleaved in one run: the scheduler programs' cost on the
# context-switch benchmark (perf bench sched pipe) for two scaler binaries.
#
#   scaler-tools/overhead-ab.sh OLD_BIN NEW_BIN [PAIRS] [ROUNDS] [OUTDIR]
#
# Runs `OLD_BIN overhead --rounds ROUNDS --json` and `NEW_BIN overhead ...` alternately, PAIRS
# times each (the order alternates too: old first in odd pairs, new first in even ones), as
# root. Each run measures, interleaved within each round, the benchmark without programs, with
# only an empty program on sched_switch (the floor), with the memory programs, and with the
# agent's programs and one watched cpu cgroup, the benchmark placed in that cgroup (watched) or
# in a sibling (unwatched). Then it prints, per binary and placement, from the CPU time per
# round trip (steadier than wall time on a shared machine):
#
#   floor   the empty program vs none: median of each run's median per-round ratio [min, max]
#   agent   the agent's programs vs none, likewise
#   above   the agent's programs vs the floor, per round (agent_i / floor_i - 1), median over
#           all rounds of all runs [min, max]: the goal is at most +3% for `watched`
#   switch  sched_switch ns per run from the kernel's BPF statistics (taken in untimed runs;
#           the floor program's own figure is what the statistics cost)
#
# and the load average before each run. Defaults: 3 pairs of 3 rounds. Needs jq and perf
# (without perf the tool's built-in ping-pong is used). Example, in the repository root:
#
#   cargo build --release -p scaler-cli
#   sudo scaler-tools/overhead-ab.sh /path/to/old/scaler target/release/scaler 3 3
set -euo pipefail

if [ $# -lt 2 ]; then
    sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
old=$1
new=$2
pairs=${3:-3}
rounds=${4:-3}
out=${5:-$(mktemp -d /tmp/overhead-ab.XXXXXX)}
command -v jq >/dev/null || { echo "overhead-ab: needs jq (apt-get install jq)" >&2; exit 2; }
for b in "$old" "$new"; do
    [ -x "$b" ] || { echo "overhead-ab: $b is not an executable scaler binary" >&2; exit 2; }
done
mkdir -p "$out"
echo "overhead-ab: $pairs pairs x $rounds rounds; old=$old new=$new; files in $out" >&2

for i in $(seq 1 "$pairs"); do
    if [ $((i % 2)) -eq 1 ]; then order="old new"; else order="new old"; fi
    for which in $order; do
        if [ "$which" = old ]; then bin=$old; else bin=$new; fi
        load=$(cut -d' ' -f1-3 /proc/loadavg)
        echo "$which $i load $load" >>"$out/load.txt"
        echo "overhead-ab: $which run $i (load average $load)" >&2
        "$bin" overhead --rounds "$rounds" --json "$out/$which-$i.json" >"$out/$which-$i.txt" 2>&1 || {
            echo "overhead-ab: $bin overhead failed, see $out/$which-$i.txt" >&2
            exit 1
        }
    done
done

summary() {
    local which=$1
    # shellcheck disable=SC2016
    jq -rs --arg which "$which" '
      def median: sort | if length == 0 then null
        elif length % 2 == 1 then .[length / 2 | floor]
        else (.[length / 2 - 1] + .[length / 2]) / 2 end;
      def r2: if . == null then "n/a" else (. * 100 | round / 100 | tostring) end;
      def pct: if . == null then "n/a" else ((if . >= 0 then "+" else "" end) + (. | r2) + "%") end;
      [.[].placements[]] | group_by(.placement)[] as $p
      | ($p | map(.cpu.floor.slowdown_percent)) as $floor
      | ($p | map(.cpu.agent.slowdown_percent)) as $agent
      | ($p | map([.cpu.agent.runs_us, .cpu.floor.runs_us] | transpose[]
                  | (.[0] / .[1] - 1) * 100)) as $above
      | ($p | map(.programs.sched_switch.ns_per_event // empty)) as $sw
      | ($p | map(.programs.sched_switch_floor.ns_per_event // empty)) as $swf
      | "\($which)\t\($p[0].placement)\tfloor \($floor | median | pct) [\($floor | min | pct), \($floor | max | pct)]\tagent \($agent | median | pct) [\($agent | min | pct), \($agent | max | pct)]\tabove floor \($above | median | pct) [\($above | min | pct), \($above | max | pct)] (n=\($above | length))\tsched_switch \($sw | median | r2) ns (floor program \($swf | median | r2) ns)"
    ' "$out"/"$which"-*.json
}

echo
echo "CPU time per round trip, $pairs runs x $rounds rounds per binary ($(uname -r), $(nproc) CPUs):"
{ summary old; summary new; } | column -t -s $'\t'
echo
echo "load average before each run:"
cat "$out/load.txt"
echo
echo "goal: watched 'above floor' at most +3%"
