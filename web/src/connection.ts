/**
 * A live editor of one document over WebSocket: connects, joins with
 * `since` catch-up, reconnects with backoff, resends the op in flight,
 * retries after RATE_LIMITED / OVERLOADED, and tracks other editors'
 * presence. Works with the browser's WebSocket or any compatible one.
 */
import { ClientCore, type CoreEvent, type CoreOptions } from "./core.js";
import { cpLength, transformCursor, type Op } from "./ot.js";
import {
  randomClientId,
  type ClientMsg,
  type Cursor,
  type PresenceMeta,
  type ServerMsg,
} from "./protocol.js";

export type Status = "connecting" | "live" | "offline" | "closed" | "unauthorized";

/** Another editor's cursor, in code points of the local text. */
export interface RemotePresence {
  client: string;
  user: string;
  cursor: Cursor | null;
  meta: PresenceMeta;
}

/** Applied ops kept to move other editors' cursors from the version they were sent at. */
const RECENT_OPS = 256;

/** Minimal WebSocket surface used here (browser WebSocket and Node's `ws` fit). */
export interface SocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: unknown) => void) | null;
  onerror: ((ev: unknown) => void) | null;
}

export interface ConnectionOptions extends CoreOptions {
  /** Server base URL, `http(s)://host:port` or `ws(s)://host:port`. */
  url: string;
  doc: string;
  /** Stable for this editing session; random when absent. */
  clientId?: string;
  /** A JWT (SPEC §8), sent as `?token=`. */
  token?: string;
  /** WebSocket factory; the global `WebSocket` by default. */
  socket?: (url: string) => SocketLike;
  /** First reconnect delay (ms), doubled per failure up to `maxBackoffMs`. */
  minBackoffMs?: number;
  maxBackoffMs?: number;
  /** A ping goes out after this long without a message (ms). */
  pingMs?: number;
}

export interface ConnectionEvents {
  /** The core reported something (see {@link CoreEvent}). */
  core?: (ev: CoreEvent) => void;
  /** The local text changed under the user: `op` applies to the previous local text. */
  change?: (op: Op) => void;
  status?: (status: Status) => void;
  /** Another editor's presence changed (or left: `presence` null). */
  presence?: (client: string, presence: RemotePresence | null) => void;
}

interface StoredPresence extends RemotePresence {
  /** Version the cursor refers to; held until the local text reaches it. */
  seq: number;
  /** The cursor has been moved into the local text. */
  mapped: boolean;
}

export class Connection {
  readonly core: ClientCore;
  readonly doc: string;
  private readonly opts: ConnectionOptions;
  private readonly on: ConnectionEvents;
  private socket: SocketLike | null = null;
  private _status: Status = "offline";
  private backoff: number;
  private reconnectTimer: ReturnType<typeof setTimeout> | null = null;
  private retryTimer: ReturnType<typeof setTimeout> | null = null;
  private pingTimer: ReturnType<typeof setInterval> | null = null;
  private lastHeard = 0;
  private stopped = false;
  private readonly remotes = new Map<string, StoredPresence>();
  private myPresence: { cursor: Cursor | null; meta: PresenceMeta } | null = null;
  private presenceDirty = false;
  /** The last applied ops (oldest first), to move cursors sent at older versions. */
  private recent: { seq: number; prev: number; op: Op }[] = [];

  constructor(opts: ConnectionOptions, on: ConnectionEvents = {}) {
    this.opts = opts;
    this.on = on;
    this.doc = opts.doc;
    this.core = new ClientCore(opts.clientId ?? randomClientId(), opts);
    this.backoff = opts.minBackoffMs ?? 250;
  }

  get status(): Status {
    return this._status;
  }
  get text(): string {
    return this.core.text;
  }
  get version(): number {
    return this.core.version;
  }
  get clientId(): string {
    return this.core.clientId;
  }
  /** Other editors' presence, cursors in code points of {@link text}. */
  get presence(): RemotePresence[] {
    return [...this.remotes.values()].filter((p) => p.mapped).map(({ client, user, cursor, meta }) => ({ client, user, cursor, meta }));
  }

  /** Connects (and keeps reconnecting until {@link close}). */
  start(): void {
    this.stopped = false;
    this.connect();
  }

  /** Closes for good. */
  close(): void {
    this.stopped = true;
    this.clearTimers();
    this.socket?.close(1000, "closed");
    this.socket = null;
    this.core.disconnected();
    this.setStatus("closed");
  }

