// Starting the servers the benchmarks measure: `quire serve` on a fresh
// data folder (run.mjs, memory.mjs) or any command that prints its port.
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";

/** Starts `cmd` and resolves with {child, port} once a line of its standard
 * output matches `pattern` (the port in its first group). */
export function start(cmd, argv, pattern) {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, argv, { stdio: ["ignore", "pipe", "inherit"], env: { ...process.env, QUIRE_LOG: "warn" } });
    const lines = createInterface({ input: child.stdout });
    const timer = setTimeout(() => reject(new Error(`${cmd} did not start`)), 60_000);
    lines.on("line", (l) => {
      const m = pattern.exec(l);
      if (m) {
        clearTimeout(timer);
        resolve({ child, port: Number(m[1]) });
      }
    });
    child.once("exit", (c) => reject(new Error(`${cmd} exited with ${c}`)));
  });
}

/** Stops a child started by `start` and waits for it to exit. */
export async function stop(child) {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((r) => child.once("exit", r));
  child.kill("SIGTERM");
  await exited;
}

/** `quire serve` (binary `bin`) on a fresh data folder, on any free port,
 * without rate limits; `extra`: more arguments. `stop()` ends it and
 * removes the folder. */
export async function serveQuire(bin, extra = []) {
  const data = mkdtempSync(join(tmpdir(), "quire-peer-"));
  const { child, port } = await start(
    bin,
    ["serve", "--addr", "127.0.0.1:0", "--data", data, "--ops-per-sec", "100000", "--ops-burst", "100000", ...extra],
    /quire listening on http:\/\/127\.0\.0\.1:(\d+)/,
  );
  return {
    child,
    port,
    data,
    async stop() {
      await stop(child);
      rmSync(data, { recursive: true, force: true });
    },
  };
}
