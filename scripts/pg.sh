#!/usr/bin/env bash
# scripts/pg.sh -- a private PostgreSQL cluster for development and tests.
#
#   scripts/pg.sh start [DIR]   create (first time) and start the cluster
#   scripts/pg.sh stop  [DIR]   stop it (fast shutdown)
#   scripts/pg.sh status [DIR]  exit 0 when it is running
#   scripts/pg.sh url   [DIR]   print its libpq connection string
#   scripts/pg.sh destroy [DIR] stop it and delete its files
#
# DIR defaults to .moonq/ in the repository. The cluster listens only on a
# Unix socket in DIR/run (no TCP port to collide with), trusts local
# connections, and has a database and role named "moonq". When the caller is
# root the server runs as the unprivileged "postgres" user; if that user
# cannot reach DIR (a private home directory, say), the data lives under
# /var/tmp and DIR/data is a symlink to it.
set -euo pipefail

cmd=${1:-}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dir=${2:-$repo/.moonq}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
port=${MOONQ_PGPORT:-5432}

bindir=""
for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
  [ -x "$d/pg_ctl" ] && { bindir=$d; break; }
done
if [ -z "$bindir" ]; then
  echo "pg.sh: no PostgreSQL server found; run scripts/deps.sh first" >&2
  exit 1
fi

as_owner() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

# Unix socket paths are limited to 107 bytes; fall back to /tmp when the
# repository path is too long for DIR/run/.s.PGSQL.PORT.
sockdir() {
  local s="$dir/run"
  if [ ${#s} -gt 80 ]; then
    s="/tmp/moonq-pg-$(printf '%s' "$dir" | md5sum | cut -c1-12)"
  fi
  printf '%s' "$s"
}

datadir() { printf '%s' "$dir/data"; }

url() { printf 'host=%s port=%s dbname=moonq user=moonq' "$(sockdir)" "$port"; }

is_running() {
  [ -f "$(datadir)/postmaster.pid" ] && as_owner "$bindir/pg_ctl" -D "$(datadir)" status >/dev/null 2>&1
}

create() {
  local data; data=$(datadir)
  if [ "$(id -u)" = 0 ]; then
    if ! runuser -u postgres -- test -x "$dir"; then
      # postgres cannot traverse the repository path: keep the data outside.
      local ext="/var/tmp/moonq-pg-$(printf '%s' "$dir" | md5sum | cut -c1-12)"
      rm -rf "$ext"; mkdir -p "$ext"; chown postgres: "$ext"; chmod 700 "$ext"
      ln -sfn "$ext" "$data"
    else
      mkdir -p "$data"; chown postgres: "$data"; chmod 700 "$data"
    fi
  else
    mkdir -p "$data"; chmod 700 "$data"
  fi
  as_owner "$bindir/initdb" -D "$data/" -U moonq --auth=trust -E UTF8 \
    --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 || {
    cat "$dir/initdb.log" >&2; exit 1; }
  {
    echo "listen_addresses = ''"
    echo "port = $port"
    echo "unix_socket_directories = '$(sockdir)'"
    echo "max_connections = 200"
    echo "shared_buffers = 256MB"
    echo "fsync = on"
    echo "synchronous_commit = on"
    echo "logging_collector = off"
    echo "shared_preload_libraries = 'pg_stat_statements'"
  } | as_owner tee -a "$data/postgresql.conf" >/dev/null
}

start() {
  is_running && return 0
  [ -f "$(datadir)/PG_VERSION" ] || create
  local s; s=$(sockdir)
  mkdir -p "$s"
  [ "$(id -u)" = 0 ] && chown postgres: "$s"
  rm -f "$(datadir)/postmaster.pid" 2>/dev/null || true
  touch "$dir/postgres.log"
  [ "$(id -u)" = 0 ] && chown postgres: "$dir/postgres.log"
  as_owner "$bindir/pg_ctl" -D "$(datadir)" -l "$dir/postgres.log" -w -t 60 start >/dev/null || {
    tail -20 "$dir/postgres.log" >&2; exit 1; }
  # The role "moonq" is the bootstrap superuser; create its database once.
  if ! "$bindir/psql" -h "$s" -p "$port" -U moonq -d postgres -tAc \
      "SELECT 1 FROM pg_database WHERE datname = 'moonq'" | grep -q 1; then
    "$bindir/createdb" -h "$s" -p "$port" -U moonq moonq
  fi
}

stop() {
  is_running || return 0
  as_owner "$bindir/pg_ctl" -D "$(datadir)" -m fast -w -t 60 stop >/dev/null
}

case "$cmd" in
  start) start; url; echo ;;
  stop) stop ;;
  status) is_running ;;
  url) url; echo ;;
  destroy)
    stop
    if [ -L "$(datadir)" ]; then rm -rf "$(readlink "$(datadir)")"; fi
    rm -rf "$(datadir)" "$dir/run" "$dir/postgres.log" "$dir/initdb.log" ;;
  *) echo "usage: scripts/pg.sh start|stop|status|url|destroy [DIR]" >&2; exit 2 ;;
esac
