#!/usr/bin/env bash
# Prints the admin URL of a PostgreSQL server for the test suite: the configured one
# (KEEPER_TEST_PG_URL, default the machine's server at 127.0.0.1:5432) when it answers; otherwise a
# throwaway cluster of its own, started from Debian's PostgreSQL binaries in a temp folder on a free
# port (trust auth, loopback only), so the Postgres half of the suite never silently skips.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PY:-$ROOT/.venv/bin/python}"
url="${KEEPER_TEST_PG_URL:-postgresql://postgres@127.0.0.1:5432/test}"
state="$ROOT/var/test-postgres.dir"  # the throwaway cluster this script started, if any

if [[ "${1:-}" == "--stop" ]]; then
  if [[ -f "$state" ]]; then
    dir="$(cat "$state")"; bin="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"
    run=(); [[ "$(id -u)" -eq 0 ]] && run=(runuser -u postgres --)
    "${run[@]}" "$bin/pg_ctl" -D "$dir/data" stop -m fast >/dev/null 2>&1 || true
    rm -rf "$dir" "$state"
  fi
  exit 0
fi

answers() {
  "$PY" - "$1" <<'PYEOF' >/dev/null 2>&1
import sys, psycopg
psycopg.connect(sys.argv[1].replace("postgresql+psycopg://", "postgresql://"), connect_timeout=3).close()
PYEOF
}

if answers "$url"; then echo "$url"; exit 0; fi

bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
if [[ -z "$bin" || ! -x "$bin/initdb" ]]; then
  echo "ensure-postgres: no server at $url and no PostgreSQL binaries to start one (apt-get install postgresql)" >&2
  exit 1
fi
port="$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
dir="$(mktemp -d /tmp/keeper-pg.XXXXXX)"
run=()
if [[ "$(id -u)" -eq 0 ]]; then chown postgres "$dir"; run=(runuser -u postgres --); fi
"${run[@]}" "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 >"$dir/initdb.log" 2>&1 \
  || { echo "ensure-postgres: initdb failed, see $dir/initdb.log" >&2; exit 1; }
"${run[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w \
  -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null \
  || { echo "ensure-postgres: server failed to start, see $dir/server.log" >&2; exit 1; }
"${run[@]}" "$bin/createdb" -h 127.0.0.1 -p "$port" -U postgres test
mkdir -p "$(dirname "$state")"; echo "$dir" > "$state"
echo "ensure-postgres: no server at $url; started a throwaway one on port $port ($dir)" >&2
echo "postgresql://postgres@127.0.0.1:$port/test"
