# Sourced by .ci/run: a throwaway PostgreSQL for the store tests.
#
# start_postgres installs PostgreSQL from Debian's packages if it is
# missing (and drops the default cluster the package makes), starts a cluster in a
# temporary folder, listening only on a Unix socket in that folder (no port
# to race for), as an unprivileged user (initdb refuses root), and exports
# QUIRE_TEST_POSTGRES. Where PostgreSQL cannot be had (no package, not
# root) it prints SKIPPED and the PostgreSQL tests skip; where it is
# installed but does not start, that is an error. stop_postgres stops the
# server and removes the folder. The cluster runs with fsync off
# (QUIRE_PG_FSYNC=on for benchmarks).

PG_DIR=""

pg_bindir() {
  local dirs=(/usr/lib/postgresql/*/bin)
  [ -e "${dirs[0]}" ] || return 0
  printf '%s\n' "${dirs[@]}" | sort -V | tail -1
}

start_postgres() {
  local bindir
  bindir=$(pg_bindir)
  if [ -z "$bindir" ] && [ "$(id -u)" = 0 ]; then
    echo "installing PostgreSQL from Debian's packages"
    local install_log
    install_log=$(mktemp)
    if ! (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) >"$install_log" 2>&1; then
      tail -20 "$install_log"
    fi
    rm -f "$install_log"
    bindir=$(pg_bindir)
    # Only our own throwaway cluster: drop the default one the package
    # created (and started) on port 5432.
    if [ -n "$bindir" ] && command -v pg_dropcluster >/dev/null; then
      pg_dropcluster --stop "$(basename "$(dirname "$bindir")")" main >/dev/null 2>&1 || true
    fi
  fi
  if [ -z "$bindir" ]; then
    echo "SKIPPED: PostgreSQL is not installed and could not be installed here; the PostgreSQL store tests skip"
    return 0
  fi
  PG_DIR=$(mktemp -d /tmp/quire-pg.XXXXXX)
  local run=()
  if [ "$(id -u)" = 0 ]; then
    id -u quire-ci >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin quire-ci
    chown quire-ci "$PG_DIR"
    run=(runuser -u quire-ci --)
  fi
  if ! "${run[@]}" "$bindir/initdb" -D "$PG_DIR/data" -U quire -A trust >"$PG_DIR/initdb.log" 2>&1; then
    cat "$PG_DIR/initdb.log"
    echo "error: PostgreSQL is installed but initdb failed" >&2
    return 1
  fi
  if ! "${run[@]}" "$bindir/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/server.log" -w -t 60 \
    -o "-c listen_addresses= -k $PG_DIR -c fsync=${QUIRE_PG_FSYNC:-off}" start >/dev/null; then
    tail -20 "$PG_DIR/server.log"
    echo "error: PostgreSQL is installed but did not start" >&2
    return 1
  fi
  export QUIRE_TEST_POSTGRES="host=$PG_DIR user=quire dbname=postgres"
  echo "PostgreSQL $("$bindir/postgres" --version | awk '{print $3}') on $PG_DIR (pid $(head -1 "$PG_DIR/data/postmaster.pid"))"
}

stop_postgres() {
  [ -n "$PG_DIR" ] || return 0
  local bindir pid=""
  bindir=$(pg_bindir)
  [ -f "$PG_DIR/data/postmaster.pid" ] && pid=$(head -1 "$PG_DIR/data/postmaster.pid")
  if [ -n "$pid" ]; then
    kill -INT "$pid" 2>/dev/null || true # fast shutdown
    for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -rf "$PG_DIR"
  PG_DIR=""
}
