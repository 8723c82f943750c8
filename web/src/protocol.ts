/** Wire messages of SPEC §5, as JSON objects with a `type` tag. */
import type { Op } from "./ot.js";

/** A cursor or selection in code points of the document at a version. */
export interface Cursor {
  anchor: number;
  head: number;
}

/** Presence `meta`: a small object; the editor sends `name` and `color`. */
export type PresenceMeta = { name?: string; color?: string; [key: string]: unknown };

export type ClientMsg =
  | { type: "hello"; client: string; since?: number }
  | { type: "op"; client: string; cseq: number; base: number; op: Op }
  | { type: "presence"; seq: number; cursor?: Cursor; meta?: PresenceMeta }
  | { type: "ping" };

export type ErrorCode =
  | "BAD_MESSAGE"
  | "INVALID_OP"
  | "STALE_BASE"
  | "PROTOCOL"
  | "TOO_LARGE"
  | "RATE_LIMITED"
  | "OVERLOADED"
  | "UNAUTHORIZED"
  | "FORBIDDEN"
  | "NOT_FOUND";

export interface AppliedMsg {
  type: "applied";
  seq: number;
  prev: number;
  client: string;
  cseq: number;
  user: string;
  ts: number;
  op: Op;
}

export type ServerMsg =
  | { type: "snapshot"; seq: number; text: string }
  | AppliedMsg
  | { type: "ready"; seq: number }
  | { type: "ack"; client: string; cseq: number; seq: number; dup: boolean }
  | {
      type: "error";
      code: ErrorCode;
      message: string;
      client?: string;
      cseq?: number;
      retryAfterMs?: number;
    }
  | {
      type: "presence";
      client: string;
      user: string;
      seq: number;
      cursor?: Cursor | null;
      meta?: PresenceMeta | null;
    }
  | { type: "leave"; client: string }
  | { type: "pong" };

/** SPEC §4: 1–64 characters of `[A-Za-z0-9_-]`. */
export function isValidClientId(id: string): boolean {
  return /^[A-Za-z0-9_-]{1,64}$/.test(id);
}

/** SPEC §5: 1–128 characters of `[A-Za-z0-9._-]`. */
export function isValidDocId(id: string): boolean {
  return /^[A-Za-z0-9._-]{1,128}$/.test(id);
}

/** A random client id (unique per editing session). */
export function randomClientId(prefix = "web"): string {
  const bytes = new Uint8Array(9);
  globalThis.crypto.getRandomValues(bytes);
  let s = "";
  for (const b of bytes) s += b.toString(36).padStart(2, "0");
  return `${prefix}-${s}`.slice(0, 64);
}
