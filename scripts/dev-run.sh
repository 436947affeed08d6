#!/usr/bin/env bash
# Local dev loop (`make run`): anvil on 127.0.0.1:8545 (chain 31337, automine), deploy the contracts,
# migrate a fresh SQLite database, then run the keeper (`keeper run`: indexer, liquidator, funding and
# ADL, publisher, public page) and the "calm" market simulator until Ctrl-C. Ctrl-C / SIGTERM stop every child cleanly.
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
keeper_pid=""
cleanup() {
  trap - INT TERM EXIT
  # The simulator first (it restores anvil's mining settings), then the keeper, then the chain.
  for group in "$sim_pid" "$keeper_pid" "$anvil_pid"; do
    for pid in $group; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in $group; do wait "$pid" 2>/dev/null || true; done
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

# A fresh chain needs a fresh index: the dev database lives and dies with this anvil.
DB="$VAR/keeper.db"
rm -f "$DB" "$DB-wal" "$DB-shm"
export KEEPER_DATABASE__URL="sqlite:///$DB"
"$KEEPER" db upgrade

# The keeper's three signing keys, one per nonce lane (liquidations, funding, ADL): anvil's PUBLIC dev
# accounts 3, 4 and 5 — well-known, worthless keys, for this local chain only.
export KEEPER_PRIVATE_KEY=0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6
export KEEPER_FUNDING_KEY=0x47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a
export KEEPER_ADL_KEY=0x8b3a350cf5c34c9194ca85829a2df0ec3153be0318b5e2d3348e872092edffba

echo "dev-run: $KEEPER run (indexer, liquidator, funding/ADL, publisher, page; log $VAR/keeper.log)"
"$KEEPER" run >"$VAR/keeper.log" 2>&1 &
keeper_pid=$!

echo "dev-run: $KEEPER simulate --scenario calm --forever (Ctrl-C to stop)"
# setsid: the simulator gets our TERM (not the terminal's INT) so it can restore anvil before it stops.
# It idles while $VAR/simulate.pause exists (`keeper simulate --scenario crash-day --against-running`).
rm -f "$VAR/simulate.pause" "$VAR/simulate.pause.ack"
setsid "$KEEPER" simulate --scenario calm --forever --pause-file "$VAR/simulate.pause" &
sim_pid=$!
cat <<INFO
dev-run: running
  chain      $RPC (anvil pid $anvil_pid, chain id $CHAIN_ID)
  keeper     pid $keeper_pid: indexer -> $DB, liquidator, funding, publisher (log $VAR/keeper.log)
  page       http://127.0.0.1:8080/  (API /api/openapi.json, health /healthz)
  metrics    http://127.0.0.1:9108/metrics
  simulator  pid $sim_pid (calm, 200 traders); other scenarios: .venv/bin/keeper simulate --scenario crash
  crash day  .venv/bin/keeper simulate --scenario crash-day --against-running (pauses the simulator)
  status     .venv/bin/keeper status
  config     ${KEEPER_CONFIG:-config/dev.toml}
INFO
status=0
wait "$sim_pid" || status=$?
sim_pid=""
exit "$status"
