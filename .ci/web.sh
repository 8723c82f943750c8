# The browser editor's checks (sourced by .ci/run): TypeScript types, the
# library build, the committed bundle against a fresh build, unit tests
# (vitest) and end-to-end tests in Debian's Chromium (playwright-core).
# Needs the quire debug binary that `cargo test` built.

install_chromium() {
  if [ ! -x /usr/bin/chromium ]; then
    echo "installing chromium (Debian's package; browser downloads are impossible here)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  fi
  /usr/bin/chromium --version 2>/dev/null | head -1 || true
}

run_web() {
  local rc=0
  install_chromium
  (
    cd web
    # npm 11 leaves install scripts off; esbuild's binary comes from its
    # optional platform package, so none is needed.
    # (`&&`: `set -e` does not apply inside `|| rc=1`.)
    npm ci --no-audit --no-fund --loglevel=error &&
      npm run --silent typecheck &&
      npm run --silent build:lib &&
      npm run --silent check:page
  ) || rc=1
  (cd web && NO_COLOR=1 npx vitest run) || rc=1
  (cd web && QUIRE_BIN="$CARGO_TARGET_DIR/debug/quire" npm run --silent e2e) || rc=1
  echo "web: screenshots of the end-to-end tests are in web/test-results/"
  return $rc
}
