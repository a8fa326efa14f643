// Keyboard shortcuts: one table, used both to handle keys and to list them in the help panel.

export const SHORTCUTS = [
  { action: "accept", keys: ["Enter"], label: "Accept the mask and start the next object" },
  { action: "skipObject", keys: ["s"], label: "Skip this object (give up on it)" },
  { action: "clear", keys: ["Escape"], label: "Clear the current object" },
  { action: "undo", keys: ["z", "Ctrl+z"], label: "Undo the last click or stroke" },
  { action: "redo", keys: ["y", "Ctrl+y", "Ctrl+Shift+z"], label: "Redo" },
  { action: "cycle", keys: ["Tab", "c"], label: "Next of the three masks (single point)" },
  { action: "toolPrompt", keys: ["v"], label: "Points and box tool" },
  { action: "toolBrush", keys: ["b"], label: "Brush tool" },
  { action: "toolEraser", keys: ["e"], label: "Eraser tool" },
  { action: "sizeDown", keys: ["["], label: "Smaller brush" },
  { action: "sizeUp", keys: ["]"], label: "Larger brush" },
  { action: "selectNext", keys: ["n"], label: "Select the next mask of the image" },
  {
    action: "deleteMask",
    keys: ["Delete", "Backspace"],
    label: "Delete the selected mask (yours)",
  },
  { action: "rejectPrefilled", keys: ["x"], label: "Reject the selected prefilled mask" },
  { action: "finishImage", keys: ["f"], label: "Finish the image and go to the next" },
  { action: "skipImage", keys: ["k"], label: "Skip the image (back to the queue)" },
  { action: "toggleMasks", keys: ["m"], label: "Show or hide the image's masks" },
  { action: "zoomIn", keys: ["+", "="], label: "Zoom in" },
  { action: "zoomOut", keys: ["-"], label: "Zoom out" },
  { action: "fit", keys: ["0"], label: "Fit the image" },
  { action: "help", keys: ["h", "?"], label: "Show or hide this help" },
];

export const MOUSE = [
  ["Click", "Foreground point"],
  ["Right click, Shift+click", "Background point"],
  ["Drag", "Box"],
  ["Drag with brush or eraser", "Paint or erase pixels"],
  ["Alt+click", "Select the mask under the pointer"],
  ["Wheel", "Zoom at the pointer"],
  ["Middle drag, Space+drag", "Pan"],
];

/** The name of a key press as the table writes it ("Ctrl+Shift+z", "Enter", "?"). */
export function keyName(e) {
  const key = e.key.length === 1 ? e.key.toLowerCase() : e.key;
  const shift = e.shiftKey && (/^[a-z]$/.test(key) || key.length > 1) ? "Shift+" : "";
  const ctrl = e.ctrlKey || e.metaKey ? "Ctrl+" : "";
  return `${ctrl}${shift}${key}`;
}

/** Call actions[name]() for shortcut presses outside text fields. */
export function bindKeys(actions) {
  const byKey = new Map();
  for (const { action, keys } of SHORTCUTS) for (const key of keys) byKey.set(key, action);
  window.addEventListener("keydown", (e) => {
    if (e.target instanceof HTMLInputElement || e.target instanceof HTMLTextAreaElement) return;
    const action = byKey.get(keyName(e));
    if (!action || !actions[action]) return;
    e.preventDefault();
    actions[action]();
  });
}

/** The help panel's tables. */
export function renderHelp(element) {
  const rows = (entries) =>
    entries.map(([keys, label]) => `<tr><td>${keys}</td><td>${label}</td></tr>`).join("");
  const keyRows = SHORTCUTS.map((s) => [
    s.keys.map((k) => `<kbd>${escapeHtml(k)}</kbd>`).join(" "),
    escapeHtml(s.label),
  ]);
  element.innerHTML = `<h2>Keys</h2><table class="keys">${rows(keyRows)}</table>
    <h2>Mouse</h2><table class="keys">${rows(MOUSE.map(([a, b]) => [escapeHtml(a), escapeHtml(b)]))}</table>
    <p>Label every object in order of prominence. If an object takes more than 30 s, skip it (<kbd>s</kbd>).</p>`;
}

export function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}
