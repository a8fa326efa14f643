// Correcting a proposed mask (audit mode): an object history that starts from the mask
// instead of nothing. Brush and eraser strokes apply over it; the first click is decoded
// with the mask as the decoder's mask prompt (later clicks feed the previous logits back, as
// usual), and its mask replaces the proposed one.

import { ObjectEditor } from "./object.js";

export const MASK_PROMPT_LOGIT = 10; // as stages/assisted/reviewer.py's MASK_PROMPT_LOGIT

export class CorrectionEditor extends ObjectEditor {
  /** options: ObjectEditor's; start: the proposed mask's crop at the stored size ({x, y,
   * width, height, data}); stored: [H, W]; inputSize: the unpadded model-input [h, w];
   * lowSize: the decoder's low-res frame [4h, 4w]; maskId: the proposed mask. */
  constructor(options, { start, stored, inputSize, lowSize, maskId }) {
    super(options);
    Object.assign(this, { start, stored, maskId });
    this.prompt0 = maskPrompt(start, stored, inputSize, lowSize);
  }

  startMask(h, w) {
    return cropAt(this.start, this.stored, h, w);
  }

  maskInputBefore(index) {
    return super.maskInputBefore(index) ?? this.prompt0;
  }
}

/** A crop of the stored H x W image's pixels as a full mask of h x w (each pixel takes the
 * stored pixel under its centre). */
export function cropAt(crop, [height, width], h, w) {
  const mask = new Uint8Array(h * w);
  for (let y = 0; y < h; y += 1) {
    const cy = Math.floor(((y + 0.5) * height) / h) - crop.y;
    if (cy < 0 || cy >= crop.height) continue;
    for (let x = 0; x < w; x += 1) {
      const cx = Math.floor(((x + 0.5) * width) / w) - crop.x;
      if (cx >= 0 && cx < crop.width) mask[y * w + x] = crop.data[cy * crop.width + cx];
    }
  }
  return mask;
}

/** A binary mask (a crop of the stored H x W image) as the decoder's mask prompt: low-res
 * pixel (u, v) covers model-input pixels [4u, 4u + 4) x [4v, 4v + 4) and takes the stored
 * pixel under its centre: +MASK_PROMPT_LOGIT inside, -MASK_PROMPT_LOGIT outside and over the
 * padding (Float32Array rows x cols). The same as stages/assisted/reviewer.py's mask_prompt. */
export function maskPrompt(crop, [height, width], [inputH, inputW], [rows, cols]) {
  const prompt = new Float32Array(rows * cols).fill(-MASK_PROMPT_LOGIT);
  for (let v = 0; v < rows; v += 1) {
    const centreY = 4 * v + 2;
    if (centreY >= inputH) break;
    const cy = Math.min(height - 1, Math.floor((centreY * height) / inputH)) - crop.y;
    if (cy < 0 || cy >= crop.height) continue;
    for (let u = 0; u < cols; u += 1) {
      const centreX = 4 * u + 2;
      if (centreX >= inputW) break;
      const cx = Math.min(width - 1, Math.floor((centreX * width) / inputW)) - crop.x;
      if (cx >= 0 && cx < crop.width && crop.data[cy * crop.width + cx])
        prompt[v * cols + u] = MASK_PROMPT_LOGIT;
    }
  }
  return prompt;
}

/** Start correcting `entry` (a proposed mask of the image, with its crop) on the workbench:
 * its editor becomes a CorrectionEditor at the workbench's work size. */
export function startCorrection(bench, entry) {
  const { lease, work, scale, embedding } = bench.view;
  const { height, width } = lease.image;
  const [, , h, w] = embedding.dims;
  bench.editor = new CorrectionEditor(
    { decode: (p, m) => bench.decode(p, m), work, scale, onChange: () => bench.render() },
    {
      start: entry.crop,
      stored: [height, width],
      inputSize: lease.model.input_size,
      lowSize: [4 * h, 4 * w],
      maskId: entry.maskId,
    },
  );
  bench.render();
}
