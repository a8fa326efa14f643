// What the page checks before a mask is accepted: a mask the model itself is unsure of (a low
// predicted IoU), and one that nearly repeats another mask of the image. Each gives a warning;
// the annotator goes on with one more Enter.

export const WARN_IOU = 0.3;
export const DUPLICATE_IOU = 0.9;

/** IoU of a mask (Uint8Array height x width, 1 = inside) with an entry's crop ({x, y, width,
 * height, data}: the entry's pixels in its bounding box). */
export function overlapIou(mask, width, crop) {
  let inside = 0;
  for (let i = 0; i < mask.length; i += 1) inside += mask[i] ? 1 : 0;
  let other = 0;
  let both = 0;
  for (let y = 0; y < crop.height; y += 1) {
    for (let x = 0; x < crop.width; x += 1) {
      if (!crop.data[y * crop.width + x]) continue;
      other += 1;
      if (mask[(crop.y + y) * width + crop.x + x]) both += 1;
    }
  }
  const union = inside + other - both;
  return union ? both / union : 0;
}

/** The warnings for a mask about to be accepted. iou: its predicted IoU (or null); entries:
 * the image's other masks ({crop, maskId?}); limits: {warnIou, duplicateIou}. */
export function maskWarnings({ mask, width, iou, entries, limits }) {
  const warnings = [];
  if (iou !== null && iou < limits.warnIou)
    warnings.push(`the model is unsure of this mask (predicted IoU ${iou.toFixed(2)})`);
  for (const entry of entries) {
    const overlap = overlapIou(mask, width, entry.crop);
    if (overlap >= limits.duplicateIou) {
      const name = entry.maskId ? `mask #${entry.maskId}` : "a mask you accepted";
      warnings.push(`it nearly repeats ${name} (IoU ${overlap.toFixed(2)})`);
      break;
    }
  }
  return warnings;
}
