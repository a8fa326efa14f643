// What the page tells the annotator: one message line (with an optional action button) and
// the per-object timer with the hint to move on after 30 s.

export const MOVE_ON_S = 30;

export class Messages {
  /** One line per topic ("image": the lease and its loading, "object": the object being made,
   * "save": changes the server refused), so a notice never hides an action to take. */
  constructor(element) {
    this.element = element;
    this.lines = new Map();
  }

  /** level: info | warn | error; action: {label, run} shown as a button; fadeMs: cleared
   * after that long unless replaced. */
  show(topic, text, level = "info", action = null, fadeMs = 0) {
    const line = { text, level, action };
    this.lines.set(topic, line);
    if (fadeMs) setTimeout(() => this.lines.get(topic) === line && this.clear(topic), fadeMs);
    this.render();
  }

  clear(topic) {
    this.lines.delete(topic);
    this.render();
  }

  action(topic) {
    return this.lines.get(topic)?.action ?? null;
  }

  render() {
    const rows = [...this.lines].map(([topic, line]) => this.row(topic, line));
    this.element.replaceChildren(...rows);
    this.element.classList.toggle("hidden", rows.length === 0);
  }

  row(topic, { text, level, action }) {
    const row = document.createElement("div");
    row.className = `message ${level}`;
    row.dataset.topic = topic;
    row.append(text);
    if (action) {
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = action.label;
      button.addEventListener("click", () => {
        this.clear(topic);
        action.run();
      });
      row.append(" ", button);
    }
    return row;
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
    : `Connection lost; retrying. ${waiting === 1 ? "1 change waits" : `${waiting} changes wait`} in this page and will be sent.`;
}
