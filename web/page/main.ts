/**
 * The browser editor served by `quire` at `/` and `/d/{doc}`: a CodeMirror 6
 * editor bound to a Quire document, with connection status, other editors'
 * cursors, a history slider (time travel) and per-user undo.
 */
import { Annotation, EditorState, Transaction } from "@codemirror/state";
import {
  EditorView,
  drawSelection,
  highlightActiveLine,
  highlightSpecialChars,
  keymap,
  lineNumbers,
} from "@codemirror/view";
import { defaultKeymap, indentWithTab } from "@codemirror/commands";
import { Connection, type Status } from "../src/connection.js";
import { UndoStack } from "../src/undo.js";
import { advance, utf16ToCodePoints, type Op } from "../src/ot.js";
import { isValidDocId, randomClientId, type AppliedMsg } from "../src/protocol.js";
import { changesToOp, opToChanges } from "./binding.js";
import { cursorTheme, remoteCursors, setRemoteCursors, type RemoteCursor } from "./cursors.js";

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;
const params = new URLSearchParams(location.search);
const token = params.get("token") ?? undefined;
const tokenQuery = token ? `?token=${encodeURIComponent(token)}` : "";

/** The JWT's claims (not verified here: the server does that). */
function claims(t: string | undefined): { sub?: string; role?: string } {
  if (!t) return {};
  try {
    const part = (t.split(".")[1] ?? "").replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(part + "=".repeat((4 - (part.length % 4)) % 4)));
  } catch {
    return {};
  }
}

function randomDocId(): string {
  const words = ["amber", "brisk", "cedar", "delta", "ember", "fjord", "glade", "harbor", "iris", "juniper"];
  const w = words[Math.floor(Math.random() * words.length)];
  return `${w}-${randomClientId("d").slice(2, 10)}`;
}

function colorFor(id: string): string {
  let h = 0;
  for (const ch of id) h = (h * 31 + (ch.codePointAt(0) as number)) >>> 0;
  return `hsl(${h % 360}, 70%, 42%)`;
}

function showPicker(): void {
  $("picker").hidden = false;
  const input = $<HTMLInputElement>("doc-id");
  input.value = randomDocId();
  $("picker-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const id = input.value.trim();
    if (!isValidDocId(id)) {
      $("picker-error").textContent = "A document id is 1–128 characters of A–Z, a–z, 0–9, '.', '_' and '-'.";
      return;
    }
    location.assign(`/d/${encodeURIComponent(id)}${tokenQuery}`);
  });
  $("new-doc").addEventListener("click", () => {
    location.assign(`/d/${randomDocId()}${tokenQuery}`);
  });
}

const remote = Annotation.define<boolean>();
const undoKind = Annotation.define<"undo" | "redo">();

