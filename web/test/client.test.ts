import { describe, expect, it } from "vitest";
import { rng } from "./rng";
import { ClientCore, splitOp } from "../src/core";
import { diff, threeWay } from "../src/diff";
import { apply, cpLength, type Op } from "../src/ot";
import type { ServerMsg } from "../src/protocol";
import { ModelServer, type ModelConn } from "./model";


describe("diff and three-way merge", () => {
  it("diff turns a into b", () => {
    const r = rng(7);
    const alpha = ["a", "b", "😀", "x", "\n"];
    const word = (n: number) => Array.from({ length: n }, () => alpha[Math.floor(r() * alpha.length)]).join("");
    for (let i = 0; i < 2000; i++) {
      const a = word(Math.floor(r() * 15));
      const b = word(Math.floor(r() * 15));
      expect(apply(a, diff(a, b)), JSON.stringify({ a, b })).toBe(b);
    }
  });
  it("a small edit gives a small op", () => {
    expect(diff("hello world", "hello brave world")).toEqual([6, "brave "]);
    expect(diff("abcdef", "abXdeYf")).toEqual([2, "X", -1, 2, "Y"]);
  });
  it("keeps both sides' edits in place", () => {
    const op = threeWay("hello world", "hello brave world", "HELLO world!");
    expect(apply("HELLO world!", op)).toBe("HELLO brave world!");
    expect(apply("def", threeWay("abc def", "abc XY def", "def"))).toBe("XY def");
  });
});

describe("splitOp", () => {
  it("splits a large insert into parts that compose back", () => {
    const text = "abc";
    const op: Op = [1, "😀".repeat(100), -1];
    const parts = splitOp(op, text, 64);
    expect(parts).not.toBeNull();
    const [first, rest] = parts as [Op, Op];
    expect(apply(apply(text, first), rest)).toBe(apply(text, op));
    expect(JSON.stringify(first).length).toBeLessThan(64 + 20);
    expect(splitOp([1, "x"], text, 64)).toBeNull();
  });
});