  /** Drops the connection now and reconnects after the usual backoff (tests, "go offline"). */
  drop(): void {
    this.socket?.close(4000, "dropped");
  }

  /** A local edit on {@link text}; returns what its deletes removed. */
  edit(op: Op): string[] {
    const deleted = this.core.edit(op);
    for (const p of this.remotes.values()) {
      if (p.mapped && p.cursor) p.cursor = moveCursor(p.cursor, op, "left");
    }
    this.pump();
    return deleted;
  }

  /** Our cursor (code points of {@link text}) and name/color; sent when the text is settled. */
  setPresence(cursor: Cursor | null, meta: PresenceMeta): void {
    this.myPresence = { cursor, meta };
    this.presenceDirty = true;
    this.sendPresence();
  }

  private setStatus(s: Status): void {
    if (this._status === s) return;
    this._status = s;
    this.on.status?.(s);
  }

  private wsUrl(): string {
    const base = this.opts.url.replace(/^http/, "ws").replace(/\/$/, "");
    let url = `${base}/v1/docs/${encodeURIComponent(this.doc)}/ws`;
    if (this.opts.token) url += `?token=${encodeURIComponent(this.opts.token)}`;
    return url;
  }

  private connect(): void {
    if (this.stopped) return;
    this.setStatus("connecting");
    const make = this.opts.socket ?? ((u: string) => new WebSocket(u) as unknown as SocketLike);
    let ws: SocketLike;
    try {
      ws = make(this.wsUrl());
    } catch {
      this.scheduleReconnect();
      return;
    }
    this.socket = ws;
    ws.onopen = () => {
      if (this.socket !== ws) return;
      this.lastHeard = Date.now();
      this.send(this.core.hello());
      this.startPing();
    };
    ws.onmessage = (e) => {
      if (this.socket !== ws) return;
      this.lastHeard = Date.now();
      let msg: ServerMsg;
      try {
        msg = JSON.parse(String(e.data)) as ServerMsg;
      } catch {
        return; // not ours to fix; the server never sends it
      }
      this.onServer(msg);
    };
    ws.onclose = () => this.lost(ws);
    ws.onerror = () => {
      // onclose follows.
    };
  }

  /** The connection is gone (closed, or silent too long): go offline and reconnect. */
  private lost(ws: SocketLike): void {
    if (this.socket !== ws) return;
    this.socket = null;
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    try {
      ws.close(4002, "lost");
    } catch {
      // already closed
    }
    this.core.disconnected();
    this.stopPing();
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = null;
    for (const client of [...this.remotes.keys()]) this.dropRemote(client);
    if (this.stopped || this._status === "unauthorized") return;
    this.setStatus("offline");
    this.scheduleReconnect();
  }

