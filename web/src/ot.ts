/**
 * Operational transformation over plain text (SPEC §3), the same functions
 * and results as the Rust `ot` crate.
 *
 * An op is an array of components walking the document from its start: a
 * positive integer retains that many code points, a non-empty string
 * inserts, a negative integer deletes. Anything after the last component is
 * retained. Positions and lengths count Unicode code points, never UTF-16
 * units: convert at the editor's boundary with {@link utf16ToCodePoints} and
 * {@link codePointsToUtf16}.
 *
 * Pure functions: no I/O, no clock, nothing thrown on valid input.
 */

export type Component = number | string;
export type Op = Component[];
/** Which op's insert goes first where both insert at one position. */
export type Side = "left" | "right";

/** An op that does not fit the text it was applied to, or is malformed. */
export class OtError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "OtError";
  }
}

/** Number of code points in `s`. */
export function cpLength(s: string): number {
  let n = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    // A high surrogate followed by a low one is one code point.
    if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length) {
      const d = s.charCodeAt(i + 1);
      if (d >= 0xdc00 && d <= 0xdfff) i++;
    }
    n++;
  }
  return n;
}

/** The UTF-16 index reached after `n` code points of `s`, starting at UTF-16 index `from`. */
export function advance(s: string, from: number, n: number): number {
  let i = from;
  while (n > 0 && i < s.length) {
    const c = s.charCodeAt(i);
    i++;
    if (c >= 0xd800 && c <= 0xdbff && i < s.length) {
      const d = s.charCodeAt(i);
      if (d >= 0xdc00 && d <= 0xdfff) i++;
    }
    n--;
  }
  return i;
}

/** Code-point position of UTF-16 index `utf16` in `s`. */
export function utf16ToCodePoints(s: string, utf16: number): number {
  return cpLength(s.slice(0, utf16));
}

/** UTF-16 index of code-point position `cp` in `s`. */
export function codePointsToUtf16(s: string, cp: number): number {
  return advance(s, 0, cp);
}

function isRetain(c: Component): c is number {
  return typeof c === "number" && c > 0;
}
function isDelete(c: Component): c is number {
  return typeof c === "number" && c < 0;
}
function compLen(c: Component): number {
  return typeof c === "string" ? cpLength(c) : Math.abs(c);
}

/** Appends components while keeping normal form. */
class Builder {
  out: Component[] = [];

  retain(n: number): void {
    if (n <= 0) return;
    const last = this.out[this.out.length - 1];
    if (last !== undefined && isRetain(last)) this.out[this.out.length - 1] = last + n;
    else this.out.push(n);
  }

  delete(n: number): void {
    if (n <= 0) return;
    const last = this.out[this.out.length - 1];
    if (last !== undefined && isDelete(last)) this.out[this.out.length - 1] = last - n;
    else this.out.push(-n);
  }

  insert(s: string): void {
    if (s === "") return;
    const len = this.out.length;
    const last = this.out[len - 1];
    const before = this.out[len - 2];
    if (typeof last === "string") this.out[len - 1] = last + s;
    else if (last !== undefined && isDelete(last)) {
      // An insert goes before an adjacent delete.
      if (typeof before === "string") this.out[len - 2] = before + s;
      else this.out.splice(len - 1, 0, s);
    } else this.out.push(s);
  }

  push(c: Component): void {
    if (typeof c === "string") this.insert(c);
    else if (c > 0) this.retain(c);
    else if (c < 0) this.delete(-c);
  }

  finish(): Op {
    const last = this.out[this.out.length - 1];
    if (last !== undefined && isRetain(last)) this.out.pop();
    return this.out;
  }
}

type Whole = "inserts" | "deletes" | null;

/** Hands out pieces of an op's components; past the end, retains forever. */
class Walker {
  private index = 0;
  /** Code points already taken from `op[index]`. */
  private offset = 0;
  /** UTF-16 index matching `offset` inside an insert. */
  private offset16 = 0;

  constructor(private readonly op: Op) {}

  peekIsInsert(): boolean {
    return typeof this.op[this.index] === "string";
  }

  done(): boolean {
    return this.index >= this.op.length;
  }

  private next(): void {
    this.index++;
    this.offset = 0;
    this.offset16 = 0;
  }

  /** Takes at most `max` code points; components of kind `whole` are taken entire. */
  take(max: number, whole: Whole): Component {
    const c = this.op[this.index];
    if (c === undefined) return max;
    if (typeof c === "string") {
      if (whole === "inserts") {
        const piece = c.slice(this.offset16);
        this.next();
        return piece;
      }
      const end = advance(c, this.offset16, max);
      const piece = c.slice(this.offset16, end);
      if (end >= c.length) this.next();
      else {
        this.offset += cpLength(piece);
        this.offset16 = end;
      }
      return piece;
    }
    const total = Math.abs(c);
    const rest = total - this.offset;
    const n = c < 0 && whole === "deletes" ? rest : Math.min(rest, max);
    this.offset += n;
    if (this.offset >= total) this.next();
    return c < 0 ? -n : n;
  }
}

/** Checks that `value` is a well-formed op; throws {@link OtError} otherwise. */
export function checkOp(value: unknown): Op {
  if (!Array.isArray(value)) throw new OtError("an op is a JSON array");
  for (const c of value) {
    if (typeof c === "string") continue;
    if (typeof c !== "number" || !Number.isSafeInteger(c)) {
      throw new OtError(`bad component ${JSON.stringify(c)}`);
    }
  }
  return value as Op;
}

