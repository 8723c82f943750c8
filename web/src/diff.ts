/** Character diffs and the three-way merge used when pending edits meet a fresh snapshot. */
import { normalize, transform, type Op } from "./ot.js";

/**
 * The op turning `a` into `b`, by Myers' O(ND) diff over code points. Past
 * `maxD` edits the diff falls back to one replacement of the middle (coarser,
 * still correct).
 */
export function diff(a: string, b: string, maxD = 2000): Op {
  const x = Array.from(a);
  const y = Array.from(b);
  // Common prefix and suffix first: most diffs are one local change.
  let pre = 0;
  while (pre < x.length && pre < y.length && x[pre] === y[pre]) pre++;
  let suf = 0;
  while (
    suf < x.length - pre &&
    suf < y.length - pre &&
    x[x.length - 1 - suf] === y[y.length - 1 - suf]
  ) {
    suf++;
  }
  const xs = x.slice(pre, x.length - suf);
  const ys = y.slice(pre, y.length - suf);
  const middle = myers(xs, ys, maxD) ?? [ys.join(""), -xs.length];
  return normalize([pre, ...middle]);
}

/** Myers' greedy diff; null when it needs more than `maxD` edits. */
function myers(x: string[], y: string[], maxD: number): Op | null {
  const n = x.length;
  const m = y.length;
  if (n === 0 || m === 0) return normalize([y.join(""), -n]);
  const max = Math.min(n + m, maxD);
  const off = max + 1;
  let v = new Int32Array(2 * max + 3);
  const trace: Int32Array[] = [];
  for (let d = 0; d <= max; d++) {
    trace.push(v.slice());
    for (let k = -d; k <= d; k += 2) {
      let i: number;
      if (k === -d || (k !== d && (v[off + k - 1] as number) < (v[off + k + 1] as number))) {
        i = v[off + k + 1] as number; // down: insert y[j]
      } else {
        i = (v[off + k - 1] as number) + 1; // right: delete x[i]
      }
      let j = i - k;
      while (i < n && j < m && x[i] === y[j]) {
        i++;
        j++;
      }
      v[off + k] = i;
      if (i >= n && j >= m) return backtrack(trace, v, x, y, d, k, off);
    }
  }
  return null;
}

function backtrack(
  trace: Int32Array[],
  last: Int32Array,
  x: string[],
  y: string[],
  d: number,
  k: number,
  off: number,
): Op {
  // Walk back from (n, m) to (0, 0), collecting components in reverse.
  const rev: (number | string)[] = [];
  let i = x.length;
  let v = last;
  for (let dd = d; dd > 0; dd--) {
    v = trace[dd] as Int32Array;
    const down = k === -dd || (k !== dd && (v[off + k - 1] as number) < (v[off + k + 1] as number));
    const pk = down ? k + 1 : k - 1;
    const pi = v[off + pk] as number;
    const pj = pi - pk;
    const si = down ? pi : pi + 1; // where the snake after the edit starts
    if (i > si) rev.push(i - si);
    if (down) rev.push(y[pj] as string);
    else rev.push(-1);
    i = pi;
    k = pk;
  }
  if (i > 0) rev.push(i);
  return normalize(rev.reverse());
}

/**
 * Three-way merge: the op that brings `ours`' changes (relative to `base`)
 * onto `theirs`. Their edits win ties; none of ours is dropped: our inserts
 * always survive, our deletes survive where theirs left the text.
 */
export function threeWay(base: string, ours: string, theirs: string): Op {
  return transform(diff(base, ours), diff(base, theirs), "right");
}

