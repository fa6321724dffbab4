#!/usr/bin/env bash
# Builds every fuzz target once and runs each for SECONDS (default 30), starting from the
# committed seed corpus. Stable toolchain, no sanitizer (`-s none`), so it runs wherever
# `cargo install cargo-fuzz` does. Exits non-zero if any target crashes, hangs or runs out of
# memory; the crashing input is left in fuzz/artifacts/TARGET/ and the command to reproduce
# it is printed.
#
#   fuzz/run-all.sh 30          # what CI runs
#   FUZZ_TARGETS="server_endpoint" fuzz/run-all.sh 600
#
# New corpus entries go to a temporary directory: the committed corpus only changes by hand
# (see README.md, "Corpus").
set -euo pipefail

secs="${1:-30}"
case "$secs" in
'' | *[!0-9]*)
	echo "usage: $0 [SECONDS]" >&2
	exit 2
	;;
esac

cd "$(dirname "$0")"
if ! command -v cargo-fuzz >/dev/null 2>&1; then
	echo "cargo-fuzz is not installed: cargo install cargo-fuzz --locked" >&2
	exit 2
fi

# The machines are shared: one compiler job unless told otherwise.
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-1}"
# Checks are never skipped here (see README.md, "Triage").
unset HOLDWIRE_FUZZ_SKIP HOLDWIRE_FUZZ_TRACE

targets="${FUZZ_TARGETS:-$(cargo fuzz list)}"
cargo fuzz build -s none

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

failed=""
for t in $targets; do
	mkdir -p "$work/$t"
	echo "== $t: ${secs}s"
	# -timeout: one input taking over 20 s is a hang; -max_len: the default, stated.
	if cargo fuzz run -s none "$t" "$work/$t" "corpus/$t" -- \
		-max_total_time="$secs" -timeout=20 -max_len=4096 -print_final_stats=1 \
		>"$work/$t.log" 2>&1; then
		grep -E '^#[0-9]+[[:space:]]+DONE|^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)' \
			"$work/$t.log" || true
	else
		failed="$failed $t"
		echo "!! $t failed:"
		grep -E -A12 'panicked at|ERROR: libFuzzer' "$work/$t.log" | head -40 || tail -40 "$work/$t.log"
		grep -E 'Test unit written to' "$work/$t.log" | sed 's/.*Test unit written to /   input: /' || true
		echo "   reproduce: (cd fuzz && cargo fuzz run -s none $t artifacts/$t/<file>)"
	fi
done

if [ -n "$failed" ]; then
	echo "FAILED:$failed"
	exit 1
fi
echo "all targets ran ${secs}s without a crash"
