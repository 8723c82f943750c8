// End-to-end: the editor page served by a real `quire serve`, in real
// headless Chromium. Screenshots go to web/test-results/.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import {
  startQuire, launchBrowser, openEditor, editorText, converged, screenshot, postOp, jwt, uniqueDoc,
} from "./harness.mjs";

let quire;
let browser;

before(async () => {
  quire = await startQuire();
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await quire?.stop();
});

async function goTo(page, where) {
  await page.locator(".cm-content").click();
  if (where === "end") await page.keyboard.press("Control+End");
  else {
    await page.keyboard.press("Control+Home");
    for (let i = 0; i < where.line; i++) await page.keyboard.press("ArrowDown");
    await page.keyboard.press("End");
  }
}

test("the start page opens a new document in the editor", async () => {
  const ctx = await browser.newContext();
  const page = await ctx.newPage();
  await page.goto(`${quire.url}/`);
  await page.click("#new-doc");
  await page.waitForURL(/\/d\/[A-Za-z0-9._-]+$/);
  await page.waitForSelector("#status[data-status=live]");
  await page.locator(".cm-content").click();
  await page.keyboard.type("first words");
  const doc = new URL(page.url()).pathname.slice(3);
  assert.equal(await converged(quire.url, doc, [page]), "first words");
  await screenshot(page, "start-page-new-document");
  await ctx.close();
});

test("two pages typing at once, emoji included, converge", async () => {
  const doc = uniqueDoc("together");
  await postOp(quire.url, doc, { client: "seed", cseq: 1, base: 0, op: ["A:\nB:\n"] });
  const a = await openEditor(browser, quire.url, doc, { name: "Alice" });
  const b = await openEditor(browser, quire.url, doc, { name: "Bob" });
  await goTo(a, { line: 0 });
  await goTo(b, { line: 1 });
  const fromA = " hello 😀 from A, 👩‍💻 typing 𝄞";
  const fromB = " bonjour 🎉🇫🇷 de B, 日本語 ok";
  await Promise.all([a.keyboard.type(fromA, { delay: 15 }), b.keyboard.type(fromB, { delay: 15 })]);
  const text = await converged(quire.url, doc, [a, b]);
  assert.equal(text, `A:${fromA}\nB:${fromB}\n`);
  // The server counts code points: the emoji are single positions there.
  const server = await (await fetch(`${quire.url}/v1/docs/${doc}`)).json();
  assert.equal([...server.text].length, [...text].length);
  await screenshot(a, "two-pages-converge-a");
  await screenshot(b, "two-pages-converge-b");
  await a.context().close();
  await b.context().close();
});

test("two pages typing at the same place converge, each one's keystrokes in order", async () => {
  const doc = uniqueDoc("same-place");
  await postOp(quire.url, doc, { client: "seed", cseq: 1, base: 0, op: ["[]"] });
  const a = await openEditor(browser, quire.url, doc);
  const b = await openEditor(browser, quire.url, doc);
  for (const p of [a, b]) {
    await p.locator(".cm-content").click();
    await p.keyboard.press("Control+Home");
    await p.keyboard.press("ArrowRight");
  }
  const fromA = "abcdefgh😀ijkl";
  const fromB = "12345678🎉9054";
  await Promise.all([a.keyboard.type(fromA, { delay: 10 }), b.keyboard.type(fromB, { delay: 10 })]);
  const text = await converged(quire.url, doc, [a, b]);
  const inner = [...text.slice(1, -1)];
  assert.equal(text[0] + text.at(-1), "[]");
  assert.equal(inner.length, [...fromA].length + [...fromB].length);
  // However they interleave, each page's characters keep their order.
  assert.equal(inner.filter((c) => fromA.includes(c)).join(""), fromA);
  assert.equal(inner.filter((c) => fromB.includes(c)).join(""), fromB);
  await screenshot(a, "same-place");
  await a.context().close();
  await b.context().close();
});

