/**
 * SPEC §4 client discipline, sans I/O: the TypeScript twin of the Rust
 * client's `ClientCore`. Feed it server messages and local edits; send what
 * it puts in its outbox. At most one op is in flight; edits made meanwhile
 * are composed into one buffered op, sent after the ack. Remote ops rebase
 * the in-flight and buffered edits. Nothing the user typed is dropped: a
 * fresh snapshot under pending edits is met with a three-way merge.
 */
import { diff, threeWay } from "./diff.js";
import {
  apply,
  applyWithDeleted,
  compose,
  isNoop,
  normalize,
  transform,
  type Op,
} from "./ot.js";
import type { ClientMsg, ErrorCode, ServerMsg } from "./protocol.js";

/** What happened, for the application. */
export type CoreEvent =
  /** Caught up and live at this version. */
  | { type: "ready"; seq: number }
  /** An applied op arrived (`own`: it acknowledges our in-flight op). */
  | { type: "applied"; seq: number; prev: number; own: boolean; client: string; user: string; ts: number }
  /** Our op `cseq` is known applied at `seq`. */
  | { type: "acked"; cseq: number; seq: number }
  /**
   * The local text changed under the user (a remote op, a snapshot, a
   * merge): `op` applies to the local text as it was before.
   */
  | { type: "change"; op: Op }
  | { type: "error"; code: ErrorCode; message: string; cseq?: number; retryAfterMs?: number }
  /** Our copy of the text was wrong: re-join for a snapshot (pending edits are merged onto it). */
  | { type: "desync"; reason: string }
  /** The applied stream skipped a version: reconnect with `since`. */
  | { type: "gap"; expectedPrev: number; gotPrev: number }
  /** The in-flight op was refused with STALE_BASE and sent again, rebased, with a new cseq. */
  | { type: "resubmitted"; staleCseq: number };

interface Inflight {
  cseq: number;
  /** The base it was sent with (kept for resends). */
  base: number;
  /** The op as sent: resends are identical. */
  sent: Op;
  /** The same op, rebased onto the server text as remote ops arrive. */
  op: Op;
}

/** A snapshot arrived while edits were pending. */
interface Rebase {
  /** Server text the pending edits were made against. */
  oldServer: string;
  /** In-flight op relative to `oldServer`. */
  inflight: Op | null;
  /** Buffered edits relative to `oldServer` + inflight. */
  buffer: Op;
}

/** Default largest text (inserted plus deleted, JSON bytes) one op carries. */
export const DEFAULT_MAX_OP_BYTES = 256 << 10;

export interface CoreOptions {
  /** Ops carry at most this many bytes of text (at least 64); larger edits go out in parts. */
  maxOpBytes?: number;
  /** Continue a session at this cseq (cseqs are never reused). */
  nextCseq?: number;
}

export class ClientCore {
  readonly clientId: string;
  private server = "";
  private local = "";
  private _version = 0;
  private nextCseq: number;
  private inflight: Inflight | null = null;
  private buffer: Op = [];
  private _live = false;
  private rebase: Rebase | null = null;
  /** The next join asks for a snapshot (no `since`). */
  private fresh = false;
  private readonly maxOpBytes: number;
  private outbox: ClientMsg[] = [];

  constructor(clientId: string, options: CoreOptions = {}) {
    this.clientId = clientId;
    this.nextCseq = options.nextCseq ?? 1;
    this.maxOpBytes = Math.max(64, options.maxOpBytes ?? DEFAULT_MAX_OP_BYTES);
  }

  /** What the user sees: the server text plus pending edits. */
  get text(): string {
    return this.local;
  }
  /** The confirmed text at {@link version}. */
  get serverText(): string {
    return this.server;
  }
  get version(): number {
    return this._version;
  }
  get live(): boolean {
    return this._live;
  }
  /** Nothing in flight, nothing buffered, nothing being merged. */
  get settled(): boolean {
    return this.inflight === null && isNoop(this.buffer) && this.rebase === null;
  }
  get inflightCseq(): number | null {
    return this.inflight?.cseq ?? null;
  }
  /**
   * The pending edits as one op on {@link serverText} (null while a merge
   * is pending): maps positions at {@link version} to the local text.
   */
  get pending(): Op | null {
    if (this.rebase) return null;
    return compose(this.inflight?.op ?? [], this.buffer);
  }

  takeOutbox(): ClientMsg[] {
    const out = this.outbox;
    this.outbox = [];
    return out;
  }