function showEditor(doc: string): void {
  $("editor-page").hidden = false;
  document.title = `${doc} · Quire`;
  $("doc-name").textContent = doc;
  const { sub, role } = claims(token);
  const readOnly = role === "read";
  const nameInput = $<HTMLInputElement>("user-name");
  nameInput.value = localStorage.getItem("quire.name") ?? sub ?? `Guest ${Math.floor(100 + Math.random() * 900)}`;

  const undo = new UndoStack();
  let view: EditorView;
  const conn = new Connection(
    { url: location.origin, doc, ...(token ? { token } : {}) },
    {
      status: (s) => showStatus(s),
      change: (op) => {
        view.dispatch({
          changes: opToChanges(op, view.state.doc.toString()),
          annotations: [remote.of(true), Transaction.addToHistory.of(false)],
        });
        undo.recordRemote(op);
        refreshButtons();
      },
      presence: () => drawCursors(),
      core: (ev) => {
        if (ev.type === "applied" || ev.type === "ready") $("version").textContent = `v${ev.seq}`;
        if (ev.type === "error") showMessage(`${ev.code}: ${ev.message}`);
      },
    },
  );
  const color = colorFor(conn.clientId);
  $("user-color").style.backgroundColor = color;

  function showStatus(s: Status): void {
    const el = $("status");
    el.dataset.status = s;
    el.textContent = { connecting: "connecting…", live: "live", offline: "offline — edits are kept", closed: "closed", unauthorized: "not authorised" }[s];
  }
  function showMessage(text: string): void {
    const el = $("message");
    el.textContent = text;
    el.hidden = false;
    setTimeout(() => (el.hidden = true), 6000);
  }
  function refreshButtons(): void {
    $<HTMLButtonElement>("undo").disabled = readOnly || !undo.canUndo;
    $<HTMLButtonElement>("redo").disabled = readOnly || !undo.canRedo;
  }

  function drawCursors(): void {
    const text = view.state.doc.toString();
    const cursors: RemoteCursor[] = [];
    for (const p of conn.presence) {
      if (!p.cursor) continue;
      cursors.push({
        client: p.client,
        name: String(p.meta.name ?? p.user),
        color: typeof p.meta.color === "string" ? p.meta.color : colorFor(p.client),
        anchor: advance(text, 0, p.cursor.anchor),
        head: advance(text, 0, p.cursor.head),
      });
    }
    view.dispatch({ effects: setRemoteCursors.of(cursors) });
    $("people").textContent = conn.presence.map((p) => String(p.meta.name ?? p.user)).join(", ");
  }

  let presenceTimer: ReturnType<typeof setTimeout> | null = null;
  function sendPresence(): void {
    if (presenceTimer) return;
    presenceTimer = setTimeout(() => {
      presenceTimer = null;
      const text = view.state.doc.toString();
      const sel = view.state.selection.main;
      conn.setPresence(
        { anchor: utf16ToCodePoints(text, sel.anchor), head: utf16ToCodePoints(text, sel.head) },
        { name: nameInput.value.slice(0, 64), color },
      );
    }, 50);
  }

  function step(kind: "undo" | "redo"): boolean {
    if (readOnly) return false;
    const op = kind === "undo" ? undo.undo() : undo.redo();
    if (!op) return false;
    view.dispatch({
      changes: opToChanges(op, view.state.doc.toString()),
      annotations: undoKind.of(kind),
      userEvent: kind,
      scrollIntoView: true,
    });
    return true;
  }

  view = new EditorView({
    parent: $("editor"),
    state: EditorState.create({
      doc: "",
      extensions: [
        lineNumbers(),
        highlightSpecialChars(),
        drawSelection(),
        highlightActiveLine(),
        EditorView.lineWrapping,
        keymap.of([
          { key: "Mod-z", run: () => step("undo"), preventDefault: true },
          { key: "Mod-y", run: () => step("redo"), preventDefault: true },
          { key: "Mod-Shift-z", run: () => step("redo"), preventDefault: true },
          ...defaultKeymap,
          indentWithTab,
        ]),
        // Lines end at "\n" only: a "\r" stays a character, as it is for
        // the server and every other client (the default would turn "\r\n"
        // into one separator and shift every position after it).
        EditorState.lineSeparator.of("\n"),
        remoteCursors,
        cursorTheme,
        EditorState.readOnly.of(readOnly),
        EditorView.editable.of(!readOnly),
        EditorView.updateListener.of((u) => {
          for (const tr of u.transactions) {
            if (!tr.docChanged || tr.annotation(remote)) continue;
            const op = changesToOp(tr.changes, tr.startState.doc);
            const deleted = conn.edit(op);
            const kind = tr.annotation(undoKind);
            if (kind) undo.applied(op, deleted, kind, Date.now());
            else undo.recordEdit(op, deleted, Date.now());
          }
          if (u.docChanged) refreshButtons();
          if (u.selectionSet || u.focusChanged || (u.docChanged && !u.transactions.every((t) => t.annotation(remote)))) {
            sendPresence();
          }
        }),
      ],
    }),
  });

  $("undo").addEventListener("click", () => step("undo"));
  $("redo").addEventListener("click", () => step("redo"));
  nameInput.addEventListener("change", () => {
    localStorage.setItem("quire.name", nameInput.value);
    sendPresence();
  });
  if (readOnly) $("read-only").hidden = false;
  refreshButtons();
  // Editors who join later learn where we are.
  setInterval(sendPresence, 10_000);
  sendPresence();
  // Edits not yet on the server live only in this tab.
  addEventListener("beforeunload", (e) => {
    if (!conn.core.settled) e.preventDefault();
  });
  conn.start();
  setupHistory(doc);
  (window as unknown as { quire: unknown }).quire = { view, conn, undo, step };
}

