/**
 * A model Quire server for tests: one document, ops transformed against
 * history since their base (earlier-sequenced inserts on the left), dedup by
 * (client, cseq), STALE_BASE below a short window, and joins with `since`
 * answered from history or with a snapshot. Messages travel through
 * per-connection FIFO queues that the test delivers in any interleaving.
 */
import { apply, transform, applyWithDeleted, type Op } from "../src/ot";
import type { AppliedMsg, ClientMsg, ServerMsg } from "../src/protocol";

export interface ModelConn {
  id: number;
  toServer: ClientMsg[];
  toClient: ServerMsg[];
  open: boolean;
  joined: boolean;
  client: string | null;
}

export class ModelServer {
  text = "";
  version = 0;
  private nextSeq = 1;
  history: AppliedMsg[] = [];
  private applied = new Map<string, number>(); // "client/cseq" -> seq
  /** Per client, the cseqs applied or refused. */
  private decided = new Map<string, Set<number>>();
  conns: ModelConn[] = [];
  private nextConn = 1;
  /** Ops older than the last `window` applied ops cannot be transformed. */
  constructor(readonly window = 8) {}

  connect(): ModelConn {
    const c: ModelConn = { id: this.nextConn++, toServer: [], toClient: [], open: true, joined: false, client: null };
    this.conns.push(c);
    return c;
  }

  disconnect(c: ModelConn): void {
    c.open = false;
    c.toServer = [];
    c.toClient = [];
    this.conns = this.conns.filter((x) => x !== c);
  }

  /** Oldest base an op may have. */
  private oldestBase(): number {
    const h = this.history;
    if (h.length <= this.window) return 0;
    return (h[h.length - this.window - 1] as AppliedMsg).seq;
  }

  handle(c: ModelConn, msg: ClientMsg): void {
    const send = (m: ServerMsg) => c.open && c.toClient.push(m);
    switch (msg.type) {
      case "hello": {
        c.joined = true;
        c.client = msg.client;
        const since = msg.since;
        if (since !== undefined && since >= this.oldestBase() && since <= this.version) {
          for (const h of this.history) if (h.seq > since) send(h);
        } else {
          send({ type: "snapshot", seq: this.version, text: this.text });
        }
        send({ type: "ready", seq: this.version });
        break;
      }
      case "op": {
        if (!c.joined) throw new Error("op before hello");
        const key = `${msg.client}/${msg.cseq}`;
        const done = this.applied.get(key);
        if (done !== undefined) {
          send({ type: "ack", client: msg.client, cseq: msg.cseq, seq: done, dup: true });
          return;
        }
        const refuse = (code: "STALE_BASE" | "INVALID_OP", message: string) => {
          this.decided.get(msg.client)?.add(msg.cseq);
          this.broadcastTo(msg.client, { type: "error", code, message, client: msg.client, cseq: msg.cseq }, c);
        };
        // SPEC §4: one op in flight. A new cseq comes only after the server
        // decided the previous one (applied or refused).
        const decided = this.decided.get(msg.client) ?? new Set<number>();
        if (msg.cseq > 1 && !decided.has(msg.cseq - 1)) {
          throw new Error(`${msg.client} sent cseq ${msg.cseq} before ${msg.cseq - 1} was decided`);
        }
        this.decided.set(msg.client, decided);
        if (msg.base > this.version) return refuse("INVALID_OP", "base ahead");
        if (msg.base < this.oldestBase()) return refuse("STALE_BASE", "base too old");
        let op: Op = msg.op;
        for (const h of this.history) if (h.seq > msg.base) op = transform(op, h.op, "right");
        let text: string;
        try {
          text = applyWithDeleted(this.text, op).text;
        } catch {
          return refuse("INVALID_OP", "does not fit");
        }
        const seq = this.nextSeq;
        this.nextSeq += 1 + (seq % 3); // sparse seqs, like offsets shared by many documents
        const rec: AppliedMsg = {
          type: "applied", seq, prev: this.version, client: msg.client, cseq: msg.cseq, user: "u", ts: 0, op,
        };
        this.text = text;
        this.version = seq;
        this.history.push(rec);
        this.applied.set(key, seq);
        this.decided.get(msg.client)?.add(msg.cseq);
        for (const o of this.conns) if (o.joined && o.open) o.toClient.push(rec);
        break;
      }
      case "presence":
      case "ping":
        break;
    }
  }

  /** Refusals go to the submitting connection only. */
  private broadcastTo(_client: string, m: ServerMsg, c: ModelConn): void {
    if (c.open) c.toClient.push(m);
  }

  check(): void {
    let t = "";
    for (const h of this.history) t = apply(t, h.op);
    if (t !== this.text) throw new Error("model history does not replay to its text");
  }
}
