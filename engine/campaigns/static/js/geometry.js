// Sizes: the model's input size for an image, and the size masks are decoded at while the
// annotator works.

/** The unpadded model-input size [h, w] of an H x W image for a model whose input side is
 * `side`: the long side scaled to `side`, each side rounded half up (integer arithmetic, as
 * the model's resize and the exported decoder compute it). */
export function inputSize(height, width, side) {
  const long = Math.max(height, width);
  const scaled = (length) => Math.floor((2 * length * side + long) / (2 * long));
  return [scaled(height), scaled(width)];
}

/** The size [h, w] to decode interactive masks at: the stored size scaled so its long side is
 * at most `maxSide`, nudged by a pixel where needed so that it has the same model-input size
 * as the stored image (then a prompt maps to the same model-input pixels at both sizes and
 * the low-res logits fed back are the same). The stored size when it is small enough. */
export function workSize(height, width, side, maxSide) {
  const scale = maxSide / Math.max(height, width);
  if (scale >= 1) return [height, width];
  const wanted = inputSize(height, width, side).join(",");
  const h = Math.round(height * scale);
  const w = Math.round(width * scale);
  for (const [dh, dw] of [
    [0, 0],
    [1, 0],
    [0, 1],
    [-1, 0],
    [0, -1],
    [1, 1],
    [-1, -1],
  ]) {
    if (inputSize(h + dh, w + dw, side).join(",") === wanted) return [h + dh, w + dw];
  }
  return [height, width];
}

/** Clamp v into [lo, hi]. */
export function clamp(v, lo, hi) {
  return Math.min(hi, Math.max(lo, v));
}
