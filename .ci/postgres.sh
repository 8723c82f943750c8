# Sourced by .ci/run: a throwaway PostgreSQL for the store tests.
# start_postgres installs PostgreSQL from Debian's packages if it is
# missing, starts a cluster in a temporary folder on a free loopback port
# (as an unprivileged user: initdb refuses root), and exports
# QUIRE_TEST_POSTGRES; stop_postgres stops it by PID and removes the folder.
# The test cluster runs with fsync off (QUIRE_PG_FSYNC=on for benchmarks).

PG_DIR=""

pg_bindir() {
  ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1
}

start_postgres() {
  local bindir
  bindir=$(pg_bindir)
  if [ -z "$bindir" ] && [ "$(id -u)" = 0 ]; then
    echo "installing PostgreSQL from Debian's packages"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) >/tmp/quire-pg-install.log 2>&1 \
      || echo "PostgreSQL install failed: see /tmp/quire-pg-install.log"
    bindir=$(pg_bindir)
  fi
  if [ -z "$bindir" ]; then
    echo "SKIPPED: PostgreSQL is not installed and could not be; the PostgreSQL store tests skip"
    return 0
  fi
  PG_DIR=$(mktemp -d /tmp/quire-pg.XXXXXX)
  local run=()
  if [ "$(id -u)" = 0 ]; then
    id -u quire-ci >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin quire-ci
    chown quire-ci "$PG_DIR"
    run=(runuser -u quire-ci --)
  fi
  local port
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  if "${run[@]}" "$bindir/initdb" -D "$PG_DIR/data" -U quire -A trust >"$PG_DIR/initdb.log" 2>&1 \
    && "${run[@]}" "$bindir/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/server.log" -w -t 60 \
         -o "-p $port -k $PG_DIR -c listen_addresses=127.0.0.1 -c fsync=${QUIRE_PG_FSYNC:-off}" start >/dev/null; then
    export QUIRE_TEST_POSTGRES="host=127.0.0.1 port=$port user=quire dbname=postgres"
    echo "PostgreSQL $("$bindir/postgres" --version | awk '{print $3}') on 127.0.0.1:$port (pid $(head -1 "$PG_DIR/data/postmaster.pid"))"
  else
    echo "SKIPPED: PostgreSQL did not start; the PostgreSQL store tests skip"
    cat "$PG_DIR"/*.log 2>/dev/null | tail -20
  fi
}

stop_postgres() {
  [ -n "$PG_DIR" ] || return 0
  if [ -f "$PG_DIR/data/postmaster.pid" ]; then
    local pid
    pid=$(head -1 "$PG_DIR/data/postmaster.pid")
    kill -INT "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  rm -rf "$PG_DIR"
}