describe("ClientCore", () => {
  const applied = (seq: number, prev: number, client: string, cseq: number, op: Op): ServerMsg => ({
    type: "applied", seq, prev, client, cseq, user: "u", ts: 0, op,
  });

  it("keeps one op in flight and composes the rest", () => {
    const c = new ClientCore("me");
    c.onMessage({ type: "snapshot", seq: 10, text: "hello" });
    c.onMessage({ type: "ready", seq: 10 });
    c.edit([5, "!"]);
    c.edit([6, "?"]);
    c.edit(["> "]);
    const out = c.takeOutbox();
    expect(out).toEqual([{ type: "op", client: "me", cseq: 1, base: 10, op: [5, "!"] }]);
    expect(c.text).toBe("> hello!?");
    // A remote op arrives first; then our ack; the buffer goes out rebased.
    // A remote insert at our pending insert's position was sequenced
    // first, so it goes on the left.
    const ev = c.onMessage(applied(12, 10, "other", 1, ["X"]));
    expect(ev).toContainEqual({ type: "change", op: ["X"] });
    expect(c.text).toBe("X> hello!?");
    c.onMessage(applied(15, 12, "me", 1, [6, "!"]));
    expect(c.takeOutbox()).toEqual([{ type: "op", client: "me", cseq: 2, base: 15, op: [1, "> ", 6, "?"] }]);
    c.onMessage(applied(16, 15, "me", 2, [1, "> ", 6, "?"]));
    expect(c.settled).toBe(true);
    expect(c.serverText).toBe(c.text);
  });

  it("resends the op in flight unchanged after a reconnect", () => {
    const c = new ClientCore("me");
    c.onMessage({ type: "snapshot", seq: 3, text: "ab" });
    c.onMessage({ type: "ready", seq: 3 });
    c.edit([2, "c"]);
    const sent = c.takeOutbox();
    c.disconnected();
    expect(c.hello()).toEqual({ type: "hello", client: "me", since: 3 });
    c.onMessage({ type: "ready", seq: 3 });
    expect(c.takeOutbox()).toEqual(sent);
    // Already applied: the duplicate's ack settles it.
    c.onMessage(applied(4, 3, "me", 1, [2, "c"]));
    expect(c.settled).toBe(true);
  });

  it("STALE_BASE resubmits the rebased edits with a new cseq", () => {
    const c = new ClientCore("me");
    c.onMessage({ type: "snapshot", seq: 10, text: "abc" });
    c.onMessage({ type: "ready", seq: 10 });
    c.edit([3, "d"]);
    c.takeOutbox();
    c.onMessage(applied(20, 10, "x", 1, ["Z"]));
    const ev = c.onMessage({ type: "error", code: "STALE_BASE", message: "old", client: "me", cseq: 1 });
    expect(ev).toContainEqual({ type: "resubmitted", staleCseq: 1 });
    expect(c.takeOutbox()).toEqual([{ type: "op", client: "me", cseq: 2, base: 20, op: [4, "d"] }]);
  });

  it("a snapshot under pending edits merges them, dropping nothing", () => {
    const c = new ClientCore("me");
    c.onMessage({ type: "snapshot", seq: 1, text: "hello world" });
    c.onMessage({ type: "ready", seq: 1 });
    c.edit([6, "brave "]);
    c.takeOutbox();
    c.edit([0, "¡"]);
    c.disconnected();
    c.hello();
    c.onMessage({ type: "snapshot", seq: 9, text: "HELLO world, friend" });
    c.onMessage({ type: "ready", seq: 9 });
    // Our in-flight op's fate is unknown: it is resent first.
    expect(c.takeOutbox()).toEqual([{ type: "op", client: "me", cseq: 1, base: 1, op: [6, "brave "] }]);
    c.onMessage({ type: "error", code: "STALE_BASE", message: "old", client: "me", cseq: 1 });
    // Their replacement of "hello" wins the tie at position 0.
    expect(c.text).toBe("HELLO¡ brave world, friend");
    const out = c.takeOutbox();
    expect(out.length).toBe(1);
    expect(apply("HELLO world, friend", (out[0] as { op: Op }).op)).toBe(c.text);
  });

  it("reports a gap and a desync instead of applying a wrong op", () => {
    const c = new ClientCore("me");
    c.onMessage({ type: "snapshot", seq: 1, text: "ab" });
    c.onMessage({ type: "ready", seq: 1 });
    expect(c.onMessage(applied(5, 3, "x", 1, ["Q"]))[0]).toMatchObject({ type: "gap" });
    expect(c.onMessage(applied(5, 1, "x", 1, [9, "Q"]))[0]).toMatchObject({ type: "desync" });
    expect(c.hello()).toEqual({ type: "hello", client: "me" });
  });
});

/**
 * Seeded simulation: clients edit at random, the network delivers each
 * connection's messages in order but interleaves connections at random,
 * connections drop and rejoin, the server window is short so STALE_BASE and
 * snapshot joins happen. At the end every client must hold the server text;
 * in insert-only runs every token typed must be in it.
 */
