#!/usr/bin/env bash
# Runs every cargo-fuzz target (or the ones named) for a bounded time each.
#
#   fuzz/run.sh                  # config, kubelet and decode, FUZZ_SECONDS (default 20) each
#   FUZZ_SECONDS=300 fuzz/run.sh decode
#
# cargo-fuzz needs a nightly compiler (-Zsanitizer=address): rustup's nightly toolchain if it
# is installed, else Debian's rustc-web at /usr with RUSTC_BOOTSTRAP=1 (see shared FACTS). The
# eBPF object is not needed (SCALER_SKIP_EBPF=1). A crash leaves its input under
# fuzz/artifacts/<target>/ and makes this script exit non-zero. The build goes to
# FUZZ_TARGET_DIR, default fuzz/target (`cargo xtask test` sets ~/.cache/scaler-fuzz/target so
# that CI, which clones afresh, rebuilds only what changed).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
secs="${FUZZ_SECONDS:-20}"
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(config kubelet decode)

# FUZZ_TOOLCHAIN=usr forces the Debian compiler even when rustup has a nightly.
sanitizer=()
if [ "${FUZZ_TOOLCHAIN:-}" != usr ] && rustup run nightly rustc --version >/dev/null 2>&1; then
    toolchain=(rustup run nightly)
elif /usr/bin/rustc --version >/dev/null 2>&1; then
    toolchain=(env RUSTC_BOOTSTRAP=1 rustup run /usr)
    # Debian's rustc ships no AddressSanitizer runtime (librustc-stable_rt.asan.a): fuzz
    # without it (libFuzzer coverage and Rust's own panics and checks still apply).
    sanitizer=(--sanitizer none)
else
    echo "fuzz: no nightly-capable compiler (rustup nightly or Debian rustc-web at /usr)" >&2
    exit 1
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi
export SCALER_SKIP_EBPF=1
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$root/fuzz/target}"
echo "fuzz: $("${toolchain[@]}" rustc --version), ${secs}s per target: ${targets[*]}" >&2
for t in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$t"
    echo "==== fuzz $t (${secs}s)" >&2
    "${toolchain[@]}" cargo fuzz run "${sanitizer[@]}" --fuzz-dir fuzz "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -print_final_stats=1
done
echo "fuzz: all targets ran ${secs}s without a crash" >&2
