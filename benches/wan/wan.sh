#!/usr/bin/env bash
# holdwire rows for the WAN emulator in ../shared/wanlab (a measuring instrument beside the
# checkout, not part of the project): runs wan-bench.sh with holdwire added as extra rows.
#
#   bash benches/wan/wan.sh [--smoke] [wan-bench.sh arguments]
#
# Rows added (each process started fresh per test by wan-bench.sh, stopped by PID):
#   holdwire            the CLI, client in the client namespace -> server, direct over HTTP
#   holdwire+tinyproxy  the same through the lab's tinyproxy (which closes after every request)
#   holdwire-std        the holdwire-std library API (the e2e binary's forwarders), direct
#   holdwire-std+tinyproxy  the same through tinyproxy
# Settings are wan-bench.sh's (PROFILES, ROWS, RUNS, TESTS, BULK_BYTES, ...), see its header.
#
# --smoke: an integrity check for CI: one profile (wan20), small transfers, one run; exits
# non-zero unless every holdwire row's every test verified every byte. Never a speed check.
# Needs root (network namespaces); without root it skips with a reason, unless CI=true.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
LAB=${WANLAB:-$ROOT/../shared/wanlab}
SMOKE=0
if [ "${1:-}" = --smoke ]; then SMOKE=1; shift; fi

skip_or_fail() {
  if [ "${CI:-}" = true ]; then echo "wan.sh: $1 (CI=true: failing)" >&2; exit 1; fi
  echo "wan.sh: skipped: $1" >&2; exit 0
}
[ "$(id -u)" = 0 ] || skip_or_fail "needs root for network namespaces"
[ -f "$LAB/wan-bench.sh" ] || skip_or_fail "no WAN lab at $LAB"

TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
(cd "$ROOT" && cargo build -q --release -p holdwire-smol --bin holdwire)
HW=$TARGET_DIR/release/holdwire
(cd "$ROOT" && cargo build -q --release -p holdwire-benches --bin e2e)
E2E=$TARGET_DIR/release/e2e

row() {   # row PREFIX NAME VIA SERVER_CMD CLIENT_CMD SERVER_PORT PORT
  export "$1_NAME=$2" "$1_VIA=$3" "$1_SERVER_CMD=$4" "$1_CLIENT_CMD=$5" "$1_SERVER_PORT=$6" "$1_PORT=$7"
}
SRV='--listen $BENCH_SERVER_HOST:%s --target $BENCH_TARGET --no-auth'
CLI='--listen 127.0.0.1:$BENCH_PORT --server http://$BENCH_SERVER_HOST:%s/ --no-auth'
# shellcheck disable=SC2059
row EXTRA holdwire none "$HW server -q $(printf -- "$SRV" 19540)" "$HW client -q $(printf -- "$CLI" 19540)" 19540 19541
# shellcheck disable=SC2059
row EXTRA2 holdwire+tinyproxy tinyproxy "$HW server -q $(printf -- "$SRV" 19542)" \
  "$HW client -q $(printf -- "$CLI" 19542) --proxy http://\$BENCH_PROXY" 19542 19543
{
  # The e2e binary's hidden forwarders on holdwire-std's library API: __std-server LISTEN
  # TARGET, __std-client LISTEN URL [PROXY].
  row EXTRA3 holdwire-std none "$E2E __std-server \$BENCH_SERVER_HOST:19544 \$BENCH_TARGET" \
    "$E2E __std-client 127.0.0.1:\$BENCH_PORT http://\$BENCH_SERVER_HOST:19544/" 19544 19545
  row EXTRA4 holdwire-std+tinyproxy tinyproxy "$E2E __std-server \$BENCH_SERVER_HOST:19546 \$BENCH_TARGET" \
    "$E2E __std-client 127.0.0.1:\$BENCH_PORT http://\$BENCH_SERVER_HOST:19546/ http://\$BENCH_PROXY" 19546 19547
}

if [ "$SMOKE" = 1 ]; then
  export PROFILES=${PROFILES:-wan20} ROWS=${ROWS:-raw} RUNS=${RUNS:-1} FIDELITY=${FIDELITY:-0}
  export BULK_BYTES=${BULK_BYTES:-8M} BIDI_BYTES=${BIDI_BYTES:-4M} PINGS=${PINGS:-50}
  export TESTS=${TESTS:-"bulk_up bulk_down bidi pingpong abort_reuse"}
  OUT_DIR=${OUT_DIR:-$(mktemp -d /tmp/holdwire-wan-smoke.XXXXXX)}
  export OUT_DIR
fi
export OUT_DIR=${OUT_DIR:-/tmp/holdwire-wan.$(date +%Y%m%d-%H%M%S)}
bash "$LAB/wan-bench.sh" "$@"

if [ "$SMOKE" = 1 ]; then
  python3 - "$OUT_DIR" <<'PY'
import glob, json, sys
bad, seen = [], 0
for path in glob.glob(sys.argv[1] + "/*/results.jsonl"):
    for line in open(path):
        r = json.loads(line)
        if not str(r.get("label", "")).startswith("holdwire"):
            continue
        seen += 1
        if not (r.get("ok") and r.get("verified", r.get("ok"))):
            bad.append("%s %s: %s" % (r.get("label"), r.get("test"), r.get("error") or "not verified"))
print("wan smoke: %d holdwire measurements, %d failed" % (seen, len(bad)))
for b in bad:
    print("  FAILED " + b)
sys.exit(1 if bad or seen == 0 else 0)
PY
fi
