#!/usr/bin/env bash
# Runs every fuzz target for SECONDS (default 30) with cargo-fuzz (libFuzzer, nightly), on
# top of its committed corpus (fuzz/corpus/TARGET); new finds go to fuzz/artifacts. Without a
# nightly toolchain it says so and exits 0: `cargo test` still replays the corpus on stable.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-30}"
if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    echo "fuzz: skipped, no nightly Rust toolchain here (cargo test replays the corpus)"
    exit 0
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    cargo +nightly install -q cargo-fuzz --locked
fi
for target in $(cargo +nightly fuzz list); do
    mkdir -p "corpus/$target"
    # A scratch copy of the corpus: what the fuzzer adds is not committed by accident.
    scratch="$(mktemp -d)"
    cp -r "corpus/$target/." "$scratch/"
    echo "fuzz: $target for ${seconds}s"
    log="$scratch.log"
    status=0
    cargo +nightly fuzz run -s address "$target" "$scratch" -- -max_total_time="$seconds" \
        -rss_limit_mb=4096 -print_final_stats=1 >"$log" 2>&1 || status=$?
    grep -E "^(stat::number_of_executed_units|stat::peak_rss_mb|SUMMARY)" "$log" || true
    rm -rf "$scratch"
    if [ "$status" != 0 ]; then
        tail -40 "$log"
        echo "fuzz: $target failed (exit $status; a crash is saved under fuzz/artifacts/$target)"
        exit 1
    fi
    rm -f "$log"
done