  /** The `hello` for a (re)connect. Call on every new connection. */
  hello(): ClientMsg {
    this._live = false;
    this.outbox = [];
    const msg: ClientMsg = { type: "hello", client: this.clientId };
    if (!this.fresh) msg.since = this._version;
    return msg;
  }

  /** The connection dropped. */
  disconnected(): void {
    this._live = false;
    this.outbox = [];
  }

  /**
   * A local edit made on {@link text}; returns the text each delete removed.
   * Throws `OtError` (changing nothing) when the op does not fit.
   */
  edit(op: Op): string[] {
    op = normalize(op);
    const { text, deleted } = applyWithDeleted(this.local, op);
    this.local = text;
    if (this.rebase) this.rebase.buffer = compose(this.rebase.buffer, op);
    else {
      this.buffer = compose(this.buffer, op);
      this.flush();
    }
    return deleted;
  }

  /** Resend the in-flight op (after RATE_LIMITED / OVERLOADED). */
  resend(): void {
    if (this._live) this.sendInflight();
  }

  private flush(): void {
    if (!this._live || this.inflight || isNoop(this.buffer) || this.rebase) return;
    let op = this.buffer;
    this.buffer = [];
    const parts = splitOp(op, this.server, this.maxOpBytes);
    if (parts) {
      op = parts[0];
      this.buffer = parts[1];
    }
    this.inflight = { cseq: this.nextCseq++, base: this._version, sent: op, op };
    this.sendInflight();
  }

  private sendInflight(): void {
    const i = this.inflight;
    if (i) this.outbox.push({ type: "op", client: this.clientId, cseq: i.cseq, base: i.base, op: i.sent });
  }

  /** Replaces the local text, reporting the change as an op. */
  private setLocal(text: string, events: CoreEvent[]): void {
    if (text === this.local) return;
    const op = diff(this.local, text);
    this.local = text;
    events.push({ type: "change", op });
  }

  /** Handles one server message. */
  onMessage(msg: ServerMsg): CoreEvent[] {
    const ev: CoreEvent[] = [];
    switch (msg.type) {
      case "snapshot": {
        const pending = this.inflight !== null || !isNoop(this.buffer);
        if (pending && !this.rebase) {
          this.rebase = { oldServer: this.server, inflight: this.inflight?.op ?? null, buffer: this.buffer };
          this.buffer = [];
        }
        this.fresh = false;
        this.server = msg.text;
        this._version = msg.seq;
        if (!this.rebase) this.setLocal(this.server, ev);
        break;
      }
      case "ready":
        this._live = true;
        ev.push({ type: "ready", seq: msg.seq });
        if (this.inflight) this.sendInflight(); // unchanged: same id, same base (SPEC §4)
        else if (this.rebase) this.finishRebase(false, ev);
        else this.flush();
        break;
      case "applied": {
        if (msg.prev !== this._version) {
          ev.push({ type: "gap", expectedPrev: this._version, gotPrev: msg.prev });
          return ev;
        }
        const own = msg.client === this.clientId && this.inflight?.cseq === msg.cseq;
        let server: string;
        try {
          server = apply(this.server, msg.op);
        } catch (e) {
          this.desync();
          ev.push({ type: "desync", reason: String(e) });
          return ev;
        }
        this.server = server;
        this._version = msg.seq;
        ev.push({ type: "applied", seq: msg.seq, prev: msg.prev, own, client: msg.client, user: msg.user, ts: msg.ts });
        if (own) {
          const cseq = msg.cseq;
          this.inflight = null;
          ev.push({ type: "acked", cseq, seq: msg.seq });
          if (this.rebase) this.finishRebase(true, ev);
          else this.flush();
        } else if (!this.rebase) {
          let r = msg.op;
          if (this.inflight) {
            const r2 = transform(r, this.inflight.op, "left");
            this.inflight.op = transform(this.inflight.op, r, "right");
            r = r2;
          }
          const r2 = transform(r, this.buffer, "left");
          this.buffer = transform(this.buffer, r, "right");
          this.local = apply(this.local, r2);
          if (!isNoop(r2)) ev.push({ type: "change", op: r2 });
        }
        break;
      }
      case "ack":
        // An ack beyond our version: its applied op is on its way and
        // acknowledges the op when it comes.
        if (this.inflight?.cseq === msg.cseq && msg.seq <= this._version) {
          this.inflight = null;
          ev.push({ type: "acked", cseq: msg.cseq, seq: msg.seq });
          if (this.rebase) this.finishRebase(true, ev);
          else this.flush();
        }
        break;
      case "error": {
        const ours = msg.cseq !== undefined && msg.cseq === this.inflight?.cseq;
        const e: CoreEvent = { type: "error", code: msg.code, message: msg.message };
        if (msg.cseq !== undefined) e.cseq = msg.cseq;
        if (msg.retryAfterMs !== undefined) e.retryAfterMs = msg.retryAfterMs;
        ev.push(e);
        if (!ours) break;
        const i = this.inflight as Inflight;
        if (msg.code === "RATE_LIMITED" || msg.code === "OVERLOADED") {
          // Not taken: the caller resends after retryAfterMs.
        } else if (msg.code === "STALE_BASE") {
          this.inflight = null;
          if (this.rebase) this.finishRebase(false, ev);
          else {
            // The refusal is sequenced after every op applied before it, and
            // the op was rebased through each as it came: resubmit it.
            this.buffer = compose(i.op, this.buffer);
            ev.push({ type: "resubmitted", staleCseq: i.cseq });
            this.flush();
          }
        } else {
          // Refused for good (INVALID_OP, TOO_LARGE, FORBIDDEN…): the op's
          // own change is dropped, later edits are kept.
          this.inflight = null;
          if (this.rebase) {
            if (this.rebase.inflight) {
              this.rebase.oldServer = apply(this.rebase.oldServer, this.rebase.inflight);
              this.rebase.inflight = null;
            }
            this.finishRebase(false, ev);
          } else {
            const base = apply(this.server, i.op);
            this.buffer = threeWay(base, this.local, this.server);
            this.setLocal(apply(this.server, this.buffer), ev);
            this.flush();
          }
        }
        break;
      }
      case "presence":
      case "leave":
      case "pong":
        break;
    }
    return ev;
  }

