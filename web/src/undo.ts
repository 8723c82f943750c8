/**
 * Per-user undo and redo: only the local user's edits are undone. Each stack
 * is a chain: its top applies to the current local text, each step below it
 * to the text the steps above it produce. Local edits extend the chain; a
 * remote op is transformed through the whole chain (and the chain through
 * it), so undo never reverts someone else's change and the steps keep fitting
 * the text.
 */
import { compose, invert, isNoop, transform, type Op } from "./ot.js";

interface Entry {
  /** Undoes (or redoes) one step; see the chain rule above. */
  op: Op;
  /** When the step was last extended (for grouping keystrokes). */
  at: number;
}

export interface UndoOptions {
  /** Edits closer together than this (ms) form one undo step. */
  groupMs?: number;
  /** Steps kept (oldest dropped first). */
  depth?: number;
}

export class UndoStack {
  private undos: Entry[] = [];
  private redos: Entry[] = [];
  private canGroup = false;
  private readonly groupMs: number;
  private readonly depth: number;

  constructor(options: UndoOptions = {}) {
    this.groupMs = options.groupMs ?? 500;
    this.depth = options.depth ?? 200;
  }

  get canUndo(): boolean {
    return this.undos.length > 0;
  }
  get canRedo(): boolean {
    return this.redos.length > 0;
  }

  /** The user made `op` (which deleted `deleted`) on the local text at time `now` (ms). */
  recordEdit(op: Op, deleted: string[], now: number): void {
    if (isNoop(op)) return;
    const inv = invert(op, deleted);
    const top = this.undos[this.undos.length - 1];
    if (top && this.canGroup && now - top.at < this.groupMs) {
      // Undo the newest edit first, then the rest of the group.
      top.op = compose(inv, top.op);
      top.at = now;
    } else {
      this.undos.push({ op: inv, at: now });
      if (this.undos.length > this.depth) this.undos.shift();
    }
    this.redos = [];
    this.canGroup = true;
  }

  /** Someone else's op changed the local text. */
  recordRemote(op: Op): void {
    if (isNoop(op)) return;
    rebaseChain(this.undos, op);
    rebaseChain(this.redos, op);
    this.canGroup = false;
  }

  /** Ends the current group: the next edit starts a new step. */
  close(): void {
    this.canGroup = false;
  }

  /**
   * The op that undoes the user's latest step on the current local text, or
   * null. Apply it as a local edit, then call {@link applied} with what it
   * deleted.
   */
  undo(): Op | null {
    return this.pop(this.undos);
  }

  redo(): Op | null {
    return this.pop(this.redos);
  }

  /** The op from {@link undo} (or {@link redo}) was applied; `deleted` is what it removed. */
  applied(op: Op, deleted: string[], kind: "undo" | "redo", now: number): void {
    const other = kind === "undo" ? this.redos : this.undos;
    other.push({ op: invert(op, deleted), at: now });
    this.canGroup = false;
  }

  private pop(stack: Entry[]): Op | null {
    while (stack.length > 0) {
      const e = stack.pop() as Entry;
      // A step whose every change others have already overwritten is empty.
      if (!isNoop(e.op)) {
        this.canGroup = false;
        return e.op;
      }
    }
    return null;
  }
}

/**
 * Moves a chain (top = last, applying to the current text) through `op`,
 * which was made on the current text: each step is rebased after `op`, and
 * `op` in turn is rebased after the step to meet the next one down. A step's
 * inserts go left of `op`'s at a shared position: they restore text that
 * was there before `op` was typed next to it. (The other choice lets a later
 * step's delete land on someone else's character: the seeded test in
 * test/undo.test.ts finds such cases.)
 */
function rebaseChain(stack: Entry[], op: Op): void {
  for (let i = stack.length - 1; i >= 0; i--) {
    const e = stack[i] as Entry;
    const step = transform(e.op, op, "left");
    op = transform(op, e.op, "right");
    e.op = step;
  }
}