test("a document with \\r\\n line ends keeps every character where it is", async () => {
  const doc = uniqueDoc("crlf");
  await postOp(quire.url, doc, { client: "seed", cseq: 1, base: 0, op: ["one\r\ntwo 😀\r\n"] });
  const a = await openEditor(browser, quire.url, doc);
  const b = await openEditor(browser, quire.url, doc);
  assert.equal(await editorText(a), "one\r\ntwo 😀\r\n");
  await a.locator(".cm-content").click();
  await a.keyboard.press("Control+End");
  await a.keyboard.type("end");
  await b.locator(".cm-content").click();
  await b.keyboard.press("Control+Home");
  await b.keyboard.type("start ");
  const text = await converged(quire.url, doc, [a, b]);
  assert.equal(text, "start one\r\ntwo 😀\r\nend");
  await a.context().close();
  await b.context().close();
});

test("a page that goes offline keeps typing and loses nothing when it comes back", async () => {
  const doc = uniqueDoc("offline");
  await postOp(quire.url, doc, { client: "seed", cseq: 1, base: 0, op: ["one\ntwo\n"] });
  const a = await openEditor(browser, quire.url, doc, { name: "Away" });
  const b = await openEditor(browser, quire.url, doc, { name: "Here" });
  // Block a's socket: every connection it opens is cut at once.
  let blocked = false;
  const live = [];
  await a.routeWebSocket(/\/ws/, (ws) => {
    if (blocked) return ws.close({ code: 1011, reason: "blocked by the test" });
    ws.connectToServer();
    live.push(ws);
  });
  await a.reload();
  await a.waitForSelector("#status[data-status=live]");
  await goTo(a, { line: 0 });
  await goTo(b, { line: 1 });

  blocked = true;
  for (const ws of live) await ws.close({ code: 1011, reason: "blocked by the test" });
  await a.waitForSelector("#status[data-status=offline], #status[data-status=connecting]");
  await a.keyboard.type(" written offline 👩‍💻✈️");
  await b.keyboard.type(" while b stays 🟢");
  await a.keyboard.press("Enter");
  await a.keyboard.type("a new line, still offline");
  assert.equal(await a.evaluate(() => window.quire.conn.core.settled), false, "a's edits are pending");
  await screenshot(a, "offline-while-typing");

  blocked = false;
  await a.waitForSelector("#status[data-status=live]", { timeout: 20_000 });
  const text = await converged(quire.url, doc, [a, b]);
  assert.equal(text, "one written offline 👩‍💻✈️\na new line, still offline\ntwo while b stays 🟢\n");
  await screenshot(a, "offline-back-online");
  await a.context().close();
  await b.context().close();
});

test("remote cursors appear with the other user's name", async () => {
  const doc = uniqueDoc("cursors");
  await postOp(quire.url, doc, { client: "seed", cseq: 1, base: 0, op: ["some text 😀 here\nsecond line\n"] });
  const a = await openEditor(browser, quire.url, doc, { name: "Alice" });
  const b = await openEditor(browser, quire.url, doc, { name: "Bob" });
  await goTo(a, { line: 1 });
  const aClient = await a.evaluate(() => window.quire.conn.clientId);
  const caret = b.locator(`.q-caret[data-client="${aClient}"]`);
  await caret.waitFor({ timeout: 15_000 });
  assert.equal(await caret.locator(".q-caret-label").textContent(), "Alice");
  // The caret ends at the end of a's line 2 in b's editor, after "second
  // line". The caret shows from a's first cursor (the click), so wait for
  // the last one to arrive rather than read whichever is there.
  const want = [..."some text 😀 here\nsecond line"].length;
  const headOf = (c) => window.quire.conn.presence.find((p) => p.client === c)?.cursor?.head;
  await b
    .waitForFunction(([c, w]) => window.quire.conn.presence.find((p) => p.client === c)?.cursor?.head === w, [aClient, want], { timeout: 15_000 })
    .catch(() => {});
  assert.equal(await b.evaluate(headOf, aClient), want);
  // A selection shows too.
  await a.keyboard.press("Shift+Home");
  await b.locator(`.q-remote-selection[data-client="${aClient}"]`).waitFor({ timeout: 15_000 });
  assert.equal(await b.locator(`.q-remote-selection[data-client="${aClient}"]`).first().textContent(), "second line");
  await screenshot(b, "remote-cursor");
  await a.context().close();
  await b.context().close();
});

