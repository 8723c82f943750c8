import { describe, expect, it } from "vitest";
import { UndoStack } from "../src/undo";
import { apply, applyWithDeleted, type Op } from "../src/ot";

/** A local text with an undo stack, remote ops arriving between edits. */
class Doc {
  text: string;
  undo = new UndoStack({ groupMs: 500 });
  now = 0;
  constructor(text: string) {
    this.text = text;
  }
  local(op: Op, dt = 1000) {
    this.now += dt;
    const r = applyWithDeleted(this.text, op);
    this.text = r.text;
    this.undo.recordEdit(op, r.deleted, this.now);
  }
  remote(op: Op) {
    this.text = apply(this.text, op);
    this.undo.recordRemote(op);
  }
  step(kind: "undo" | "redo") {
    const op = kind === "undo" ? this.undo.undo() : this.undo.redo();
    if (!op) return false;
    const r = applyWithDeleted(this.text, op);
    this.text = r.text;
    this.undo.applied(op, r.deleted, kind, this.now);
    return true;
  }
}

describe("UndoStack", () => {
  it("undoes only the local user's edit, keeping a remote edit made after it", () => {
    const d = new Doc("hello world");
    d.local([5, ","]); // "hello, world"
    d.remote(["Oh, "]); // "Oh, hello, world"
    d.remote([16, "!"]); // "Oh, hello, world!"
    expect(d.step("undo")).toBe(true);
    expect(d.text).toBe("Oh, hello world!");
    expect(d.step("redo")).toBe(true);
    expect(d.text).toBe("Oh, hello, world!");
  });

  it("undoes a delete whose surroundings others edited", () => {
    const d = new Doc("abc def ghi");
    d.local([4, -4]); // "abc ghi"
    d.remote([4, "NEW "]); // "abc NEW ghi"
    d.step("undo");
    // The restored text goes after what was typed in its place.
    expect(d.text).toBe("abc NEW def ghi");
  });

  it("groups fast keystrokes into one step and undoes steps newest first", () => {
    const d = new Doc("");
    d.local(["a"]);
    d.local([1, "b"], 100);
    d.local([2, "c"], 100);
    d.local([3, " later"], 2000);
    d.step("undo");
    expect(d.text).toBe("abc");
    d.step("undo");
    expect(d.text).toBe("");
    expect(d.step("undo")).toBe(false);
    d.step("redo");
    d.step("redo");
    expect(d.text).toBe("abc later");
  });

  it("a remote op ends a group, and a new edit clears redo", () => {
    const d = new Doc("");
    d.local(["ab"]);
    d.remote([2, "X"]);
    d.local([3, "cd"], 10);
    d.step("undo");
    expect(d.text).toBe("abX");
    d.local([0, "Z"]);
    expect(d.step("redo")).toBe(false);
  });

  it("an edit someone else deleted undoes to nothing and is skipped", () => {
    const d = new Doc("xy");
    d.local([1, "1"]); // x1y
    d.local([3, "2"]); // x1y2
    d.remote([1, -1]); // xy2: our first insert is gone
    d.step("undo"); // removes "2"
    expect(d.text).toBe("xy");
    // The first edit's undo would delete what is already deleted: a no-op, skipped.
    expect(d.step("undo")).toBe(false);
    expect(d.text).toBe("xy");
  });
});
