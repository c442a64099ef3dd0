#!/usr/bin/env bash
# Starts a throwaway PostgreSQL cluster for the test suite (cairn-configdb and the server run
# their tests against it as well as against SQLite) and prints the shell lines to use it:
#
#   eval "$(scripts/postgres-for-tests.sh)"   # sets CAIRN_TEST_POSTGRES_URL, CAIRN_TEST_POSTGRES_STOP
#   cargo test --workspace --locked
#   eval "$CAIRN_TEST_POSTGRES_STOP"          # stops the cluster and deletes its folder
#
# Installs Debian's `postgresql` with apt when no server binaries are found. As root (CI: no
# systemd) the cluster runs as the `postgres` user through runuser; otherwise as the current user.
# It listens on 127.0.0.1 on a free port with trust authentication, durability off (fsync) since
# it is thrown away. Tests create their own databases in it, so they can run in parallel.
# Everything except the printed lines goes to stderr.
set -euo pipefail

SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo

find_bindir() {
    ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1
}

bindir=$(find_bindir)
if [ -z "$bindir" ] || [ ! -x "$bindir/initdb" ] || [ ! -x "$bindir/pg_ctl" ]; then
    echo "postgres-for-tests: installing postgresql with apt" >&2
    $SUDO apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >&2
    bindir=$(find_bindir)
fi
if [ -z "$bindir" ] || [ ! -x "$bindir/initdb" ]; then
    echo "postgres-for-tests: no initdb under /usr/lib/postgresql/*/bin after installing postgresql" >&2
    exit 1
fi

dir=$(mktemp -d "${TMPDIR:-/tmp}/cairn-postgres.XXXXXX")
chmod 755 "$dir"
if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
    chown postgres: "$dir"
    as_pg=(runuser -u postgres --)
else
    as_pg=()
fi

"${as_pg[@]}" "$bindir/initdb" -D "$dir/data" -U postgres --auth=trust --encoding=UTF8 --no-locale \
    --no-sync >"$dir/initdb.log" 2>&1 || {
    cat "$dir/initdb.log" >&2
    exit 1
}

port_is_free() {
    ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

started=""
for _ in 1 2 3 4 5 6 7 8 9 10; do
    port=$((20000 + RANDOM % 30000))
    port_is_free "$port" || continue
    if "${as_pg[@]}" "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $port -c unix_socket_directories=$dir -c max_connections=300 \
-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c shared_buffers=64MB" \
        start >&2; then
        started=yes
        break
    fi
done
if [ -z "$started" ]; then
    echo "postgres-for-tests: the server did not start; its log:" >&2
    cat "$dir/server.log" >&2 || true
    rm -rf "$dir"
    exit 1
fi

stop="${as_pg[*]} $bindir/pg_ctl -D $dir/data -m immediate stop >/dev/null 2>&1; rm -rf $dir"
echo "export CAIRN_TEST_POSTGRES_URL='postgres://postgres@127.0.0.1:$port/postgres'"
echo "export CAIRN_TEST_POSTGRES_STOP='$stop'"
echo "postgres-for-tests: PostgreSQL $($bindir/postgres --version | awk '{print $3}') on 127.0.0.1:$port in $dir" >&2