  private scheduleReconnect(): void {
    if (this.stopped || this.reconnectTimer) return;
    const max = this.opts.maxBackoffMs ?? 10_000;
    const delay = this.backoff * (0.5 + Math.random() / 2);
    this.backoff = Math.min(max, this.backoff * 2);
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = null;
      this.connect();
    }, delay);
  }

  /** Reconnect now (after a gap or desync): the next hello asks for what is missing. */
  private rejoin(): void {
    this.backoff = this.opts.minBackoffMs ?? 250;
    this.socket?.close(4001, "rejoin");
  }

  private startPing(): void {
    this.stopPing();
    const every = this.opts.pingMs ?? 15_000;
    this.pingTimer = setInterval(() => {
      // A dead peer may never finish a closing handshake: do not wait for it.
      if (Date.now() - this.lastHeard > 3 * every) {
        if (this.socket) this.lost(this.socket);
      } else if (Date.now() - this.lastHeard > every) this.send({ type: "ping" });
    }, every);
  }

  private stopPing(): void {
    if (this.pingTimer) clearInterval(this.pingTimer);
    this.pingTimer = null;
  }

  private clearTimers(): void {
    this.stopPing();
    if (this.reconnectTimer) clearTimeout(this.reconnectTimer);
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.reconnectTimer = null;
    this.retryTimer = null;
  }

  private send(msg: ClientMsg): void {
    const ws = this.socket;
    if (ws && ws.readyState === 1) ws.send(JSON.stringify(msg));
  }

  /** Sends what the core queued, then our presence if it is due. */
  private pump(): void {
    for (const m of this.core.takeOutbox()) this.send(m);
    this.sendPresence();
  }

  private sendPresence(): void {
    // A cursor is sent against a version, so only when the local text is that version.
    if (!this.presenceDirty || !this.myPresence || !this.core.live || !this.core.settled) return;
    const msg: ClientMsg = { type: "presence", seq: this.core.version, meta: this.myPresence.meta };
    if (this.myPresence.cursor) msg.cursor = this.myPresence.cursor;
    this.send(msg);
    this.presenceDirty = false;
  }

  private onServer(msg: ServerMsg): void {
    if (msg.type === "presence") return this.onPresence(msg);
    if (msg.type === "leave") return this.dropRemote(msg.client);
    if (msg.type === "error" && msg.code === "UNAUTHORIZED") {
      this.setStatus("unauthorized");
    }
    if (msg.type === "snapshot") this.recent = [];
    for (const ev of this.core.onMessage(msg)) {
      this.on.core?.(ev);
      switch (ev.type) {
        case "ready":
          this.backoff = this.opts.minBackoffMs ?? 250;
          this.setStatus("live");
          // Others learn where we are (a joiner has seen no presence yet).
          if (this.myPresence) this.presenceDirty = true;
          break;
        case "change":
          for (const p of this.remotes.values()) {
            if (p.mapped && p.cursor) p.cursor = moveCursor(p.cursor, ev.op, "left");
          }
          if (this.myPresence?.cursor) this.myPresence.cursor = moveCursor(this.myPresence.cursor, ev.op, "left");
          this.on.change?.(ev.op);
          break;
        case "applied":
          if (msg.type === "applied") {
            this.recent.push({ seq: msg.seq, prev: msg.prev, op: msg.op });
            if (this.recent.length > RECENT_OPS) this.recent.shift();
          }
          break;
        case "gap":
        case "desync":
          this.rejoin();
          break;
        case "error":
          if ((ev.code === "RATE_LIMITED" || ev.code === "OVERLOADED") && ev.cseq !== undefined) {
            const wait = ev.retryAfterMs ?? 1000;
            if (this.retryTimer) clearTimeout(this.retryTimer);
            this.retryTimer = setTimeout(() => {
              this.retryTimer = null;
              this.core.resend();
              this.pump();
            }, wait);
          }
          break;
      }
    }
    // Cursors held for this version are moved in once the text has it.
    this.mapHeldPresence();
    this.pump();
  }

  private onPresence(msg: Extract<ServerMsg, { type: "presence" }>): void {
    if (msg.client === this.core.clientId) return;
    const p: StoredPresence = {
      client: msg.client,
      user: msg.user,
      cursor: msg.cursor ?? null,
      meta: msg.meta ?? {},
      seq: msg.seq,
      mapped: false,
    };
    this.remotes.set(msg.client, p);
    this.mapHeldPresence();
  }

  /**
   * Moves cursors sent at a version we have reached into the local text:
   * through the applied ops since that version, then our pending edits.
   */
  private mapHeldPresence(): void {
    const pending = this.core.pending;
    const len = cpLength(this.core.text);
    for (const p of this.remotes.values()) {
      if (p.mapped || p.seq > this.core.version) continue;
      if (p.cursor) {
        let c = p.cursor;
        let exact = p.seq === this.core.version;
        if (!exact) {
          const i = this.recent.findIndex((r) => r.seq > p.seq);
          if (i >= 0 && (this.recent[i] as { prev: number }).prev <= p.seq) {
            for (const r of this.recent.slice(i)) c = moveCursor(c, r.op, "left");
            exact = true;
          }
        }
        // Older than the ops we keep: the nearest position still in the text.
        if (exact && pending) c = moveCursor(c, pending, "left");
        p.cursor = { anchor: Math.min(c.anchor, len), head: Math.min(c.head, len) };
      }
      p.mapped = true;
      this.on.presence?.(p.client, { client: p.client, user: p.user, cursor: p.cursor, meta: p.meta });
    }
  }

  private dropRemote(client: string): void {
    if (this.remotes.delete(client)) this.on.presence?.(client, null);
  }
}

function moveCursor(c: Cursor, op: Op, side: "left" | "right"): Cursor {
  return { anchor: transformCursor(c.anchor, op, side), head: transformCursor(c.head, op, side) };
}
