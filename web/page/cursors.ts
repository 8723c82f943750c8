/** Other editors' cursors and selections, drawn in their colors with their names. */
import { StateEffect, StateField, type Range } from "@codemirror/state";
import { Decoration, EditorView, WidgetType, type DecorationSet } from "@codemirror/view";

export interface RemoteCursor {
  client: string;
  name: string;
  color: string;
  /** UTF-16 positions in the current document. */
  anchor: number;
  head: number;
}

class Caret extends WidgetType {
  constructor(readonly name: string, readonly color: string, readonly client: string) {
    super();
  }
  override eq(other: Caret): boolean {
    return other.name === this.name && other.color === this.color && other.client === this.client;
  }
  toDOM(): HTMLElement {
    const caret = document.createElement("span");
    caret.className = "q-caret";
    caret.style.borderLeftColor = this.color;
    caret.dataset.client = this.client;
    const label = document.createElement("span");
    label.className = "q-caret-label";
    label.textContent = this.name;
    label.style.backgroundColor = this.color;
    caret.appendChild(label);
    return caret;
  }
  override ignoreEvent(): boolean {
    return true;
  }
}

export const setRemoteCursors = StateEffect.define<RemoteCursor[]>();

export const remoteCursors = StateField.define<DecorationSet>({
  create: () => Decoration.none,
  update(deco, tr) {
    for (const e of tr.effects) {
      if (e.is(setRemoteCursors)) return build(e.value, tr.state.doc.length);
    }
    return deco.map(tr.changes);
  },
  provide: (f) => EditorView.decorations.from(f),
});

function build(cursors: RemoteCursor[], len: number): DecorationSet {
  const ranges: Range<Decoration>[] = [];
  for (const c of cursors) {
    const head = Math.min(c.head, len);
    const anchor = Math.min(c.anchor, len);
    const from = Math.min(head, anchor);
    const to = Math.max(head, anchor);
    if (from < to) {
      ranges.push(
        Decoration.mark({
          class: "q-remote-selection",
          attributes: {
            style: `background-color: color-mix(in srgb, ${c.color} 22%, transparent)`,
            "data-client": c.client,
          },
        }).range(from, to),
      );
    }
    // side -1: text typed at the caret's position goes after it, as the
    // client moves the cursor ("left" in transformCursor).
    ranges.push(Decoration.widget({ widget: new Caret(c.name, c.color, c.client), side: -1 }).range(head));
  }
  return Decoration.set(ranges, true);
}

export const cursorTheme = EditorView.baseTheme({
  ".q-caret": {
    position: "relative",
    borderLeft: "2px solid",
    marginLeft: "-1px",
    marginRight: "-1px",
  },
  ".q-caret-label": {
    position: "absolute",
    top: "-1.3em",
    left: "-2px",
    fontSize: "11px",
    lineHeight: "1.2em",
    padding: "0 3px",
    color: "white",
    whiteSpace: "nowrap",
    borderRadius: "3px 3px 3px 0",
    pointerEvents: "none",
    zIndex: "10",
  },
});
