#!/bin/sh
# cargohold test image: MariaDB in the foreground as user mysql (PID 1, gets the signals).
# Initialises /var/lib/mysql when it holds no system tables; root@localhost authenticates by
# unix socket, so `docker exec ... mariadb -uroot` works. Listens on 127.0.0.1:$MARIADB_PORT
# (default 3306) and on /run/mysqld/mysqld.sock. Arguments are passed to the server.
set -eu
DATADIR=/var/lib/mysql
PORT="${MARIADB_PORT:-3306}"
mkdir -p "$DATADIR" /run/mysqld
chown mysql:mysql "$DATADIR" /run/mysqld
if [ ! -d "$DATADIR/mysql" ]; then
    mariadb-install-db --user=mysql --datadir="$DATADIR" --skip-test-db \
        --auth-root-authentication-method=socket >/dev/null
fi
exec setpriv --reuid=mysql --regid=mysql --init-groups \
    mariadbd --datadir="$DATADIR" --bind-address=127.0.0.1 --port="$PORT" \
    --socket=/run/mysqld/mysqld.sock "$@"
