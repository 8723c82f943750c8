// Shared pieces of the end-to-end tests: a real `quire serve` on a free port
// and Debian's Chromium driven by playwright-core (no browser download).
import { spawn, execFileSync } from "node:child_process";
import { createHmac } from "node:crypto";
import { mkdtempSync, mkdirSync, rmSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

const web = join(dirname(fileURLToPath(import.meta.url)), "..");
const repo = join(web, "..");
export const artifacts = join(web, "test-results");

/** The quire binary: $QUIRE_BIN, else built here with cargo (debug). */
function quireBinary() {
  if (process.env.QUIRE_BIN) return process.env.QUIRE_BIN;
  execFileSync("cargo", ["build", "--quiet", "--locked", "-p", "quire"], { cwd: repo, stdio: "inherit" });
  const meta = JSON.parse(
    execFileSync("cargo", ["metadata", "--format-version", "1", "--no-deps"], { cwd: repo, encoding: "utf8", maxBuffer: 1 << 26 }),
  );
  return join(meta.target_directory, "debug", "quire");
}

let binary;

/** Starts `quire serve` on the embedded log and store in a fresh folder. */
export async function startQuire({ jwtSecret } = {}) {
  binary ??= quireBinary();
  const data = mkdtempSync(join(tmpdir(), "quire-e2e-"));
  const env = { ...process.env, QUIRE_LOG: process.env.QUIRE_LOG ?? "warn" };
  const args = ["serve", "--addr", "127.0.0.1:0", "--data", data];
  if (jwtSecret) env.QUIRE_JWT_SECRET = jwtSecret;
  else delete env.QUIRE_JWT_SECRET;
  const child = spawn(binary, args, { env, stdio: ["ignore", "pipe", "inherit"] });
  const lines = createInterface({ input: child.stdout });
  const url = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("quire did not start within 60 s")), 60_000);
    child.once("exit", (code) => reject(new Error(`quire exited with ${code} before listening`)));
    lines.on("line", (line) => {
      const m = /quire listening on (http:\/\/\S+)/.exec(line);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]);
      }
    });
  });
  for (let i = 0; ; i++) {
    const r = await fetch(`${url}/readyz`).catch(() => null);
    if (r?.ok) break;
    if (i > 600) throw new Error(`${url} not ready`);
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    url,
    async stop() {
      child.kill("SIGTERM");
      await new Promise((r) => (child.exitCode !== null ? r() : child.once("exit", r)));
      rmSync(data, { recursive: true, force: true });
    },
  };
}

const FLAGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

/** Debian's Chromium with a fresh profile (playwright-core makes a new user-data dir per launch). */
export async function launchBrowser() {
  const executablePath = process.env.CHROMIUM ?? "/usr/bin/chromium";
  if (!existsSync(executablePath)) throw new Error(`no Chromium at ${executablePath} (apt-get install -y chromium)`);
  return chromium.launch({ executablePath, args: FLAGS, headless: true });
}

/** A page of the editor on `doc`, live, in its own browser context (its own user). */
export async function openEditor(browser, url, doc, { token, name } = {}) {
  const context = await browser.newContext({ viewport: { width: 1100, height: 700 } });
  if (name) await context.addInitScript((n) => localStorage.setItem("quire.name", n), name);
  const page = await context.newPage();
  page.on("pageerror", (e) => console.error(`[page ${doc}] ${e.stack ?? e}`));
  await page.goto(`${url}/d/${doc}${token ? `?token=${token}` : ""}`);
  await page.waitForSelector("#status[data-status=live]");
  return page;
}

/** The editor's text, and a check that the editor and its client agree. */
export async function editorText(page) {
  return page.evaluate(() => {
    const q = window.quire;
    const shown = q.view.state.doc.toString();
    if (shown !== q.conn.text) throw new Error(`editor shows ${JSON.stringify(shown)}, client has ${JSON.stringify(q.conn.text)}`);
    return shown;
  });
}

/** Waits until every page shows the server's text and nothing is pending; returns it. */
export async function converged(url, doc, pages, { token, timeoutMs = 20_000 } = {}) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    const server = await (await fetch(`${url}/v1/docs/${doc}${token ? `?token=${token}` : ""}`)).json();
    const texts = await Promise.all(pages.map(editorText));
    const settled = await Promise.all(pages.map((p) => p.evaluate(() => window.quire.conn.core.settled)));
    last = { server: server.text, texts, settled };
    if (settled.every(Boolean) && texts.every((t) => t === server.text)) return server.text;
    if (Date.now() > deadline) throw new Error(`no convergence: ${JSON.stringify(last)}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

export async function screenshot(page, name) {
  mkdirSync(artifacts, { recursive: true });
  await page.screenshot({ path: join(artifacts, `${name}.png`), fullPage: true });
}

/** Submits one op over HTTP (SPEC §6) and returns the applied record. */
export async function postOp(url, doc, body, token) {
  const r = await fetch(`${url}/v1/docs/${doc}/ops`, {
    method: "POST",
    headers: { "content-type": "application/json", ...(token ? { authorization: `Bearer ${token}` } : {}) },
    body: JSON.stringify(body),
  });
  const json = await r.json();
  if (!r.ok) throw new Error(`POST op: ${r.status} ${JSON.stringify(json)}`);
  return json;
}

/** An HS256 JWT (SPEC §8). */
export function jwt(secret, claims) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const head = b64({ alg: "HS256", typ: "JWT" });
  const body = b64({ exp: Math.floor(Date.now() / 1000) + 3600, ...claims });
  const sig = createHmac("sha256", secret).update(`${head}.${body}`).digest("base64url");
  return `${head}.${body}.${sig}`;
}

export function uniqueDoc(name) {
  return `${name}-${Date.now().toString(36)}${Math.floor(Math.random() * 1e6).toString(36)}`;
}
