import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { rng } from "./rng";
import {
  apply,
  applyWithDeleted,
  codePointsToUtf16,
  compose,
  cpLength,
  invert,
  normalize,
  transform,
  transformCursor,
  utf16ToCodePoints,
  type Op,
  type Side,
} from "../src/ot";

/** The repository's copies: the shared reference vectors and Quire's own cursor cases. */
const data = (rel: string) =>
  fileURLToPath(new URL(`../../ot/tests/data/${rel}`, import.meta.url));

function readCases(path: string): Record<string, any>[] {
  return readFileSync(path, "utf8")
    .split("\n")
    .filter((l) => l.trim() !== "")
    .map((l) => JSON.parse(l));
}

describe("reference vectors (ot/tests/data/vectors/ot.ndjson)", () => {
  const cases = readCases(data("vectors/ot.ndjson"));
  it("has the whole file", () => {
    expect(cases.length).toBeGreaterThan(1000);
  });
  it("reproduces every case exactly", () => {
    const counts: Record<string, number> = {};
    for (const [i, c] of cases.entries()) {
      const ctx = `line ${i + 1}: ${JSON.stringify(c)}`;
      switch (c.kind) {
        case "apply":
          expect(apply(c.doc, normalize(c.op)), ctx).toBe(c.result);
          break;
        case "transform": {
          const got = transform(normalize(c.op), normalize(c.other), c.side as Side);
          expect(got, ctx).toEqual(c.result);
          expect(apply(apply(c.doc, normalize(c.other)), got), ctx).toBe(c.check);
          break;
        }
        case "compose":
          expect(compose(normalize(c.a), normalize(c.b)), ctx).toEqual(c.result);
          break;
        case "invert":
          expect(invert(normalize(c.op), c.deleted), ctx).toEqual(c.result);
          break;
        case "normalize":
          expect(normalize(c.op), ctx).toEqual(c.result);
          break;
        default:
          throw new Error(`unknown kind ${c.kind} at ${ctx}`);
      }
      counts[c.kind] = (counts[c.kind] ?? 0) + 1;
    }
    for (const kind of ["apply", "transform", "compose", "invert", "normalize"]) {
      expect(counts[kind] ?? 0, kind).toBeGreaterThan(0);
    }
  });
});

describe("cursor vectors (ot/tests/data/cursor.ndjson, shared with the Rust suite)", () => {
  const cases = readCases(data("cursor.ndjson"));
  it("reproduces every case", () => {
    expect(cases.length).toBeGreaterThanOrEqual(20);
    for (const [i, c] of cases.entries()) {
      const ctx = `line ${i + 1}: ${c.note}`;
      const op = normalize(c.op);
      const after = apply(c.doc, op);
      const got = transformCursor(c.cursor, op, c.side as Side);
      expect(got, ctx).toBe(c.result);
      expect(got, ctx).toBeLessThanOrEqual(cpLength(after));
    }
  });
});

describe("code points and UTF-16", () => {
  const text = "a😀b👩‍💻c𝄞";
  it("counts astral characters once", () => {
    expect(cpLength("😀")).toBe(1);
    expect("😀".length).toBe(2);
    expect(cpLength(text)).toBe(8); // 👩‍💻 is three: woman, ZWJ, laptop
  });
  it("converts positions both ways", () => {
    for (let cp = 0; cp <= cpLength(text); cp++) {
      const u = codePointsToUtf16(text, cp);
      expect(utf16ToCodePoints(text, u)).toBe(cp);
      expect(cpLength(text.slice(0, u))).toBe(cp);
    }
  });
  it("applies ops that cut between astral characters, never inside one", () => {
    expect(apply(text, [1, -1, "🎉"])).toBe("a🎉b👩‍💻c𝄞");
    expect(applyWithDeleted(text, [7, -1]).deleted).toEqual(["𝄞"]);
    expect(() => apply("😀", [2])).toThrow(/does not fit/);
  });
});

/** A deliberately naive reference: ops applied on arrays of code points. */
function naiveApply(text: string, op: Op): string {
  const chars = Array.from(text);
  const out: string[] = [];
  let i = 0;
  for (const c of op) {
    if (typeof c === "string") out.push(c);
    else if (c > 0) {
      out.push(...chars.slice(i, i + c));
      i += c;
    } else i -= c;
  }
  if (i > chars.length) throw new Error("does not fit");
  return out.join("") + chars.slice(i).join("");
}


const ALPHABET = ["a", "b", "c", " ", "😀", "語", "\n", "𝄞"];

function randomText(r: () => number, n: number): string {
  let s = "";
  for (let i = 0; i < n; i++) s += ALPHABET[Math.floor(r() * ALPHABET.length)];
  return s;
}

function randomOp(r: () => number, len: number): Op {
  const op: Op = [];
  let left = len;
  while (left > 0 || r() < 0.3) {
    const k = r();
    if (k < 0.3 && left > 0) {
      const n = 1 + Math.floor(r() * Math.min(left, 4));
      op.push(n);
      left -= n;
    } else if (k < 0.6 && left > 0) {
      const n = 1 + Math.floor(r() * Math.min(left, 3));
      op.push(-n);
      left -= n;
    } else op.push(randomText(r, 1 + Math.floor(r() * 3)));
    if (r() < 0.15) break;
  }
  return normalize(op);
}

describe("properties (seeded)", () => {
  it("TP1, compose and invert hold, and apply agrees with a naive model", () => {
    const seed = 20261129;
    const r = rng(seed);
    for (let round = 0; round < 3000; round++) {
      const doc = randomText(r, Math.floor(r() * 12));
      const len = cpLength(doc);
      const a = randomOp(r, len);
      const b = randomOp(r, len);
      const ctx = `seed ${seed} round ${round}: ${JSON.stringify({ doc, a, b })}`;
      expect(apply(doc, a), ctx).toBe(naiveApply(doc, a));
      // TP1
      const a2 = transform(a, b, "left");
      const b2 = transform(b, a, "right");
      expect(apply(apply(doc, b), a2), ctx).toBe(apply(apply(doc, a), b2));
      // compose
      const da = apply(doc, a);
      const c = randomOp(r, cpLength(da));
      expect(apply(doc, compose(a, c)), ctx).toBe(apply(da, c));
      // invert
      const { text, deleted } = applyWithDeleted(doc, a);
      expect(apply(text, invert(a, deleted)), ctx).toBe(doc);
      // cursors stay inside the text
      const cur = Math.floor(r() * (len + 1));
      const moved = transformCursor(cur, a, r() < 0.5 ? "left" : "right");
      expect(moved, ctx).toBeGreaterThanOrEqual(0);
      expect(moved, ctx).toBeLessThanOrEqual(cpLength(da));
    }
  });
});
