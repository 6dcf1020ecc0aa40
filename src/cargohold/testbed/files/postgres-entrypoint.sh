#!/bin/sh
# cargohold test image: PostgreSQL 15 in the foreground as user postgres (PID 1, gets the signals).
# Initialises PGDATA when it holds no cluster. Listens on 127.0.0.1:$POSTGRES_PORT (default $PGPORT,
# else 5432) and on the socket in /var/run/postgresql; set PGPORT too so `docker exec ... psql` follows.
# Arguments are passed to the server (e.g. -c fsync=off).
set -eu
PGDATA="${PGDATA:-/var/lib/postgresql/data}"
PORT="${POSTGRES_PORT:-${PGPORT:-5432}}"
mkdir -p "$PGDATA" /var/run/postgresql
chown postgres:postgres "$PGDATA" /var/run/postgresql
chmod 0700 "$PGDATA"
chmod 2775 /var/run/postgresql
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    setpriv --reuid=postgres --regid=postgres --init-groups \
        initdb --pgdata="$PGDATA" --username=postgres --encoding=UTF8 --locale=C.UTF-8 \
        --auth-local=trust --auth-host="${POSTGRES_HOST_AUTH_METHOD:-trust}"
fi
exec setpriv --reuid=postgres --regid=postgres --init-groups \
    postgres -D "$PGDATA" -c listen_addresses=127.0.0.1 -p "$PORT" \
    -c unix_socket_directories=/var/run/postgresql "$@"
