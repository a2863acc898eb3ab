# Shared by regtest/up, regtest/down and regtest/demo (sourced, not run).
CACHE="${BTC_ESCROW_REGTEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/btc-escrow/regtest}"
POINTER="${TMPDIR:-/tmp}/btc-escrow-regtest.current"
# P2WSH(OP_TRUE): coinbase rewards of filler blocks go to this address nobody needs.
BURN_ADDRESS=bcrt1qft5p2uhsdcdc3l2ua4ap5qqfg4pjaqlp250x7us7a8qqhrxrxfsqseac85

log() { echo "$(basename "$0"): $*" >&2; }
die() { log "$*"; exit 1; }

load_binaries() {
  if [[ -z "${BITCOIND_EXE:-}" || -z "${ELECTRS_EXE:-}" || -z "${BITCOIN_CLI_EXE:-}" ]]; then
    [[ -f "$CACHE/env" ]] || die "bitcoind/electrs not built: run regtest/setup first"
    # shellcheck disable=SC1091
    source "$CACHE/env"
  fi
  local exe
  for exe in "$BITCOIND_EXE" "$BITCOIN_CLI_EXE" "$ELECTRS_EXE"; do
    [[ -x "$exe" ]] || die "$exe missing: run regtest/setup first"
  done
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
