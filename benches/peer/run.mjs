// Runs Quire (`quire serve`, embedded log and store, durable) and ShareDB 7
// (in memory) side by side under the same loads, with the same client
// (load.mjs), and prints one table: acknowledged keystrokes per second, ack
// latency p50/p99, server CPU per 1,000 acknowledged keystrokes (from
// /proc/PID/stat over the measured window), resident memory, and the CPU
// ratio Quire/ShareDB.
//
//   node run.mjs [SECONDS] [--loads 10x3x20,50x4x10,400x2x10]
// QUIRE_BIN: the quire binary (default: cargo build --release, then its path).
import { spawn, execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { createInterface } from "node:readline";
import { serveQuire, start, stop } from "./serve.mjs";

const here = dirname(fileURLToPath(import.meta.url));
const repo = join(here, "..", "..");
const args = process.argv.slice(2);
const seconds = Number(args.find((a) => /^\d+$/.test(a)) ?? 20);
const loadsArg = args[args.indexOf("--loads") + 1];
const loads = (args.includes("--loads") ? loadsArg : "10x3x20,50x4x10,400x2x10")
  .split(",")
  .map((l) => l.split("x").map(Number));
const TICK = Number(execFileSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).trim());

function quireBin() {
  if (process.env.QUIRE_BIN) return process.env.QUIRE_BIN;
  execFileSync("cargo", ["build", "--release", "--quiet", "--locked", "-p", "quire"], { cwd: repo, stdio: "inherit" });
  const meta = JSON.parse(execFileSync("cargo", ["metadata", "--format-version", "1", "--no-deps"], { cwd: repo, encoding: "utf8", maxBuffer: 1 << 26 }));
  return join(meta.target_directory, "release", "quire");
}

function cpuSeconds(pid) {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) / TICK; // utime + stime
}

function rssMiB(pid) {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  return m ? Number(m[1]) / 1024 : NaN;
}

async function measure(target, server, port, [docs, editors, rate]) {
  const url = target === "quire" ? `ws://127.0.0.1:${port}` : `ws://127.0.0.1:${port}`;
  const load = spawn(process.execPath, [join(here, "load.mjs"), target, url, docs, editors, rate, seconds, 3].map(String), {
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  let cpu0 = 0;
  let cpu1 = 0;
  load.stdout.on("data", (d) => (out += d));
  createInterface({ input: load.stderr }).on("line", (l) => {
    if (l === "MEASURE_START") cpu0 = cpuSeconds(server.pid);
    else if (l === "MEASURE_END") cpu1 = cpuSeconds(server.pid);
    else console.error(`  [load] ${l}`);
  });
  await new Promise((r) => load.once("exit", r));
  const res = JSON.parse(out.trim().split("\n").pop());
  return {
    ...res,
    keysPerSec: res.acked_keys / res.seconds,
    cpuPer1k: ((cpu1 - cpu0) / Math.max(1, res.acked_keys)) * 1000,
    rss: rssMiB(server.pid),
  };
}

const bin = quireBin();
const rows = [];
for (const load of loads) {
  const q = await serveQuire(bin);
  const qr = await measure("quire", q.child, q.port, load);
  await q.stop();
  const s = await start(process.execPath, [join(here, "sharedb-server.mjs"), "0"], /listening on (\d+)/);
  const sr = await measure("sharedb", s.child, s.port, load);
  await stop(s.child);
  rows.push({ load, qr, sr });
  console.error(`done ${load.join("x")}`);
}

const f = (n, d = 1) => (Number.isFinite(n) ? n.toFixed(d) : "–");
console.log(`Quire (\`quire serve\`, embedded, durable) vs ShareDB 7 (in-memory), ${seconds} s per run, one Node load client, both on this machine's 2 cores.\n`);
console.log("| load (docs × editors × keys/s) | server | acked keys/s | ack p50 / p99 (ms) | CPU s per 1k acked keys | RSS (MiB) |");
console.log("|---|---|---|---|---|---|");
for (const { load, qr, sr } of rows) {
  const l = load.join(" × ");
  console.log(`| ${l} | Quire | ${f(qr.keysPerSec, 0)} | ${f(qr.p50_ms, 2)} / ${f(qr.p99_ms, 2)} | ${f(qr.cpuPer1k, 3)} | ${f(qr.rss, 0)} |`);
  console.log(`| ${l} | ShareDB | ${f(sr.keysPerSec, 0)} | ${f(sr.p50_ms, 2)} / ${f(sr.p99_ms, 2)} | ${f(sr.cpuPer1k, 3)} | ${f(sr.rss, 0)} |`);
  console.log(`| ${l} | **ratio Quire/ShareDB** | ${f(qr.keysPerSec / sr.keysPerSec, 2)}× | ${f(qr.p50_ms / sr.p50_ms, 2)}× / ${f(qr.p99_ms / sr.p99_ms, 2)}× | **${f(qr.cpuPer1k / sr.cpuPer1k, 2)}×** | ${f(qr.rss / sr.rss, 2)}× |`);
}
