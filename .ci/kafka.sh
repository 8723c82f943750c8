# Sourced by .ci/run: a real Kafka-protocol broker for the Kafka tests.
#
# No Apache Kafka, Redpanda or Docker can run here; tansu (a Kafka-protocol
# broker in Rust, crates.io) can. install_tansu builds tansu 0.6.0 with its
# SQLite storage (durable: it survives kill -9) into a persistent folder
# outside the clone ($QUIRE_TOOLS, default /var/tmp/quire-tools) when it is
# not there yet: the first build takes a quarter of an hour on two cores,
# later runs reuse it. start_kafka starts it on a free port with its data
# in a temporary folder and exports QUIRE_TEST_KAFKA (host:port) and
# QUIRE_TEST_TANSU (the binary, for tests that kill and restart a broker of
# their own). stop_kafka stops it by PID and removes the folder.

TANSU_VERSION=0.6.0
TOOLS_DIR="${QUIRE_TOOLS:-/var/tmp/quire-tools}"
TANSU_BIN="$TOOLS_DIR/tansu/bin/tansu"
KAFKA_DIR=""
KAFKA_PID=""

install_tansu() {
  if [ -x "$TANSU_BIN" ] && "$TANSU_BIN" --version 2>/dev/null | grep -q "$TANSU_VERSION"; then
    return 0
  fi
  echo "building tansu $TANSU_VERSION into $TOOLS_DIR/tansu (once; about 15 minutes on 2 cores)"
  mkdir -p "$TOOLS_DIR"
  local build_log="$TOOLS_DIR/tansu-build.log"
  # Its own target folder: the broker's build never mixes with Quire's.
  if ! CARGO_TARGET_DIR="$TOOLS_DIR/tansu-target" nice cargo install tansu \
    --version "$TANSU_VERSION" --locked --no-default-features --features libsql \
    --root "$TOOLS_DIR/tansu" >"$build_log" 2>&1; then
    tail -30 "$build_log"
    echo "error: building the tansu broker failed (log: $build_log)" >&2
    return 1
  fi
  rm -rf "$TOOLS_DIR/tansu-target"
  "$TANSU_BIN" --version
}

# An independent Kafka client (kafka-python, from PyPI) for the test that
# reads quire.applied as an audit job would.
install_kafka_python() {
  local venv="$TOOLS_DIR/kafka-python"
  if ! "$venv/bin/python" -c 'import kafka' 2>/dev/null; then
    python3 -m venv "$venv" && "$venv/bin/pip" install -q kafka-python==2.0.2 || {
      echo "error: could not install kafka-python from PyPI" >&2
      return 1
    }
  fi
  export QUIRE_TEST_KAFKA_PYTHON="$venv/bin/python"
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start_kafka() {
  install_tansu
  install_kafka_python
  KAFKA_DIR=$(mktemp -d /tmp/quire-kafka.XXXXXX)
  local port
  port=$(free_port)
  # The SQLite path is relative to the broker's working folder.
  (cd "$KAFKA_DIR" && exec "$TANSU_BIN" broker \
    --listener-url "tcp://127.0.0.1:$port" \
    --advertised-listener-url "tcp://127.0.0.1:$port" \
    --storage-engine "sqlite://tansu.db" >"$KAFKA_DIR/broker.log" 2>&1) &
  KAFKA_PID=$!
  for _ in $(seq 300); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      export QUIRE_TEST_KAFKA="127.0.0.1:$port"
      export QUIRE_TEST_TANSU="$TANSU_BIN"
      echo "Kafka-protocol broker: tansu $TANSU_VERSION (sqlite) on $QUIRE_TEST_KAFKA (pid $KAFKA_PID)"
      return 0
    fi
    if ! kill -0 "$KAFKA_PID" 2>/dev/null; then
      break
    fi
    sleep 0.1
  done
  tail -20 "$KAFKA_DIR/broker.log"
  echo "error: the tansu broker did not start" >&2
  return 1
}

stop_kafka() {
  if [ -n "$KAFKA_PID" ]; then
    kill -TERM "$KAFKA_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$KAFKA_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$KAFKA_PID" 2>/dev/null || true
    KAFKA_PID=""
  fi
  [ -n "$KAFKA_DIR" ] && rm -rf "$KAFKA_DIR"
  KAFKA_DIR=""
}
