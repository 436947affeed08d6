#!/usr/bin/env bash
# Local dev loop (`make run`): anvil on 127.0.0.1:8545 (chain 31337, automine), deploy the contracts,
# then simulate the "calm" scenario until Ctrl-C. Ctrl-C / SIGTERM stop every child cleanly.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# Foundry's native binaries (the node shims in contracts/node_modules/.bin always exit 0 and don't
# wait for their child); `make run` passes the same paths in ANVIL and CAST.
platform="$(uname -s | tr A-Z a-z)-$(uname -m | sed 's/x86_64/amd64/; s/aarch64/arm64/')"
ANVIL="${ANVIL:-$ROOT/contracts/node_modules/@foundry-rs/anvil-$platform/bin/anvil}"
CAST="${CAST:-$ROOT/contracts/node_modules/@foundry-rs/cast-$platform/bin/cast}"
KEEPER="${KEEPER:-$ROOT/.venv/bin/keeper}"
HOST=127.0.0.1
PORT=8545
CHAIN_ID=31337
RPC="http://$HOST:$PORT"
VAR="$ROOT/var"
ANVIL_LOG="$VAR/anvil.log"

for tool in "$ANVIL" "$CAST" "$KEEPER"; do
  [[ -x "$tool" ]] || { echo "dev-run: $tool not found: run 'make setup'" >&2; exit 1; }
done
if "$CAST" chain-id --rpc-url "$RPC" >/dev/null 2>&1; then
  echo "dev-run: something already answers on $RPC; stop it first" >&2
  exit 1
fi
mkdir -p "$VAR"

anvil_pid=""
sim_pid=""
cleanup() {
  trap - INT TERM EXIT
  for pid in $sim_pid $anvil_pid; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in $sim_pid $anvil_pid; do
    wait "$pid" 2>/dev/null || true
  done
  echo "dev-run: stopped"
}
trap 'cleanup; exit 130' INT
trap 'cleanup; exit 143' TERM
trap cleanup EXIT

echo "dev-run: starting anvil on $RPC (chain id $CHAIN_ID, automine), log $ANVIL_LOG"
"$ANVIL" --host "$HOST" --port "$PORT" --chain-id "$CHAIN_ID" >"$ANVIL_LOG" 2>&1 &
anvil_pid=$!

for _ in $(seq 1 100); do
  if "$CAST" chain-id --rpc-url "$RPC" >/dev/null 2>&1; then break; fi
  if ! kill -0 "$anvil_pid" 2>/dev/null; then
    echo "dev-run: anvil exited; last lines of $ANVIL_LOG:" >&2
    tail -n 20 "$ANVIL_LOG" >&2
    exit 1
  fi
  sleep 0.1
done
"$CAST" chain-id --rpc-url "$RPC" >/dev/null 2>&1 || { echo "dev-run: anvil did not answer on $RPC" >&2; exit 1; }
echo "dev-run: anvil is up (pid $anvil_pid)"

echo "dev-run: $KEEPER deploy"
"$KEEPER" deploy

echo "dev-run: $KEEPER simulate --scenario calm --forever (Ctrl-C to stop)"
"$KEEPER" simulate --scenario calm --forever &
sim_pid=$!
echo "dev-run: running: anvil pid $anvil_pid at $RPC, simulator pid $sim_pid; config ${KEEPER_CONFIG:-config/dev.toml}"
status=0
wait "$sim_pid" || status=$?
sim_pid=""
exit "$status"
