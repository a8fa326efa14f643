import { applyStroke } from "../../../../engine/campaigns/static/js/raster.js";
export async function main({ h, w, stroke, scale }) {
  const mask = new Uint8Array(h * w);
  applyStroke(mask, w, h, stroke, scale);
  return Array.from(mask);
}
