#!/usr/bin/env bash
# Runs the fuzz targets in fuzz/fuzz_targets with libFuzzer, each for a fixed time.
#
#   tools/fuzz.sh [--secs N] [--check] [TARGET...]
#
# --secs N   seconds per target (default 60); every target when none is named.
# --check    only type-check the fuzz crate on the stable toolchain (what CI runs, so the
#            targets cannot rot between fuzzing campaigns); no nightly needed.
#
# Fuzzing needs a nightly toolchain (`rustup toolchain install nightly`) and a C++ compiler
# (libfuzzer-sys builds libFuzzer). cargo-fuzz is not needed: the build uses the flags
# cargo-fuzz passes (SanitizerCoverage, AddressSanitizer, debug assertions, overflow
# checks) with its own target directory, fuzz/target. The corpus grows in
# fuzz/corpus/<target> and is reused by the next run; a crash, a timeout or a leak stops
# that target, is saved in fuzz/artifacts/<target>/ and makes the script fail at the end
# with the command that replays it. Both folders are ignored by git: a fixed crash gets a
# regression test in the crate that owns the decoder, not a file here.
set -euo pipefail
cd "$(dirname "$0")/.."

secs=60
check=0
targets=()
while [ $# -gt 0 ]; do
    case "$1" in
        --secs) secs="${2:?--secs needs a number}"; shift 2 ;;
        --check) check=1; shift ;;
        -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) echo "tools/fuzz.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
        *) targets+=("$1"); shift ;;
    esac
done
case "$secs" in
    ''|*[!0-9]*|0) echo "tools/fuzz.sh: --secs must be a positive whole number, got '$secs'" >&2; exit 2 ;;
esac

if [ "$check" = 1 ]; then
    exec cargo check --manifest-path fuzz/Cargo.toml --bins --locked
fi

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "tools/fuzz.sh: fuzzing needs a nightly toolchain: rustup toolchain install nightly" >&2
    exit 2
fi
if [ ${#targets[@]} -eq 0 ]; then
    for f in fuzz/fuzz_targets/*.rs; do targets+=("$(basename "$f" .rs)"); done
fi
for t in "${targets[@]}"; do
    [ -f "fuzz/fuzz_targets/$t.rs" ] || { echo "tools/fuzz.sh: no fuzz target '$t' in fuzz/fuzz_targets" >&2; exit 2; }
done

triple="$(rustc +nightly -vV | sed -n 's/^host: //p')"
# The target triple is explicit so that RUSTFLAGS reach only the fuzzed code, not build
# scripts and proc macros (as cargo-fuzz does).
RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions \
-Coverflow-checks -Zsanitizer=address" \
    cargo +nightly build --manifest-path fuzz/Cargo.toml --release --locked --target "$triple" \
    $(printf -- '--bin %s ' "${targets[@]}")

failed=()
for t in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
    echo "== fuzz $t (${secs} s)"
    # A run of a few seconds per input is a hang in a decoder; 2 GiB is far above what any
    # decoder may allocate for the inputs libFuzzer makes (4 KiB by default).
    if ! "fuzz/target/$triple/release/$t" -max_total_time="$secs" -timeout=10 \
        -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="fuzz/artifacts/$t/" "fuzz/corpus/$t" 2>"fuzz/artifacts/$t/log"; then
        failed+=("$t")
        tail -n 40 "fuzz/artifacts/$t/log" >&2
    else
        grep -E '^(stat::number_of_executed_units|stat::new_units_added|#[0-9]+ +DONE)' \
            "fuzz/artifacts/$t/log" || true
    fi
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "tools/fuzz.sh: crashed: ${failed[*]}; replay one with" >&2
    echo "  fuzz/target/$triple/release/<target> fuzz/artifacts/<target>/<crash-file>" >&2
    exit 1
fi
echo "tools/fuzz.sh: ${#targets[@]} targets, ${secs} s each, no crash"
