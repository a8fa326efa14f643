// What the page tells the annotator: one message line (with an optional action button) and
// the per-object timer with the hint to move on after 30 s.

export const MOVE_ON_S = 30;

export class Messages {
  constructor(element) {
    this.element = element;
    this.current = null;
  }

  /** level: info | warn | error; action: {label, run} shown as a button. */
  show(text, level = "info", action = null) {
    this.current = action;
    this.element.className = `message ${level}`;
    this.element.replaceChildren(document.createTextNode(text));
    if (action) {
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = action.label;
      button.addEventListener("click", () => {
        this.clear();
        action.run();
      });
      this.element.append(" ", button);
    }
  }

  clear() {
    this.current = null;
    this.element.className = "message hidden";
    this.element.replaceChildren();
  }
}

export class ObjectTimer {
  constructor(element, hint) {
    this.element = element;
    this.hint = hint;
    this.startedAt = null;
    setInterval(() => this.render(), 250);
  }

  /** The current object's first interaction (ms since the epoch), or null before it. */
  follow(startedAt) {
    this.startedAt = startedAt;
    this.render();
  }

  render() {
    const seconds = this.startedAt ? Math.floor((Date.now() - this.startedAt) / 1000) : 0;
    const over = seconds >= MOVE_ON_S;
    this.element.textContent = `${seconds} s`;
    this.element.classList.toggle("overtime", over);
    this.hint.classList.toggle("hidden", !over);
  }
}

/** The connection line: hidden while the server answers. */
export function showConnection(element, ok, waiting) {
  element.classList.toggle("hidden", ok);
  element.textContent = ok
    ? ""
    : `Connection lost; retrying. ${waiting} change${waiting === 1 ? "" : "s"} wait in this page and will be sent.`;
}
