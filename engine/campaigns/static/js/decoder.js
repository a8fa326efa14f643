// The model's mask decoder in the page (onnxruntime-web), on the campaign's ONNX contract:
// inputs image_embeddings [1, 256, h, w], point_coords [1, N, 2] (XY in pixels of the image
// size given as orig_im_size), point_labels [1, N] (1 foreground, 0 background, 2 and 3 the
// box corners, -1 padding), mask_input [1, 1, 4h, 4w] with has_mask_input [1], orig_im_size
// [2] = (H, W); outputs masks [1, 4, H, W] logits (0: single-mask output, 1..3: multimask),
// iou_predictions [1, 4], low_res_masks [1, 4, 4h, 4w].

export const FOREGROUND = 1;
export const BACKGROUND = 0;
const BOX_TOP_LEFT = 2;
const BOX_BOTTOM_RIGHT = 3;
const PADDING = -1;
export const SINGLE_MASK = 0;
export const MULTIMASK = [1, 2, 3];

/** Point coordinates and labels for the contract: the points, then the box's two corners,
 * or one padding point when there is no box. points: [[x, y, label]]; box: [x0, y0, x1, y1]
 * or null. */
export function promptArrays(points, box) {
  const coords = [];
  const labels = [];
  for (const [x, y, label] of points) {
    coords.push(x, y);
    labels.push(label);
  }
  if (box) {
    coords.push(box[0], box[1], box[2], box[3]);
    labels.push(BOX_TOP_LEFT, BOX_BOTTOM_RIGHT);
  } else {
    coords.push(0, 0);
    labels.push(PADDING);
  }
  return { coords: Float32Array.from(coords), labels: Float32Array.from(labels) };
}

/** The mask outputs to show for a prompt: the three multimask outputs (best predicted IoU
 * first) for a single point without a box, else the single-mask output. */
export function candidateTokens(points, box, iou) {
  if (box || points.length !== 1) return [SINGLE_MASK];
  return [...MULTIMASK].sort((a, b) => iou[b] - iou[a]);
}

export class Decoder {
  /** ort: the onnxruntime-web module; bytes: the decoder.onnx file. */
  static async load(ort, bytes) {
    const session = await ort.InferenceSession.create(bytes, {
      executionProviders: ["wasm"],
      graphOptimizationLevel: "all",
    });
    return new Decoder(ort, session);
  }

  constructor(ort, session) {
    this.ort = ort;
    this.session = session;
  }

  /** The embedding ({shape: [256, h, w], data}) as the input tensor (made once per image). */
  embeddingTensor(embedding) {
    return new this.ort.Tensor("float32", embedding.data, [1, ...embedding.shape]);
  }

  /** Decode one prompt. prompt: {points, box} in pixels of `size` = [H, W]; maskInput: the
   * previous low-res logits (Float32Array 4h x 4w) or null. Returns {masks, iou, lowRes,
   * size, lowSize, ms}: masks 4 x H x W logits, lowRes 4 x 4h x 4w, ms the time of the
   * onnxruntime run call. */
  async run({ embedding, prompt, maskInput, size }) {
    const { Tensor } = this.ort;
    const [, h, w] = embedding.dims.slice(1);
    const lowSize = [4 * h, 4 * w];
    const { coords, labels } = promptArrays(prompt.points, prompt.box);
    const n = labels.length;
    const feeds = {
      image_embeddings: embedding,
      point_coords: new Tensor("float32", coords, [1, n, 2]),
      point_labels: new Tensor("float32", labels, [1, n]),
      mask_input: new Tensor("float32", maskInput ?? new Float32Array(lowSize[0] * lowSize[1]), [
        1,
        1,
        ...lowSize,
      ]),
      has_mask_input: new Tensor("float32", Float32Array.of(maskInput ? 1 : 0), [1]),
      orig_im_size: new Tensor("float32", Float32Array.of(size[0], size[1]), [2]),
    };
    const start = performance.now();
    const out = await this.session.run(feeds);
    const ms = performance.now() - start;
    return {
      masks: out.masks.data,
      iou: out.iou_predictions.data,
      lowRes: out.low_res_masks.data,
      size,
      lowSize,
      ms,
    };
  }
}

/** Output `token` of a decode as a 0/1 mask (logits > 0). */
export function thresholdToken(result, token) {
  const [height, width] = result.size;
  const plane = height * width;
  const logits = result.masks.subarray(token * plane, (token + 1) * plane);
  const mask = new Uint8Array(plane);
  for (let i = 0; i < plane; i += 1) mask[i] = logits[i] > 0 ? 1 : 0;
  return mask;
}

/** The low-res logits of output `token` (to feed back as the next mask input). */
export function lowResToken(result, token) {
  const plane = result.lowSize[0] * result.lowSize[1];
  return result.lowRes.slice(token * plane, (token + 1) * plane);
}
