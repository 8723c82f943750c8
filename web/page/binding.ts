/** Conversions between CodeMirror's changes (UTF-16 units) and Quire ops (code points). */
import type { ChangeSet, ChangeSpec, Text } from "@codemirror/state";
import { advance, cpLength, normalize, type Op } from "../src/ot.js";

/** The op equal to `changes` made on `doc`. */
export function changesToOp(changes: ChangeSet, doc: Text): Op {
  const op: Op = [];
  let last = 0;
  changes.iterChanges((fromA, toA, _fromB, _toB, inserted) => {
    op.push(cpLength(doc.sliceString(last, fromA)));
    op.push(inserted.toString());
    op.push(-cpLength(doc.sliceString(fromA, toA)));
    last = toA;
  });
  return normalize(op);
}

/** CodeMirror change specs equal to `op` applied to `text` (positions in `text`). */
export function opToChanges(op: Op, text: string): ChangeSpec[] {
  const specs: ChangeSpec[] = [];
  let i = 0;
  for (const c of op) {
    if (typeof c === "string") specs.push({ from: i, insert: c });
    else if (c > 0) i = advance(text, i, c);
    else if (c < 0) {
      const end = advance(text, i, -c);
      specs.push({ from: i, to: end });
      i = end;
    }
  }
  return specs;
}
