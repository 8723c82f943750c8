// Memory of `quire serve` (issue 9, goal 3): resident memory with DOCS
// active documents of SIZE bytes of text each (one editor connected to each,
// the text written in OPS ops), then per extra idle editor, and the data
// folder against text + history, after compaction.
//
//   node memory.mjs [DOCS] [SIZE] [OPS] [IDLE_EDITORS]   (default 2000 10000 10 2000)
// QUIRE_BIN: the quire binary. Extra arguments for `quire serve` after `--`.
// SETTLE_MS (default 3000): idle time before resident memory is read.
import { execFileSync } from "node:child_process";
import { readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";
import WebSocket from "ws";
import { serveQuire } from "./serve.mjs";

const dash = process.argv.indexOf("--");
const args = (dash < 0 ? process.argv.slice(2) : process.argv.slice(2, dash)).map(Number);
const extra = dash < 0 ? [] : process.argv.slice(dash + 1);
const [docs = 2000, size = 10000, opsPerDoc = 10, idle = 2000] = args;
const bin = process.env.QUIRE_BIN;
if (!bin) throw new Error("set QUIRE_BIN to the quire binary");

const rssKiB = (pid) => Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))[1]);
const duKiB = (dir) => Number(execFileSync("du", ["-sk", dir], { encoding: "utf8" }).split("\t")[0]);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const quire = await serveQuire(bin, extra);
const { child: server, port, data } = quire;
const url = `ws://127.0.0.1:${port}`;
const run = Date.now().toString(36);

/** Connects an editor to `doc`; resolves once it is live. */
async function editor(doc, id) {
  const ws = new WebSocket(`${url}/v1/docs/${doc}/ws`);
  await new Promise((ok, err) => { ws.once("open", ok); ws.once("error", err); });
  const ed = { ws, version: 0, waiting: null };
  ws.on("message", (d) => {
    const m = JSON.parse(d);
    if (m.type === "ready" || m.type === "applied") ed.version = Math.max(ed.version, m.seq);
    if (m.type === "error") console.error(`quire error: ${m.code} ${m.message}`);
    if (ed.waiting && ((m.type === "applied" && m.client === id) || m.type === "ready")) {
      const w = ed.waiting;
      ed.waiting = null;
      w();
    }
  });
  await new Promise((ok) => { ed.waiting = ok; ws.send(JSON.stringify({ type: "hello", client: id })); });
  return ed;
}

const letters = "abcdefghijklmnopqrstuvwxyz ";
const chunk = Math.ceil(size / opsPerDoc);
let textBytes = 0;
let historyBytes = 0;
const editors = [];
async function fill(d) {
  const doc = `mem-${run}-${d}`;
  const id = `m${d}`;
  const ed = await editor(doc, id);
  editors.push({ ed, doc });
  let len = 0;
  for (let i = 0; i < opsPerDoc && len < size; i++) {
    const n = Math.min(chunk, size - len);
    let s = "";
    for (let k = 0; k < n; k++) s += letters[(Math.random() * letters.length) | 0];
    await new Promise((ok) => {
      ed.waiting = ok;
      ed.ws.send(JSON.stringify({ type: "op", client: id, cseq: i + 1, base: ed.version, op: len ? [len, s] : [s] }));
    });
    len += n;
    historyBytes += n;
  }
  textBytes += len;
}
const parallel = 32;
for (let d = 0; d < docs; d += parallel) {
  await Promise.all(Array.from({ length: Math.min(parallel, docs - d) }, (_, k) => fill(d + k)));
}
// SETTLE_MS: how long the documents sit idle before the measure.
const settle = Number(process.env.SETTLE_MS ?? 3000);
if (!Number.isFinite(settle) || settle < 0) throw new Error("SETTLE_MS must be a number of milliseconds");
await sleep(settle);
const rssActive = rssKiB(server.pid);

const extraEditors = [];
for (let i = 0; i < idle; i++) {
  const { doc } = editors[i % editors.length];
  extraEditors.push(await editor(doc, `idle${i}`));
}
await sleep(2000);
const rssIdle = rssKiB(server.pid);
// The compactor truncates every 5 s by default.
await sleep(6000);
const dataKiB = duKiB(data);

const mib = (kib) => (kib / 1024).toFixed(1);
const textKiB = textBytes / 1024;
console.log(`| documents × text | text | resident | resident / text | per idle editor | data folder | data / (text + history) |`);
console.log(`|---|---|---|---|---|---|---|`);
console.log(
  `| ${docs} × ${size} B (${opsPerDoc} ops each) | ${mib(textKiB)} MiB | ${mib(rssActive)} MiB | ${(rssActive / textKiB).toFixed(2)}× | ${idle > 0 ? `${((rssIdle - rssActive) / idle).toFixed(1)} KiB` : "–"} | ${mib(dataKiB)} MiB | ${(dataKiB / ((textBytes + historyBytes) / 1024)).toFixed(2)}× |`,
);
// Where the data folder's bytes are, per entry (the log's database, the store).
const parts = execFileSync("du", ["-sk", ...readdirSync(data).map((f) => join(data, f))], { encoding: "utf8" })
  .trim()
  .split("\n")
  .map((l) => l.split("\t"))
  .map(([k, f]) => `${f.slice(data.length + 1)} ${mib(Number(k))} MiB`);
console.log(`data folder: ${parts.join(", ")}`);
for (const e of [...editors.map((x) => x.ed), ...extraEditors]) e.ws.close();
await quire.stop();
process.exit(0);
