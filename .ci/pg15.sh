#!/usr/bin/env bash
# Start a throwaway Debian PostgreSQL 15 cluster with pg_cron for the tests.
# Usage: source .ci/pg15.sh   (exports CQ_PG15_URL and CQ_PG15_CRON_URL; stop with cq_pg15_stop)
set -euo pipefail
PGBIN=/usr/lib/postgresql/15/bin
CQ_PG15_DIR=$(mktemp -d /tmp/cq-pg15.XXXXXX)
chown postgres:postgres "$CQ_PG15_DIR"
CQ_PG15_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
runuser -u postgres -- "$PGBIN/initdb" -D "$CQ_PG15_DIR/data" -U postgres --auth=trust -E UTF8 >/dev/null
cat >> "$CQ_PG15_DIR/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $CQ_PG15_PORT
unix_socket_directories = '$CQ_PG15_DIR'
max_connections = 300
shared_buffers = 256MB
fsync = off
synchronous_commit = off
full_page_writes = off
shared_preload_libraries = 'pg_cron'
cron.database_name = 'campaignq_cron'
cron.use_background_workers = on
max_worker_processes = 32
CONF
runuser -u postgres -- "$PGBIN/pg_ctl" -D "$CQ_PG15_DIR/data" -l "$CQ_PG15_DIR/log" -w start >/dev/null
runuser -u postgres -- "$PGBIN/psql" -h 127.0.0.1 -p "$CQ_PG15_PORT" -U postgres -qc 'CREATE DATABASE campaignq_cron' >/dev/null
export CQ_PG15_DIR CQ_PG15_PORT
export CQ_PG15_URL="postgresql://postgres@127.0.0.1:$CQ_PG15_PORT/postgres"
export CQ_PG15_CRON_URL="postgresql://postgres@127.0.0.1:$CQ_PG15_PORT/campaignq_cron"
cq_pg15_stop() {
  runuser -u postgres -- "$PGBIN/pg_ctl" -D "$CQ_PG15_DIR/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$CQ_PG15_DIR"
}