/** The normal form of `op` (SPEC §3). */
export function normalize(op: Op): Op {
  const b = new Builder();
  for (const c of op) b.push(c);
  return b.finish();
}

/** Retains plus deletes: the length a document needs for `op` to fit. */
export function baseLength(op: Op): number {
  let n = 0;
  for (const c of op) if (typeof c === "number") n += Math.abs(c);
  return n;
}

/** Length of the text after applying `op` to a text of `len` code points. */
export function targetLength(op: Op, len: number): number {
  for (const c of op) {
    if (typeof c === "string") len += cpLength(c);
    else if (c < 0) len += c;
  }
  return len;
}

export function isNoop(op: Op): boolean {
  return normalize(op).length === 0;
}

/** Applies `op` to `text` and returns the result and the text each delete removed. */
export function applyWithDeleted(text: string, op: Op): { text: string; deleted: string[] } {
  let i = 0; // UTF-16 index into text
  const parts: string[] = [];
  const deleted: string[] = [];
  for (const c of op) {
    if (typeof c === "string") {
      parts.push(c);
      continue;
    }
    const n = Math.abs(c);
    if (n === 0) continue; // not normal form, but harmless
    const end = advance(text, i, n);
    if (cpLength(text.slice(i, end)) < n) {
      throw new OtError(
        `op does not fit: it needs ${baseLength(op)} code points, the text has ${cpLength(text)}`,
      );
    }
    if (c > 0) parts.push(text.slice(i, end));
    else deleted.push(text.slice(i, end));
    i = end;
  }
  parts.push(text.slice(i));
  return { text: parts.join(""), deleted };
}

/** Applies `op` to `text`; throws {@link OtError} when it does not fit. */
export function apply(text: string, op: Op): string {
  return applyWithDeleted(text, op).text;
}

/** One op equal to applying `a` then `b`. */
export function compose(a: Op, b: Op): Op {
  const out = new Builder();
  const wa = new Walker(a);
  for (const c of b) {
    if (typeof c === "string") {
      out.insert(c);
    } else if (c > 0) {
      let left = c;
      while (left > 0) {
        const p = wa.take(left, "deletes");
        if (!isDelete(p)) left -= compLen(p);
        out.push(p);
      }
    } else if (c < 0) {
      let left = -c;
      while (left > 0) {
        const p = wa.take(left, "deletes");
        if (typeof p === "string") left -= cpLength(p);
        else if (p > 0) {
          out.delete(p);
          left -= p;
        } else out.push(p);
      }
    }
  }
  while (!wa.done()) out.push(wa.take(Number.MAX_SAFE_INTEGER, null));
  return out.finish();
}

/**
 * Rebases `op` to apply after `other` (both made on one version). `side`
 * "left": `op`'s inserts go first at a shared position (`op` was sequenced
 * earlier).
 */
export function transform(op: Op, other: Op, side: Side): Op {
  const out = new Builder();
  const wa = new Walker(op);
  for (const c of other) {
    if (typeof c === "string") {
      if (side === "left") {
        while (wa.peekIsInsert()) out.push(wa.take(Number.MAX_SAFE_INTEGER, "inserts"));
      }
      out.retain(cpLength(c));
    } else if (c > 0) {
      let left = c;
      while (left > 0) {
        const p = wa.take(left, "inserts");
        if (typeof p !== "string") left -= Math.abs(p);
        out.push(p);
      }
    } else if (c < 0) {
      let left = -c;
      while (left > 0) {
        const p = wa.take(left, "inserts");
        if (typeof p === "string") out.insert(p);
        else left -= Math.abs(p);
      }
    }
  }
  while (!wa.done()) out.push(wa.take(Number.MAX_SAFE_INTEGER, null));
  return out.finish();
}

/** The op that undoes `op`, given the text each of its deletes removed. */
export function invert(op: Op, deleted: string[]): Op {
  const needed = op.filter(isDelete).length;
  if (deleted.length !== needed) {
    throw new OtError(`invert needs ${needed} deleted strings, got ${deleted.length}`);
  }
  const out = new Builder();
  let next = 0;
  for (const c of op) {
    if (typeof c === "string") out.delete(cpLength(c));
    else if (c > 0) out.retain(c);
    else if (c < 0) {
      const s = deleted[next++] as string;
      if (cpLength(s) !== -c) {
        throw new OtError(`deleted string ${next - 1} has ${cpLength(s)} code points, the op deletes ${-c}`);
      }
      out.insert(s);
    }
  }
  return out.finish();
}

/**
 * Moves a cursor (a code-point position) through `op`. With "left" a cursor
 * at an insert's position stays before the inserted text; with "right" it
 * moves after it (the author's own cursor).
 */
export function transformCursor(cursor: number, op: Op, side: Side): number {
  let pos = 0;
  let out = cursor;
  for (const c of op) {
    if (pos > cursor) break;
    if (typeof c === "string") {
      if (pos < cursor || side === "right") out += cpLength(c);
    } else if (c > 0) pos += c;
    else if (c < 0) {
      out -= Math.min(-c, cursor - pos);
      pos += -c;
    }
  }
  return out;
}

/** The op replacing `del` code points at `pos` with `ins`. */
export function splice(pos: number, del: number, ins: string): Op {
  return normalize([pos, ins, -del]);
}
