#!/usr/bin/env bash
# Cross-checks thaw-loadtest against other load generators on the same target,
# in interleaved rounds, so that machine noise hits every tool alike.
#
#   loadtest/calibrate.sh SERVER FUNCTION RATE [ROUNDS] [SECONDS]
#   loadtest/calibrate.sh http://127.0.0.1:7070 hello 200 5 10
#
# Each round runs, pinned to core $GEN_CPU (default 0; pin the server to
# another core yourself, e.g. `taskset -c 1 thaw serve ...`):
#   1. thaw-loadtest open loop at RATE      vs  oha -q RATE --latency-correction
#                                               (open loop, timed from the
#                                               intended send, like ours)
#   2. thaw-loadtest open loop at RATE      vs  hey, 1 worker limited to RATE
#   3. thaw-loadtest closed loop, 1 client  vs  wrk, 1 thread, 1 connection
# and prints each tool's p50 (µs) and achieved rate, then per pair the median
# over rounds and the ratio thaw-loadtest / other. hey prints latencies with
# 100 µs resolution, so its p50 is coarse for fast functions.
# Needs: wrk and hey (Debian packages of those names), oha (`cargo install
# oha`; skipped with a note if missing), python3, taskset.
set -euo pipefail

server=${1:?server URL}
function=${2:?function name}
rate=${3:?requests per second}
rounds=${4:-5}
secs=${5:-10}
cpu=${GEN_CPU:-0}
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${THAW_LOADTEST:-$here/target/release/thaw-loadtest}
url="$server/functions/$function/invoke"
body='{}'
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

have_oha=1
command -v oha >/dev/null || { have_oha=0; echo "calibrate.sh: oha is missing (cargo install oha): its rows are skipped" >&2; }
for tool in wrk hey python3 taskset; do
    command -v "$tool" >/dev/null || { echo "calibrate.sh: $tool is missing" >&2; exit 1; }
done
[ -x "$bin" ] || { echo "calibrate.sh: build it first: cargo build --release -p loadtest" >&2; exit 1; }

cat >"$out/post.lua" <<LUA
wrk.method = "POST"
wrk.body = '$body'
wrk.headers["Content-Type"] = "application/json"
LUA

json_p50_rate() { # thaw-loadtest --json on stdin -> "p50 rate"
    python3 -c 'import json,sys; s=json.load(sys.stdin)["summary"]; print(s["latency_us"]["p50"], round(s["throughput_rps"],1))'
}

for r in $(seq 1 "$rounds"); do
    read -r p50 rps < <(taskset -c "$cpu" "$bin" run --server "$server" --function "$function" \
        --body "$body" --rate "$rate" --duration "${secs}s" --warmup 1s -q --json | json_p50_rate)
    echo "open thaw-loadtest $r $p50 $rps" | tee -a "$out/results"

    if [ "$have_oha" = 1 ]; then
        read -r p50 rps < <(taskset -c "$cpu" oha -z "${secs}s" -q "$rate" --latency-correction -c 1 \
            --no-tui --output-format json -m POST -T application/json -d "$body" "$url" |
            python3 -c 'import json,sys; s=json.load(sys.stdin); print(int(s["latencyPercentiles"]["p50"]*1e6), round(s["summary"]["requestsPerSec"],1))')
        echo "open oha $r $p50 $rps" | tee -a "$out/results"
    fi

    hey_out=$(taskset -c "$cpu" hey -c 1 -q "$rate" -z "${secs}s" -m POST -T application/json -d "$body" "$url")
    p50=$(awk '/ 50% in /{printf "%d", $3 * 1e6}' <<<"$hey_out")
    rps=$(awk '/Requests\/sec:/{print $2}' <<<"$hey_out")
    echo "open hey $r $p50 $rps" | tee -a "$out/results"

    read -r p50 rps < <(taskset -c "$cpu" "$bin" run --server "$server" --function "$function" \
        --body "$body" --concurrency 1 --duration "${secs}s" --warmup 1s -q --json | json_p50_rate)
    echo "closed thaw-loadtest $r $p50 $rps" | tee -a "$out/results"

    wrk_out=$(taskset -c "$cpu" wrk -t1 -c1 -d"${secs}s" -s "$out/post.lua" --latency "$url")
    p50=$(awk '$1 == "50%" {v=$2; if (v ~ /us$/) {sub(/us/,"",v); print int(v)} else if (v ~ /ms$/) {sub(/ms/,"",v); print int(v*1000)} else {sub(/s/,"",v); print int(v*1e6)}}' <<<"$wrk_out")
    rps=$(awk '/Requests\/sec:/{print $2}' <<<"$wrk_out")
    echo "closed wrk $r $p50 $rps" | tee -a "$out/results"
done

python3 - "$out/results" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
def med(loop, tool, col):
    return statistics.median(float(r[col]) for r in rows if r[0] == loop and r[1] == tool)
print()
print(f"{'loop':<8}{'tool':<15}{'p50 µs':>10}{'req/s':>12}")
pairs = [("open", "oha"), ("open", "hey"), ("closed", "wrk")]
pairs = [(l, o) for l, o in pairs if any(r[0] == l and r[1] == o for r in rows)]
for loop, other in pairs:
    for tool in ("thaw-loadtest", other):
        print(f"{loop:<8}{tool:<15}{med(loop, tool, 3):>10.0f}{med(loop, tool, 4):>12.1f}")
    p = med(loop, "thaw-loadtest", 3) / med(loop, other, 3)
    q = med(loop, "thaw-loadtest", 4) / med(loop, other, 4)
    print(f"{loop:<8}{'ratio':<15}{p:>10.3f}{q:>12.3f}")
PY
