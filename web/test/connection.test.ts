import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { Connection, type SocketLike, type Status } from "../src/connection";
import type { ClientMsg, ServerMsg } from "../src/protocol";

/** A socket the test drives: it records what the client sends. */
class FakeSocket implements SocketLike {
  readyState = 0;
  sent: ClientMsg[] = [];
  closed: number | null = null;
  onopen: ((ev: unknown) => void) | null = null;
  onmessage: ((ev: { data: unknown }) => void) | null = null;
  onclose: ((ev: unknown) => void) | null = null;
  onerror: ((ev: unknown) => void) | null = null;
  constructor(readonly url: string) {}
  send(data: string) {
    this.sent.push(JSON.parse(data));
  }
  close(code?: number) {
    this.closed = code ?? 1000;
    this.readyState = 3;
  }
  open() {
    this.readyState = 1;
    this.onopen?.({});
  }
  receive(msg: ServerMsg) {
    this.onmessage?.({ data: JSON.stringify(msg) });
  }
  /** The server or network ended the connection. */
  drop() {
    this.readyState = 3;
    this.onclose?.({});
  }
}

function setup() {
  const sockets: FakeSocket[] = [];
  const statuses: Status[] = [];
  const presence: [string, unknown][] = [];
  const conn = new Connection(
    {
      url: "http://quire.test",
      doc: "notes",
      clientId: "me",
      token: "t.o.k",
      socket: (url) => {
        const s = new FakeSocket(url);
        sockets.push(s);
        return s;
      },
      minBackoffMs: 100,
      maxBackoffMs: 1000,
      pingMs: 1000,
    },
    { status: (s) => statuses.push(s), presence: (c, p) => presence.push([c, p]) },
  );
  const last = () => sockets[sockets.length - 1] as FakeSocket;
  return { conn, sockets, statuses, presence, last };
}

const applied = (seq: number, prev: number, client: string, cseq: number, op: (number | string)[]): ServerMsg => ({
  type: "applied", seq, prev, client, cseq, user: "u", ts: 0, op,
});

beforeEach(() => {
  vi.useFakeTimers();
  vi.spyOn(Math, "random").mockReturnValue(0.99);
});
afterEach(() => {
  vi.useRealTimers();
  vi.restoreAllMocks();
});

