// Unit tests only: e2e/ runs under node's test runner against a real server.
export default { test: { include: ["test/**/*.test.ts"] } };
