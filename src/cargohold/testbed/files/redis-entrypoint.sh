#!/bin/sh
# cargohold test image: Redis in the foreground as user redis (PID 1, gets the signals).
# Data in /data. Listens on 127.0.0.1:$REDIS_PORT (default 6379) and on
# /run/redis/redis-server.sock. Arguments are passed to the server (e.g. --appendonly yes).
set -eu
PORT="${REDIS_PORT:-6379}"
mkdir -p /data /run/redis
chown redis:redis /data /run/redis
exec setpriv --reuid=redis --regid=redis --init-groups \
    redis-server --port "$PORT" --bind 127.0.0.1 --dir /data \
    --unixsocket /run/redis/redis-server.sock --unixsocketperm 770 "$@"
