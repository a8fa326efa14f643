// What the page downloads, each once: images (scaled for display), embeddings (fp16, per
// image and model version) and decoders (per model version). Downloads are shared promises,
// so the prefetch of the next image and its later use make one request.

import { ApiError } from "./api.js";
import { Decoder } from "./decoder.js";
import { parseNpy } from "./npy.js";

const EMBEDDING_POLL_MS = 2000;

export class Assets {
  /** quantized: use the model's quantized decoder when it has one (smaller download). */
  constructor(api, ort, { quantized = false, maxImageSide = 2048 } = {}) {
    this.api = api;
    this.ort = ort;
    this.quantized = quantized;
    this.maxImageSide = maxImageSide;
    this.images = new Map();
    this.embeddings = new Map();
    this.decoders = new Map();
  }

  /** The leased image as an ImageBitmap, at most maxImageSide pixels long. */
  image(lease) {
    const { image_id: id, width, height, url } = lease.image;
    if (!this.images.has(id)) {
      const side = Math.min(Math.max(width, height), this.maxImageSide);
      const path = `${url.replace(/^\//, "")}?max_side=${side}`;
      this.images.set(id, this.fetchBitmap(path));
      this.forgetOnFailure(this.images, id);
    }
    return this.images.get(id);
  }

  async fetchBitmap(path) {
    const response = await this.api.get(path, { raw: true });
    return createImageBitmap(await response.blob());
  }

  /** The decoder of a lease's model version (an onnxruntime session, made once). */
  decoder(model) {
    const url =
      this.quantized && model.decoder_quant_url ? model.decoder_quant_url : model.decoder_url;
    if (!this.decoders.has(url)) {
      this.decoders.set(url, this.fetchDecoder(url));
      this.forgetOnFailure(this.decoders, url);
    }
    return this.decoders.get(url);
  }

  async fetchDecoder(url) {
    const response = await this.api.get(url.replace(/^\//, ""), { raw: true });
    return Decoder.load(this.ort, new Uint8Array(await response.arrayBuffer()));
  }

  /** The image's embedding for the lease's model as an input tensor; waits (polling) while
   * the embed job has not computed it. */
  embedding(lease) {
    const key = `${lease.image.image_id}:${lease.model.sha256}`;
    if (!this.embeddings.has(key)) {
      this.embeddings.set(key, this.fetchEmbedding(lease));
      this.forgetOnFailure(this.embeddings, key);
    }
    return this.embeddings.get(key);
  }

  async fetchEmbedding(lease) {
    const path = lease.embedding_url.replace(/^\//, "");
    for (;;) {
      try {
        const response = await this.api.get(path, { raw: true });
        const array = parseNpy(await response.arrayBuffer());
        const decoder = await this.decoder(lease.model);
        return decoder.embeddingTensor(array);
      } catch (error) {
        if (!(error instanceof ApiError) || error.status !== 409) throw error;
        await sleep((error.retryAfterS ?? EMBEDDING_POLL_MS / 1000) * 1000);
      }
    }
  }

  /** Drop what belongs to images other than `imageIds` (decoders stay). */
  keepOnly(imageIds) {
    for (const id of this.images.keys()) if (!imageIds.includes(id)) this.images.delete(id);
    for (const key of this.embeddings.keys()) {
      if (!imageIds.includes(Number(key.split(":")[0]))) this.embeddings.delete(key);
    }
  }

  forgetOnFailure(map, key) {
    const promise = map.get(key);
    promise.catch(() => {
      if (map.get(key) === promise) map.delete(key);
    });
  }
}

export function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
