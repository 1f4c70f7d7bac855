#!/usr/bin/env bash
# Private PostgreSQL cluster for tests.
#   postgres.sh start DIR   -> installs the Debian `postgresql` package if missing, runs a cluster
#                              in DIR on a free 127.0.0.1 port and prints its SQLAlchemy URL
#   postgres.sh stop DIR    -> stops that cluster; `start DIR` again restarts it (same port and data)
# As root the server runs as the `postgres` user (PostgreSQL refuses to run as root).
set -euo pipefail

cmd="${1:-}"; dir="${2:-}"
if [[ -z "$cmd" || -z "$dir" ]]; then
    echo "usage: $0 start|stop DIR" >&2; exit 64
fi

find_bin() {
    local b
    for b in /usr/lib/postgresql/*/bin; do
        [[ -x "$b/initdb" ]] && { echo "$b"; return 0; }
    done
    command -v initdb >/dev/null 2>&1 && { dirname "$(readlink -f "$(command -v initdb)")"; return 0; }
    return 1
}

as_owner() {
    if [[ "$(id -u)" == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

if ! bin="$(find_bin)"; then
    if [[ "$(id -u)" != 0 ]]; then
        echo "PostgreSQL is not installed and we are not root to apt-get install it" >&2; exit 2
    fi
    echo "installing the Debian postgresql package ..." >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) >&2 \
        || { echo "apt-get install postgresql failed" >&2; exit 2; }
    bin="$(find_bin)" || { echo "postgresql installed but initdb not found" >&2; exit 2; }
fi

case "$cmd" in
start)
    mkdir -p "$dir"
    if [[ "$(id -u)" == 0 ]]; then
        id postgres >/dev/null 2>&1 || { echo "no postgres user to run the server as" >&2; exit 2; }
        chown postgres: "$dir"
    fi
    if [[ -f "$dir/data/PG_VERSION" && -f "$dir/port" ]]; then
        port="$(cat "$dir/port")"  # a restart (after `stop DIR`): same cluster, same port, same data
    else
        port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
        as_owner "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 >"$dir/initdb.log" 2>&1 \
            || { echo "initdb failed:" >&2; cat "$dir/initdb.log" >&2; exit 2; }
    fi
    # Test-only settings: no fsync (speed), enough connections for 8 writers plus the pool.
    as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
        -o "-h 127.0.0.1 -p $port -k $dir -c fsync=off -c max_connections=100" start >/dev/null \
        || { echo "pg_ctl start failed:" >&2; cat "$dir/server.log" >&2; exit 2; }
    echo "$port" >"$dir/port"
    echo "postgresql+psycopg://postgres@127.0.0.1:$port/postgres"
    ;;
stop)
    [[ -d "$dir/data" ]] && as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null || true
    ;;
*)
    echo "unknown command $cmd; use start or stop" >&2; exit 64
    ;;
esac
