/**
 * Per-user undo and redo: only the local user's edits are undone, each
 * inverse transformed through everything that happened after it (remote ops
 * and the user's later edits), so undo never reverts someone else's change.
 */
import { compose, invert, isNoop, transform, type Op } from "./ot.js";

interface Entry {
  /** Applies to the current local text and undoes (or redoes) one step. */
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
      // Undo the newest edit first, then the group's earlier ones.
      top.op = compose(inv, top.op);
      top.at = now;
    } else {
      this.moveThrough(this.undos, op);
      this.undos.push({ op: inv, at: now });
      if (this.undos.length > this.depth) this.undos.shift();
    }
    this.redos = [];
    this.canGroup = true;
  }

  /** Someone else's op changed the local text: every step moves through it. */
  recordRemote(op: Op): void {
    if (isNoop(op)) return;
    this.moveThrough(this.undos, op);
    this.moveThrough(this.redos, op);
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
    const inv = invert(op, deleted);
    const [done, other] = kind === "undo" ? [this.undos, this.redos] : [this.redos, this.undos];
    this.moveThrough(done, op);
    this.moveThrough(other, op);
    other.push({ op: inv, at: now });
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

  private moveThrough(stack: Entry[], op: Op): void {
    for (const e of stack) e.op = transform(e.op, op, "right");
  }
}
