# Checks of infra/ that need no Docker engine (sourced by .ci/run): Debian's
# docker-compose validates the compose file, Debian's prometheus package
# gives promtool for the Prometheus config, and the Grafana dashboard and
# provisioning files must be valid JSON/YAML. quire/tests/stack.rs runs the
# file's Quire services natively.

check_infra() {
  if ! command -v docker-compose >/dev/null || ! command -v promtool >/dev/null; then
    echo "installing docker-compose and prometheus (for promtool) from Debian's packages"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose prometheus >/dev/null
    # The package may start a server; the check needs only promtool.
    pkill -x prometheus 2>/dev/null || true
  fi
  local rc=0
  # The secret is required by the file (${QUIRE_JWT_SECRET:?}): give one.
  QUIRE_JWT_SECRET=ci docker-compose -f infra/compose.yaml config -q && echo "infra: compose.yaml is valid" || rc=1
  if (unset QUIRE_JWT_SECRET; docker-compose -f infra/compose.yaml config -q 2>/dev/null); then
    echo "infra: compose.yaml starts without QUIRE_JWT_SECRET (it must refuse)"; rc=1
  fi
  promtool check config infra/prometheus/prometheus.yml || rc=1
  python3 -c 'import json,sys; json.load(open(sys.argv[1]))' infra/grafana/dashboards/quire.json \
    && echo "infra: the dashboard is valid JSON" || rc=1
  return $rc
}
