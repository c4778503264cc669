#!/usr/bin/env bash
# Builds every fuzz target and runs each for a bounded time; exits non-zero
# if any target crashes, hangs, allocates without bound or fails to build.
#
#   fuzz/run.sh [SECONDS_PER_TARGET]     (default 60)
#
# Environment:
#   THAW_FUZZ_TARGETS    space-separated subset of targets (default: all of
#                        fuzz/fuzz_targets/*.rs)
#   THAW_FUZZ_SANITIZER  cargo-fuzz sanitizer (default none; "address" works
#                        too, at about twice the build and run time)
#
# cargo-fuzz is written for nightly: with a sanitizer it passes
# `-Zsanitizer=...`, which the stable compiler (the only one here) accepts
# only with RUSTC_BOOTSTRAP=1; the build runs with it set (docs/fuzzing.md
# says why that is acceptable here). Inputs found during a run go to fuzz/target/corpus-new/<target>, not
# into the committed corpus; crashes go to fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_FUZZ_VERSION=0.13.1
SECONDS_PER_TARGET=${1:-60}
SANITIZER=${THAW_FUZZ_SANITIZER:-none}
# Per input: a hang is an input that takes longer than this (seconds).
TIMEOUT_S=10
# Whole process: more resident memory than this is a failure (MiB). Single
# allocations are capped lower, in fuzz/src/lib.rs (MAX_ALLOCATION).
RSS_LIMIT_MB=1024

case "$SECONDS_PER_TARGET" in
'' | *[!0-9]*)
    echo "usage: fuzz/run.sh [SECONDS_PER_TARGET]" >&2
    exit 2
    ;;
esac

if ! cargo fuzz --version 2>/dev/null | grep -q "^cargo-fuzz $CARGO_FUZZ_VERSION\b"; then
    echo "installing cargo-fuzz $CARGO_FUZZ_VERSION into ~/.cargo/bin"
    cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
fi

export RUSTC_BOOTSTRAP=1

if [ -n "${THAW_FUZZ_TARGETS:-}" ]; then
    read -r -a targets <<<"$THAW_FUZZ_TARGETS"
else
    targets=()
    for f in fuzz/fuzz_targets/*.rs; do
        targets+=("$(basename "$f" .rs)")
    done
fi

echo "building ${#targets[@]} fuzz targets (sanitizer: $SANITIZER)"
build_start=$(date +%s)
cargo fuzz build --fuzz-dir fuzz -s "$SANITIZER"
echo "built in $(($(date +%s) - build_start))s"

# Targets that write files (deploy_archive unpacks, store_pack opens a real
# store) do it under TMPDIR: on tmpfs, fsync costs nothing and the disk is
# spared.
if [ -d /dev/shm ] && [ -w /dev/shm ]; then
    scratch=$(mktemp -d /dev/shm/thaw-fuzz.XXXXXX)
    trap 'rm -rf "$scratch"' EXIT
    export TMPDIR=$scratch
fi

failed=()
mkdir -p fuzz/target/logs
for t in "${targets[@]}"; do
    seeds=fuzz/corpus/$t
    fresh=fuzz/target/corpus-new/$t
    log=fuzz/target/logs/$t.log
    mkdir -p "$seeds" "$fresh" "fuzz/artifacts/$t"
    echo "== $t: ${SECONDS_PER_TARGET}s from $(find "$seeds" -type f | wc -l) committed inputs (log: $log)"
    # New inputs go to the first directory (scratch); the committed seeds,
    # and every crash-* input kept there, are replayed first.
    if cargo fuzz run --fuzz-dir fuzz -s "$SANITIZER" "$t" "$fresh" "$seeds" -- \
        -max_total_time="$SECONDS_PER_TARGET" \
        -timeout="$TIMEOUT_S" \
        -rss_limit_mb="$RSS_LIMIT_MB" \
        -malloc_limit_mb="$RSS_LIMIT_MB" \
        -artifact_prefix="fuzz/artifacts/$t/" \
        -print_final_stats=1 >"$log" 2>&1; then
        grep -E '^(Done|stat::number_of_executed_units|stat::peak_rss_mb)' "$log" | sed 's/^/   /'
        echo "== $t: ok"
    else
        tail -n 40 "$log" | sed 's/^/   /'
        echo "== $t: FAILED (input saved in fuzz/artifacts/$t/)"
        failed+=("$t")
    fi
done

echo
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzzing failed: ${failed[*]}"
    exit 1
fi
echo "fuzzing: ${#targets[@]} targets ran ${SECONDS_PER_TARGET}s each, no failure"
