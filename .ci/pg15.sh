#!/usr/bin/env bash
# Start a throwaway Debian PostgreSQL 15 cluster with pg_cron, PGMQ's own extension scripts
# (1.4.4 and 1.5.1, from ../shared/pgmq) and, on request, PgBouncer in transaction mode.
# Usage: CQ_PGMQ_SCRIPTS=dir source .ci/pg15.sh
#   exports CQ_PG15_URL and CQ_PG15_CRON_URL; stop everything with cq_pg15_stop;
#   cq_pg15_pgmq_default 1.4.4   sets the version a bare CREATE EXTENSION pgmq installs;
#   cq_pg15_pgbouncer            starts PgBouncer (pool_mode = transaction), exports CQ_PGBOUNCER_PORT.
#
# The server runs from a private copy of Debian's binaries and share/ directory (PostgreSQL
# finds share/ relative to its own executable), so the PGMQ scripts go into that copy's
# extension directory: the machine's PostgreSQL, and anyone else's cluster on it, never
# sees them. PGMQ at these versions is pure SQL, so no shared library is needed.
set -euo pipefail
PGBIN_SYSTEM=/usr/lib/postgresql/15/bin
CQ_PG15_DIR=$(mktemp -d /tmp/cq-pg15.XXXXXX)
chmod 755 "$CQ_PG15_DIR"
mkdir -p "$CQ_PG15_DIR/usr/lib/postgresql/15" "$CQ_PG15_DIR/usr/share/postgresql"
cp -a "$PGBIN_SYSTEM" "$CQ_PG15_DIR/usr/lib/postgresql/15/bin"
ln -s /usr/lib/postgresql/15/lib "$CQ_PG15_DIR/usr/lib/postgresql/15/lib"
cp -a /usr/share/postgresql/15 "$CQ_PG15_DIR/usr/share/postgresql/15"
PGBIN="$CQ_PG15_DIR/usr/lib/postgresql/15/bin"
CQ_PG15_EXTDIR="$CQ_PG15_DIR/usr/share/postgresql/15/extension"
if [ -n "${CQ_PGMQ_SCRIPTS:-}" ]; then
  cp "$CQ_PGMQ_SCRIPTS"/pgmq--*.sql "$CQ_PG15_EXTDIR"/
fi
cq_pg15_pgmq_default() {
  sed "1i default_version = '$1'" "$CQ_PGMQ_SCRIPTS/pgmq.control.in" > "$CQ_PG15_EXTDIR/pgmq.control"
}
chown -R postgres:postgres "$CQ_PG15_DIR"
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

cq_pg15_pgbouncer() {
  CQ_PGBOUNCER_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  # trust: no passwords, but every user must be listed (the tests' roles).
  printf '"%s" ""\n' postgres cq_app campaignq_worker campaignq_console campaignq_reader > "$CQ_PG15_DIR/pgbouncer.users"
  cat > "$CQ_PG15_DIR/pgbouncer.ini" <<INI
[databases]
* = host=127.0.0.1 port=$CQ_PG15_PORT
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $CQ_PGBOUNCER_PORT
unix_socket_dir =
auth_type = trust
auth_file = $CQ_PG15_DIR/pgbouncer.users
pool_mode = transaction
max_client_conn = 2000
default_pool_size = 10
max_db_connections = 20
ignore_startup_parameters = extra_float_digits
logfile = $CQ_PG15_DIR/pgbouncer.log
pidfile = $CQ_PG15_DIR/pgbouncer.pid
INI
  chown postgres:postgres "$CQ_PG15_DIR/pgbouncer.ini" "$CQ_PG15_DIR/pgbouncer.users"
  runuser -u postgres -- pgbouncer -d -q "$CQ_PG15_DIR/pgbouncer.ini"
  for _ in $(seq 50); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1', $CQ_PGBOUNCER_PORT), 0.2)" 2>/dev/null && break
    sleep 0.1
  done
  export CQ_PGBOUNCER_PORT
}

cq_pg15_stop() {
  if [ -f "$CQ_PG15_DIR/pgbouncer.pid" ]; then
    kill "$(cat "$CQ_PG15_DIR/pgbouncer.pid")" 2>/dev/null || true
  fi
  runuser -u postgres -- "$PGBIN/pg_ctl" -D "$CQ_PG15_DIR/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$CQ_PG15_DIR"
}