function simulate(seed: number, insertOnly: boolean) {
  const r = rng(seed);
  const server = new ModelServer(6);
  interface Sim { core: ClientCore; conn: ModelConn | null; tokens: string[]; n: number }
  const clients: Sim[] = Array.from({ length: 4 }, (_, i) => ({
    core: new ClientCore(`c${i}`), conn: null, tokens: [], n: 0,
  }));
  const stats = { snapshotsUnderEdits: 0, resubmitted: 0 };
  const connect = (s: Sim) => {
    s.conn = server.connect();
    s.conn.toServer.push(s.core.hello());
  };
  const pump = (s: Sim) => {
    if (s.conn) for (const m of s.core.takeOutbox()) s.conn.toServer.push(m);
  };
  const deliverClient = (s: Sim) => {
    const m = s.conn?.toClient.shift();
    if (!m) return;
    if (m.type === "snapshot" && !s.core.settled) stats.snapshotsUnderEdits++;
    for (const ev of s.core.onMessage(m)) {
      if (ev.type === "resubmitted") stats.resubmitted++;
      if (process.env.SIM_DEBUG) console.log(s.core.clientId, JSON.stringify(m), JSON.stringify(ev));
      if (ev.type === "gap" || ev.type === "desync") {
        server.disconnect(s.conn as ModelConn);
        s.core.disconnected();
        connect(s);
        return;
      }
    }
    pump(s);
  };
  let typed = 0;
  for (const s of clients) connect(s);
  const steps = 1500;
  for (let step = 0; step < steps + 5000; step++) {
    const s = clients[Math.floor(r() * clients.length)] as Sim;
    const k = r();
    const editing = step < steps;
    // Edits happen offline and during merges too, not only when live.
    if (editing && k < 0.3) {
      const len = cpLength(s.core.text);
      const pos = Math.floor(r() * (len + 1));
      if (insertOnly || r() < 0.7 || len === 0) {
        // One astral code point per insert, unique over the run: it can be
        // neither split nor confused with another (and exercises UTF-16).
        const tok = String.fromCodePoint(0x10000 + typed++);
        s.tokens.push(tok);
        s.core.edit([pos, tok]);
      } else {
        const del = 1 + Math.floor(r() * Math.min(4, len - pos || 1));
        if (pos + del <= len) s.core.edit([pos, -del]);
      }
      pump(s);
    } else if (k < 0.55 && s.conn && s.conn.toServer.length) {
      server.handle(s.conn, s.conn.toServer.shift() as never);
    } else if (k < 0.85 && s.conn) {
      deliverClient(s);
    } else if (editing && k < 0.88 && s.conn) {
      server.disconnect(s.conn);
      s.core.disconnected();
      s.conn = null;
    } else if (!s.conn) {
      connect(s);
    } else if (!editing) {
      // Drain: deliver everything.
      while (s.conn && s.conn.toServer.length) server.handle(s.conn, s.conn.toServer.shift() as never);
      while (s.conn && s.conn.toClient.length) deliverClient(s);
    }
    if (!editing && clients.every((c) => c.conn && c.core.settled && c.core.live && !c.conn.toClient.length && !c.conn.toServer.length)) break;
  }
  server.check();
  for (const s of clients) {
    const ctx = `seed ${seed} client ${s.core.clientId}`;
    expect(s.core.settled, ctx).toBe(true);
    expect(s.core.text, ctx).toBe(server.text);
    expect(s.core.serverText, ctx).toBe(server.text);
    expect(s.core.version, ctx).toBe(server.version);
    if (insertOnly) {
      for (const t of s.tokens) expect(server.text.includes(t), `${ctx}: lost ${t}`).toBe(true);
    }
  }
  if (insertOnly) {
    // Nothing lost, nothing applied twice.
    expect(cpLength(server.text), `seed ${seed}`).toBe(typed);
  }
  return stats;
}

describe("seeded simulation against a model server", () => {
  it("insert-only runs keep every token typed, once", () => {
    const total = { snapshotsUnderEdits: 0, resubmitted: 0 };
    for (let seed = 1; seed <= 40; seed++) {
      const s = simulate(seed, true);
      total.snapshotsUnderEdits += s.snapshotsUnderEdits;
      total.resubmitted += s.resubmitted;
    }
    // The runs went through both recovery paths, not only the easy one.
    expect(total.snapshotsUnderEdits).toBeGreaterThan(10);
    expect(total.resubmitted).toBeGreaterThan(10);
  });
  it("mixed runs converge", () => {
    for (let seed = 100; seed < 140; seed++) simulate(seed, false);
  });
});