/** The history slider: the document at any past version, and who made each change. */
function setupHistory(doc: string): void {
  const panel = $("history");
  const slider = $<HTMLInputElement>("history-slider");
  let ops: AppliedMsg[] = [];
  let shown = -1;
  let timer: ReturnType<typeof setTimeout> | null = null;

  async function load(): Promise<void> {
    ops = [];
    let after = 0;
    // Oldest first, page by page (at most 100,000 changes on the slider).
    for (let page = 0; page < 50; page++) {
      const r = await fetch(`/v1/docs/${encodeURIComponent(doc)}/ops${tokenQuery}${tokenQuery ? "&" : "?"}after=${after}&limit=2000`);
      if (!r.ok) throw new Error(`history: HTTP ${r.status}`);
      const body = (await r.json()) as { ops: AppliedMsg[]; next: number | null };
      ops.push(...body.ops);
      if (body.next === null || body.ops.length === 0) break;
      after = body.next;
    }
    slider.max = String(ops.length);
    slider.value = String(ops.length);
    const counts = new Map<string, number>();
    for (const o of ops) counts.set(o.user, (counts.get(o.user) ?? 0) + 1);
    $("history-authors").textContent = [...counts].map(([u, n]) => `${u} (${n})`).join(", ");
    await show(ops.length);
  }

  async function show(i: number): Promise<void> {
    shown = i;
    const info = $("history-info");
    const pre = $("history-text");
    if (i === 0) {
      info.textContent = "Version 0: the empty document";
      pre.replaceChildren();
      return;
    }
    const op = ops[i - 1] as AppliedMsg;
    const r = await fetch(`/v1/docs/${encodeURIComponent(doc)}${tokenQuery}${tokenQuery ? "&" : "?"}at=${op.seq}`);
    if (!r.ok) throw new Error(`version ${op.seq}: HTTP ${r.status}`);
    const body = (await r.json()) as { seq: number; text: string };
    if (shown !== i) return; // a later choice won
    info.textContent = `Version ${op.seq} · change ${i} of ${ops.length} · by ${op.user} · ${new Date(op.ts).toLocaleString()}`;
    info.dataset.seq = String(op.seq);
    pre.replaceChildren(...highlightInserts(body.text, op.op, `${op.user}, ${new Date(op.ts).toLocaleString()}`));
  }

  slider.addEventListener("input", () => {
    if (timer) clearTimeout(timer);
    timer = setTimeout(() => void show(Number(slider.value)).catch((e) => ($("history-info").textContent = String(e))), 60);
  });
  $("history-toggle").addEventListener("click", () => {
    panel.hidden = !panel.hidden;
    if (!panel.hidden) void load().catch((e) => ($("history-info").textContent = String(e)));
  });
  $("history-close").addEventListener("click", () => (panel.hidden = true));
}

/** The text with what `op` inserted marked (op applied to reach `text`). */
function highlightInserts(text: string, op: Op, title: string): Node[] {
  const nodes: Node[] = [];
  let i = 0;
  let plainFrom = 0;
  for (const c of op) {
    if (typeof c === "number") {
      if (c > 0) i = advance(text, i, c);
      continue;
    }
    const end = advance(text, i, [...c].length);
    nodes.push(document.createTextNode(text.slice(plainFrom, i)));
    const mark = document.createElement("mark");
    mark.textContent = text.slice(i, end);
    mark.title = title;
    nodes.push(mark);
    i = end;
    plainFrom = end;
  }
  nodes.push(document.createTextNode(text.slice(plainFrom)));
  return nodes;
}

const match = /^\/d\/([^/]+)\/?$/.exec(location.pathname);
if (match) showEditor(decodeURIComponent(match[1] as string));
else showPicker();