  private desync(): void {
    const pending = this.inflight !== null || !isNoop(this.buffer);
    if (pending && !this.rebase) {
      this.rebase = { oldServer: this.server, inflight: this.inflight?.op ?? null, buffer: this.buffer };
      this.buffer = [];
    }
    this.fresh = true;
    this._live = false;
  }

  /** After a snapshot: merges the pending edits onto the fresh server text. */
  private finishRebase(inflightApplied: boolean, ev: CoreEvent[]): void {
    const r = this.rebase;
    if (!r) return;
    this.rebase = null;
    const withInflight = r.inflight ? apply(r.oldServer, r.inflight) : r.oldServer;
    const ours = apply(withInflight, r.buffer);
    const base = inflightApplied ? withInflight : r.oldServer;
    this.buffer = threeWay(base, ours, this.server);
    this.setLocal(apply(this.server, this.buffer), ev);
    this.flush();
  }
}

/** Bytes `c` takes inside a JSON string. */
function escapedLen(c: string): number {
  switch (c) {
    case '"': case "\\": case "\n": case "\r": case "\t": case "\b": case "\f":
      return 2;
  }
  const cp = c.codePointAt(0) as number;
  if (cp < 0x20) return 6;
  if (cp < 0x80) return 1;
  if (cp < 0x800) return 2;
  if (cp < 0x10000) return 3;
  return 4;
}

/**
 * Splits `op` (on `text`) into `[first, rest]` with `compose(first, rest)`
 * equal to `op`, `first` carrying at most `budget` bytes of inserted and
 * deleted text (at least one code point). Null when `op` fits as it is.
 */
export function splitOp(op: Op, text: string, budget: number): [Op, Op] | null {
  const chars = Array.from(text);
  let used = 0;
  let pos = 0;
  let out = 0;
  const first: Op = [];
  for (let idx = 0; idx < op.length; idx++) {
    const c = op[idx] as number | string;
    if (typeof c === "number" && c > 0) {
      first.push(c);
      pos += c;
      out += c;
      continue;
    }
    const piece = typeof c === "string" ? Array.from(c) : chars.slice(pos, pos - c);
    let take = 0;
    let bytes = used;
    for (const ch of piece) {
      const b = escapedLen(ch);
      if (bytes + b > budget && (take > 0 || used > 0)) break;
      bytes += b;
      take++;
    }
    if (take === piece.length) {
      used = bytes;
      if (typeof c === "string") out += piece.length;
      else pos += piece.length;
      first.push(c);
      continue;
    }
    const rest: Op = [];
    if (typeof c === "string") {
      first.push(piece.slice(0, take).join(""));
      out += take;
      rest.push(out, piece.slice(take).join(""));
    } else {
      first.push(-take);
      rest.push(out, -(piece.length - take));
    }
    rest.push(...op.slice(idx + 1));
    return [normalize(first), normalize(rest)];
  }
  return null;
}

