#!/usr/bin/env bash
# Runs fuzz targets for a while each, two at a time (the machine has two cores), and
# keeps each run's output in fuzz/artifacts/logs/TARGET.log (see docs/fuzzing.md).
#
#   fuzz/run.sh [SECONDS] [TARGET...]     default: 600 seconds, every target
#
# FUZZ_ARGS adds libFuzzer options to every run, e.g. FUZZ_ARGS=-max_len=140000.
#
# Uses the stable toolchain: RUSTC_BOOTSTRAP=1 lets it take the nightly-only
# `-Zsanitizer=address` flag that cargo-fuzz passes. `-a` turns on debug assertions and
# overflow checks, so that arithmetic overflow in a decoder is a crash too.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-600}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo fuzz list)
fi
export RUSTC_BOOTSTRAP=1
mkdir -p fuzz/artifacts/logs

# Extra libFuzzer options per target. The websocket reader must stay within its 1 MiB
# limits, so a single allocation over 64 MiB counts as a crash there.
options() {
    case "$1" in
        websocket_frames) echo "-malloc_limit_mb=64 -rss_limit_mb=1024" ;;
        *) echo "" ;;
    esac
}

run() {
    local target=$1 log="fuzz/artifacts/logs/$1.log" status=0
    mkdir -p "fuzz/corpus/$target"
    # shellcheck disable=SC2046 # the options are words on purpose
    cargo fuzz run -a "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" -- \
        -max_total_time="$seconds" -timeout=10 -print_final_stats=1 \
        $(options "$target") ${FUZZ_ARGS:-} >"$log" 2>&1 || status=$?
    echo "$target: exit $status, $(grep -m1 'stat::number_of_executed_units' "$log" || true)"
}

cargo fuzz build -a
for ((i = 0; i < ${#targets[@]}; i += 2)); do
    run "${targets[i]}" &
    if [ $((i + 1)) -lt ${#targets[@]} ]; then
        run "${targets[i + 1]}" &
    fi
    wait
done