test("the history slider shows an earlier version and who made it", async () => {
  const doc = uniqueDoc("history");
  const first = await postOp(quire.url, doc, { client: "seed", cseq: 1, base: 0, op: ["first draft"] });
  await postOp(quire.url, doc, { client: "seed", cseq: 2, base: first.seq, op: [11, " and a second thought"] });
  const a = await openEditor(browser, quire.url, doc, { name: "Reader" });
  await a.locator(".cm-content").click();
  await a.keyboard.press("Control+End");
  await a.keyboard.type("!");
  await converged(quire.url, doc, [a]);
  await a.click("#history-toggle");
  await a.waitForFunction(() => document.getElementById("history-slider").max === "3");
  // The newest version's text arrives after the slider is set up.
  await a.waitForFunction(() => document.getElementById("history-info").textContent.includes("change 3 of 3"));
  assert.match(await a.textContent("#history-text"), /first draft and a second thought!/);
  await a.locator("#history-slider").fill("1");
  await a.waitForFunction(() => document.getElementById("history-info").textContent.includes("change 1 of 3"));
  assert.equal(await a.textContent("#history-text"), "first draft");
  assert.match(await a.textContent("#history-info"), new RegExp(`Version ${first.seq} .* by anonymous`));
  assert.equal(await a.textContent("#history-text mark"), "first draft");
  await screenshot(a, "history-slider");
  // The live document did not move.
  assert.equal(await editorText(a), "first draft and a second thought!");
  await a.context().close();
});

test("undo reverts only the local user's edit", async () => {
  const doc = uniqueDoc("undo");
  await postOp(quire.url, doc, { client: "seed", cseq: 1, base: 0, op: ["theirs:\nmine:\n"] });
  const a = await openEditor(browser, quire.url, doc, { name: "Undoer" });
  const b = await openEditor(browser, quire.url, doc, { name: "Other" });
  await goTo(a, { line: 1 });
  await a.keyboard.type(" my words 🙂");
  await converged(quire.url, doc, [a, b]);
  // b edits before a's words, so a's undo must move to find them.
  await goTo(b, { line: 0 });
  await b.keyboard.type(" their words 🎈");
  await converged(quire.url, doc, [a, b]);
  await a.keyboard.press("Control+z");
  let text = await converged(quire.url, doc, [a, b]);
  assert.equal(text, "theirs: their words 🎈\nmine:\n");
  await screenshot(a, "undo-own-edit");
  // a's redo brings a's words back; b's undo removes only b's.
  await a.click("#redo");
  text = await converged(quire.url, doc, [a, b]);
  assert.equal(text, "theirs: their words 🎈\nmine: my words 🙂\n");
  await b.keyboard.press("Control+z");
  text = await converged(quire.url, doc, [a, b]);
  assert.equal(text, "theirs:\nmine: my words 🙂\n");
  await a.context().close();
  await b.context().close();
});

test("a read token gives a read-only view that still follows the document", async () => {
  const secret = "e2e-secret-for-read-only";
  const server = await startQuire({ jwtSecret: secret });
  try {
    const doc = uniqueDoc("readonly");
    const writer = jwt(secret, { sub: "writer", docs: ["*"], role: "write" });
    const reader = jwt(secret, { sub: "reader", docs: ["*"], role: "read" });
    const w = await openEditor(browser, server.url, doc, { token: writer });
    const r = await openEditor(browser, server.url, doc, { token: reader });
    assert.equal(await r.isVisible("#read-only"), true);
    assert.equal(await r.getAttribute(".cm-content", "contenteditable"), "false");
    await r.locator(".cm-content").click();
    await r.keyboard.type("should not appear");
    await w.locator(".cm-content").click();
    await w.keyboard.type("written by the writer");
    await r.waitForFunction(() => window.quire.view.state.doc.toString() === "written by the writer");
    const text = await converged(server.url, doc, [w, r], { token: reader });
    assert.equal(text, "written by the writer");
    const ops = await (await fetch(`${server.url}/v1/docs/${doc}/ops?after=0&token=${writer}`)).json();
    assert.ok(ops.ops.length > 0);
    assert.ok(ops.ops.every((o) => o.user === "writer"), "only the writer changed the document");
    await screenshot(r, "read-only-view");
    await w.context().close();
    await r.context().close();
  } finally {
    await server.stop();
  }
});