describe("Connection", () => {
  it("joins, reconnects with backoff after a drop and resends the op in flight unchanged", () => {
    const { conn, sockets, statuses, last } = setup();
    conn.start();
    expect(last().url).toBe("ws://quire.test/v1/docs/notes/ws?token=t.o.k");
    last().open();
    expect(last().sent).toEqual([{ type: "hello", client: "me", since: 0 }]);
    last().receive({ type: "snapshot", seq: 4, text: "ab" });
    last().receive({ type: "ready", seq: 4 });
    expect(conn.status).toBe("live");
    conn.edit([2, "c"]);
    const op = { type: "op", client: "me", cseq: 1, base: 4, op: [2, "c"] };
    expect(last().sent[1]).toEqual(op);
    last().drop();
    expect(conn.status).toBe("offline");
    conn.edit([3, "d"]); // typed offline: kept
    expect(sockets.length).toBe(1);
    vi.advanceTimersByTime(99);
    expect(sockets.length).toBe(2); // backoff ~100 ms
    last().drop(); // the server is still away: the next wait doubles
    vi.advanceTimersByTime(150);
    expect(sockets.length).toBe(2);
    vi.advanceTimersByTime(100);
    expect(sockets.length).toBe(3);
    last().open();
    expect(last().sent).toEqual([{ type: "hello", client: "me", since: 4 }]);
    last().receive({ type: "ready", seq: 4 });
    expect(last().sent[1]).toEqual(op);
    last().receive(applied(5, 4, "me", 1, [2, "c"]));
    expect(last().sent[2]).toEqual({ type: "op", client: "me", cseq: 2, base: 5, op: [3, "d"] });
    expect(conn.text).toBe("abcd");
    expect(statuses).toEqual(["connecting", "live", "offline", "connecting", "offline", "connecting", "live"]);
  });

  it("resends after RATE_LIMITED, but not after the connection it was for is gone", () => {
    const { conn, last } = setup();
    conn.start();
    last().open();
    last().receive({ type: "ready", seq: 0 });
    conn.edit(["x"]);
    last().receive({ type: "error", code: "RATE_LIMITED", message: "slow down", client: "me", cseq: 1, retryAfterMs: 300 });
    vi.advanceTimersByTime(300);
    expect(last().sent.filter((m) => m.type === "op").length).toBe(2);
    last().receive({ type: "error", code: "RATE_LIMITED", message: "slow down", client: "me", cseq: 1, retryAfterMs: 300 });
    last().drop();
    vi.advanceTimersByTime(100);
    last().open();
    last().receive({ type: "ready", seq: 0 });
    expect(last().sent.filter((m) => m.type === "op").length).toBe(1); // the resend after ready
    vi.advanceTimersByTime(1000);
    expect(last().sent.filter((m) => m.type === "op").length).toBe(1); // no stale retry
  });

  it("gives up on a silent connection without waiting for a closing handshake", () => {
    const { conn, sockets, last } = setup();
    conn.start();
    last().open();
    last().receive({ type: "ready", seq: 0 });
    vi.advanceTimersByTime(2000);
    expect(last().sent.at(-1)).toEqual({ type: "ping" });
    expect(conn.status).toBe("live");
    vi.advanceTimersByTime(2000);
    expect(conn.status).toBe("offline");
    expect(sockets[0]?.closed).not.toBeNull();
    vi.advanceTimersByTime(100);
    expect(sockets.length).toBe(2);
  });

  it("moves other editors' cursors into the local text: pending edits, held and older versions", () => {
    const { conn, presence, last } = setup();
    conn.start();
    last().open();
    last().receive({ type: "snapshot", seq: 1, text: "hello world" });
    last().receive({ type: "ready", seq: 1 });
    // Someone's cursor at our version; our pending insert before it moves it.
    conn.edit(["> "]);
    last().receive({ type: "presence", client: "a", user: "ann", seq: 1, cursor: { anchor: 6, head: 6 }, meta: { name: "Ann" } });
    expect(conn.presence.find((p) => p.client === "a")?.cursor).toEqual({ anchor: 8, head: 8 });
    // A cursor sent at a version we have not reached waits for it, then is
    // moved in once: after "abc" and before our pending "> " (moved twice
    // through "abc" it would be at 6).
    last().receive({ type: "presence", client: "b", user: "bob", seq: 3, cursor: { anchor: 3, head: 3 } });
    expect(conn.presence.find((p) => p.client === "b")).toBeUndefined();
    last().receive(applied(3, 1, "b", 1, ["abc"]));
    expect(conn.presence.find((p) => p.client === "b")?.cursor).toEqual({ anchor: 3, head: 3 });
    expect(conn.text).toBe("abc> hello world");
    // A cursor sent one version back goes through the op since.
    last().receive(applied(7, 3, "me", 1, [3, "> "]));
    last().receive(applied(9, 7, "x", 1, ["XY"]));
    last().receive({ type: "presence", client: "c", user: "cy", seq: 7, cursor: { anchor: 0, head: 16 } });
    expect(conn.presence.find((p) => p.client === "c")?.cursor).toEqual({ anchor: 0, head: 18 });
    last().receive({ type: "leave", client: "c" });
    expect(conn.presence.map((p) => p.client).sort()).toEqual(["a", "b"]);
    expect(presence.at(-1)).toEqual(["c", null]);
  });

  it("sends its own cursor only when settled, moved through what arrived meanwhile", () => {
    const { conn, last } = setup();
    conn.start();
    last().open();
    last().receive({ type: "snapshot", seq: 1, text: "abc" });
    last().receive({ type: "ready", seq: 1 });
    conn.edit([3, "d"]);
    conn.setPresence({ anchor: 4, head: 4 }, { name: "me" });
    expect(last().sent.some((m) => m.type === "presence")).toBe(false);
    last().receive(applied(2, 1, "x", 1, ["12"]));
    last().receive(applied(3, 2, "me", 1, [5, "d"]));
    expect(last().sent.filter((m) => m.type === "presence")).toEqual([
      { type: "presence", seq: 3, cursor: { anchor: 6, head: 6 }, meta: { name: "me" } },
    ]);
  });

  it("stops on UNAUTHORIZED instead of reconnecting forever", () => {
    const { conn, sockets, last } = setup();
    conn.start();
    last().open();
    last().receive({ type: "error", code: "UNAUTHORIZED", message: "bad token" });
    last().drop();
    vi.advanceTimersByTime(5000);
    expect(conn.status).toBe("unauthorized");
    expect(sockets.length).toBe(1);
  });
});
