// The image's masks beside the one being made: accepted ones (stored or still being sent),
// and stage 2's prefilled ones (locked: they can only be rejected). Each keeps its pixels as
// a crop of its bounding box at the stored size.

import { decodeCrop } from "./rle.js";
import { escapeHtml } from "./keys.js";
import { names } from "./names.js";
import { paintCrop } from "./raster.js";

const PALETTE = [
  [230, 25, 75],
  [60, 180, 75],
  [255, 225, 25],
  [245, 130, 48],
  [145, 30, 180],
  [70, 240, 240],
  [240, 50, 230],
  [210, 245, 60],
  [250, 190, 212],
  [0, 128, 128],
];
const PREFILLED = [90, 110, 255];

/** An entry from a lease's mask ({mask_id, origin, state, rle, bbox, ...}). */
export function storedEntry(mask) {
  return {
    key: `m${mask.mask_id}`,
    maskId: mask.mask_id,
    origin: mask.origin,
    state: "saved",
    crop: decodeCrop(mask.rle, mask.bbox),
    annotator: mask.annotator,
  };
}

/** An entry for a submission not stored yet (an outbox item; held: refused for now). */
export function pendingEntry(item, held = false) {
  const [height, width] = item.body.rle.size;
  const whole = decodeCrop(item.body.rle, [0, 0, width - 1, height - 1]);
  return {
    ...acceptedEntry(item.client_id, whole.data, height, width),
    state: held ? "held" : "sending",
  };
}

/** An entry for a mask just accepted (mask: Uint8Array height x width, not empty). */
export function acceptedEntry(clientId, mask, height, width) {
  let [x0, y0, x1, y1] = [width, height, -1, -1];
  for (let y = 0; y < height; y += 1) {
    for (let x = 0; x < width; x += 1) {
      if (!mask[y * width + x]) continue;
      [x0, y0, x1, y1] = [Math.min(x0, x), Math.min(y0, y), Math.max(x1, x), Math.max(y1, y)];
    }
  }
  const crop = { x: x0, y: y0, width: x1 - x0 + 1, height: y1 - y0 + 1 };
  crop.data = new Uint8Array(crop.width * crop.height);
  for (let y = 0; y < crop.height; y += 1) {
    crop.data.set(mask.subarray((y0 + y) * width + x0, (y0 + y) * width + x1 + 1), y * crop.width);
  }
  return {
    key: `c${clientId}`,
    clientId,
    origin: names.mask_origin.MANUAL,
    state: "sending",
    crop,
  };
}

/** Repaint the masks layer (a canvas at the stored size) with the entries. */
export function paintMasks(canvas, entries, selectedKey) {
  const context = canvas.getContext("2d");
  const image = context.createImageData(canvas.width, canvas.height);
  entries.forEach((entry, index) => {
    const prefilled = entry.origin === names.mask_origin.PREFILLED;
    const rgb = prefilled ? PREFILLED : PALETTE[index % PALETTE.length];
    const selected = entry.key === selectedKey;
    const fill = [...rgb, selected ? 170 : 110];
    const edge = selected ? [255, 255, 255, 255] : [...rgb, 255];
    paintCrop(image.data, canvas.width, entry.crop, { fill, edge, striped: prefilled });
  });
  context.putImageData(image, 0, 0);
}

/** The entry whose pixels include stored pixel (x, y), the topmost (last) first. */
export function entryAt(entries, x, y) {
  for (let i = entries.length - 1; i >= 0; i -= 1) {
    const { crop } = entries[i];
    const [cx, cy] = [Math.floor(x) - crop.x, Math.floor(y) - crop.y];
    if (
      cx >= 0 &&
      cy >= 0 &&
      cx < crop.width &&
      cy < crop.height &&
      crop.data[cy * crop.width + cx]
    )
      return entries[i];
  }
  return null;
}

/** The side panel's list; handlers: {select(key), remove(key)}. */
export function renderMaskList(element, entries, selectedKey, handlers) {
  element.replaceChildren(
    ...entries.map((entry, index) => maskRow(entry, index, selectedKey, handlers)),
  );
}

function maskRow(entry, index, selectedKey, handlers) {
  const row = document.createElement("li");
  const prefilled = entry.origin === names.mask_origin.PREFILLED;
  const rgb = prefilled ? PREFILLED : PALETTE[index % PALETTE.length];
  row.className = `mask-row ${entry.origin} ${entry.state}${entry.key === selectedKey ? " selected" : ""}`;
  row.dataset.key = entry.key;
  const name = entry.maskId ? `#${entry.maskId}` : "new";
  const state =
    entry.label ??
    {
      saved: prefilled ? "prefilled, locked" : "saved",
      sending: "saving…",
      held: "not saved: lease ended",
    }[entry.state];
  row.innerHTML = `<span class="swatch" style="background: rgb(${rgb.join(",")})"></span>
    <span class="name">${escapeHtml(name)}</span><span class="state">${escapeHtml(state)}</span>
    <button type="button" class="remove">${prefilled ? "Reject" : "Delete"}</button>`;
  row.addEventListener("click", () => handlers.select(entry.key));
  row.querySelector(".remove").addEventListener("click", (e) => {
    e.stopPropagation();
    handlers.remove(entry.key);
  });
  return row;
}
