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

// Audit mode: each proposed mask kept, corrected (starting from it) or rejected; missing
// objects added as new ones.
export const AUDIT_SHORTCUTS = [
  { action: "keep", keys: ["k"], label: "Keep the selected proposed mask (it is right)" },
  {
    action: "correct",
    keys: ["c"],
    label: "Correct it: clicks, brush and eraser start from the mask",
  },
  { action: "reject", keys: ["x"], label: "Reject it (wrong, or not an object)" },
  { action: "nextProposed", keys: ["n"], label: "Select the next mask to review" },
  {
    action: "accept",
    keys: ["Enter"],
    label: "Accept the correction, or the new (missing) object",
  },
  { action: "clear", keys: ["Escape"], label: "Cancel the correction, or clear the new object" },
  ...SHORTCUTS.filter((s) =>
    [
      "undo",
      "redo",
      "toolPrompt",
      "toolBrush",
      "toolEraser",
      "sizeDown",
      "sizeUp",
      "deleteMask",
      "finishImage",
      "toggleMasks",
      "zoomIn",
      "zoomOut",
      "fit",
      "help",
    ].includes(s.action),
  ),
  { action: "cycle", keys: ["Tab"], label: "Next of the three masks (single point)" },
];

// Verify mode: one key per proposed mask.
export const VERIFY_SHORTCUTS = [
  { action: "acceptMask", keys: ["y", "Enter"], label: "Accept the mask (it is right)" },
  { action: "rejectMask", keys: ["n"], label: "Reject the mask" },
  { action: "missing", keys: ["m"], label: "Something is missing here (sent with the answer)" },
  { action: "skipImage", keys: ["k"], label: "Skip the image (back to the queue)" },
  { action: "fit", keys: ["0"], label: "Show the whole image" },
  { action: "focus", keys: ["."], label: "Zoom to the mask again" },
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

/** Call actions[name]() for shortcut presses outside text fields (table: the mode's
 * shortcuts). */
export function bindKeys(actions, table = SHORTCUTS) {
  const byKey = new Map();
  for (const { action, keys } of table) for (const key of keys) byKey.set(key, action);
  window.addEventListener("keydown", (e) => {
    if (e.target instanceof HTMLInputElement || e.target instanceof HTMLTextAreaElement) return;
    const action = byKey.get(keyName(e));
    if (!action || !actions[action]) return;
    e.preventDefault();
    actions[action]();
  });
}

/** The help panel's tables (table: the mode's shortcuts). */
export function renderHelp(element, table = SHORTCUTS) {
  const rows = (entries) =>
    entries.map(([keys, label]) => `<tr><td>${keys}</td><td>${label}</td></tr>`).join("");
  const keyRows = table.map((s) => [
    s.keys.map((k) => `<kbd>${escapeHtml(k)}</kbd>`).join(" "),
    escapeHtml(s.label),
  ]);
  const advice = new Map([
    [
      SHORTCUTS,
      "Label every object in order of prominence. If an object takes more than 30 s, skip it (<kbd>s</kbd>).",
    ],
    [
      AUDIT_SHORTCUTS,
      "Review every proposed mask: keep it if it is right, correct it if it is close, reject it otherwise; then add the objects nothing covers.",
    ],
    [VERIFY_SHORTCUTS, "Answer each proposed mask with one key."],
  ]);
  const mouse = table === VERIFY_SHORTCUTS ? [] : MOUSE;
  element.innerHTML = `<h2>Keys</h2><table class="keys">${rows(keyRows)}</table>
    <h2>Mouse</h2><table class="keys">${rows(mouse.map(([a, b]) => [escapeHtml(a), escapeHtml(b)]))}</table>
    <p>${advice.get(table) ?? ""}</p>`;
}

export function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}
