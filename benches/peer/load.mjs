// One load client for both servers. Each editor types one character per
// keystroke at position 0 at a fixed rate, with one op in flight: keystrokes
// made while an op is in flight are composed into the next op. Measures ack
// latency (op sent -> acknowledged) and acknowledged keystrokes.
//
//   node load.mjs quire|sharedb URL DOCS EDITORS KEYS_PER_SEC SECONDS [WARMUP_SECONDS]
// Prints one JSON line: {acked_keys, ops, seconds, p50_ms, p99_ms}.
import WebSocket from "ws";
import ShareDBClient from "sharedb/lib/client/index.js";
import { type as textUnicode } from "ot-text-unicode";

ShareDBClient.types.register(textUnicode);
const [target, url, docsArg, editorsArg, rateArg, secondsArg, warmArg] = process.argv.slice(2);
const docs = Number(docsArg);
const editors = Number(editorsArg);
const rate = Number(rateArg);
const seconds = Number(secondsArg);
const warmup = Number(warmArg ?? 2);
const run = `${Date.now().toString(36)}`;

let measuring = false;
const latencies = [];
let ackedKeys = 0;
let ops = 0;

function record(sentAt, keys) {
  if (!measuring) return;
  latencies.push(performance.now() - sentAt);
  ackedKeys += keys;
  ops += 1;
}

/** A Quire editor: hello, then ops at position 0 based on the version it has. */
async function quireEditor(doc, id) {
  const ws = new WebSocket(`${url}/v1/docs/${doc}/ws`);
  await new Promise((ok, err) => { ws.once("open", ok); ws.once("error", err); });
  let version = 0;
  let cseq = 0;
  let inflight = null; // {cseq, keys, sentAt}
  let buffered = 0;
  let ready;
  const live = new Promise((r) => (ready = r));
  const send = () => {
    if (inflight || buffered === 0) return;
    cseq += 1;
    inflight = { cseq, keys: buffered, sentAt: performance.now() };
    ws.send(JSON.stringify({ type: "op", client: id, cseq, base: version, op: ["x".repeat(buffered)] }));
    buffered = 0;
  };
  ws.on("message", (data) => {
    const m = JSON.parse(data);
    if (m.type === "snapshot") version = m.seq;
    else if (m.type === "ready") { version = Math.max(version, m.seq); ready(); }
    else if (m.type === "applied") {
      version = m.seq;
      if (m.client === id && inflight && m.cseq === inflight.cseq) {
        record(inflight.sentAt, inflight.keys);
        inflight = null;
        send();
      }
    } else if (m.type === "error") {
      console.error(`quire error: ${m.code} ${m.message}`);
      if (inflight && m.cseq === inflight.cseq) { buffered += inflight.keys; inflight = null; setTimeout(send, m.retryAfterMs ?? 100); }
    }
  });
  ws.send(JSON.stringify({ type: "hello", client: id }));
  await live;
  return { key() { buffered += 1; send(); }, close() { ws.close(); } };
}

/** A ShareDB editor: its client keeps one op in flight and composes the rest itself. */
async function sharedbEditor(docId) {
  const ws = new WebSocket(url);
  await new Promise((ok, err) => { ws.once("open", ok); ws.once("error", err); });
  const conn = new ShareDBClient.Connection(ws);
  const doc = conn.get("bench", docId);
  await new Promise((ok, err) => doc.subscribe((e) => (e ? err(e) : ok())));
  if (!doc.type) {
    await new Promise((ok) => doc.create("", textUnicode.uri, () => ok()));
  }
  let inflight = null;
  let buffered = 0;
  const send = () => {
    if (inflight || buffered === 0) return;
    const keys = buffered;
    buffered = 0;
    inflight = { keys, sentAt: performance.now() };
    doc.submitOp(["x".repeat(keys)], (e) => {
      if (e) console.error(`sharedb error: ${e.message}`);
      record(inflight.sentAt, inflight.keys);
      inflight = null;
      send();
    });
  };
  return { key() { buffered += 1; send(); }, close() { conn.close(); } };
}

const all = [];
for (let d = 0; d < docs; d++) {
  for (let e = 0; e < editors; e++) {
    const doc = `peer-${run}-${d}`;
    const id = `p${d}x${e}`;
    all.push(target === "quire" ? await quireEditor(doc, id) : await sharedbEditor(doc));
    // ShareDB: one creator per document, the others find it created.
    if (target !== "quire" && e === 0) await new Promise((r) => setTimeout(r, 5));
  }
}

// Keystrokes at `rate` per editor, spread over the interval.
const every = 1000 / rate;
const timers = all.map((ed, i) =>
  setTimeout(() => {
    ed.timer = setInterval(() => ed.key(), every);
  }, (i * every) / all.length),
);
await new Promise((r) => setTimeout(r, warmup * 1000));
measuring = true;
const began = performance.now();
process.stdout.write(""); // the runner samples the server's CPU now
console.error("MEASURE_START");
await new Promise((r) => setTimeout(r, seconds * 1000));
measuring = false;
const elapsed = (performance.now() - began) / 1000;
console.error("MEASURE_END");
for (const t of timers) clearTimeout(t);
for (const ed of all) { clearInterval(ed.timer); ed.close(); }
latencies.sort((a, b) => a - b);
const q = (p) => latencies[Math.min(latencies.length - 1, Math.floor(p * latencies.length))] ?? NaN;
console.log(JSON.stringify({ acked_keys: ackedKeys, ops, seconds: elapsed, p50_ms: q(0.5), p99_ms: q(0.99) }));
process.exit(0);
