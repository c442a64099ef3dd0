#!/usr/bin/env bash
# Fuzz smoke run for CI: every cargo-fuzz target in fuzz/ for N seconds each
# (default 20), starting from the checked-in seeds in fuzz/seeds/<target>/.
#
#   scripts/fuzz-smoke.sh [SECONDS_PER_TARGET] [TARGET...]
#
# Needs a nightly toolchain (installed with rustup if missing) and cargo-fuzz
# (installed with `cargo install cargo-fuzz --locked` if missing). New corpus
# entries go to fuzz/corpus/<target>/ and crashes to fuzz/artifacts/<target>/
# (both ignored by git). Exits non-zero if any target found a crash.
# Environment: CAIRN_FUZZ_TOOLCHAIN (default nightly), CAIRN_FUZZ_ARGS (extra
# libFuzzer flags, e.g. "-max_len=65536").
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

per_target="${1:-20}"
shift || true
toolchain="${CAIRN_FUZZ_TOOLCHAIN:-nightly}"

if ! rustup run "$toolchain" rustc --version >/dev/null 2>&1; then
    echo "installing the $toolchain toolchain"
    rustup toolchain install "$toolchain" --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

if [ $# -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo +"$toolchain" fuzz list)
fi

# One build of every target first, so the timed runs only fuzz.
cargo +"$toolchain" fuzz build

failed=()
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "seeds/$t"
    echo "== fuzzing $t for ${per_target}s"
    # The first corpus folder receives new inputs; the seeds stay untouched.
    # shellcheck disable=SC2086
    if ! cargo +"$toolchain" fuzz run "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$per_target" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        ${CAIRN_FUZZ_ARGS:-}; then
        failed+=("$t")
        echo "!! $t failed; crashing inputs are in fuzz/artifacts/$t/" >&2
    fi
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz smoke run failed for: ${failed[*]}" >&2
    exit 1
fi
echo "fuzz smoke run: ${#targets[@]} targets, ${per_target}s each, no crashes"
