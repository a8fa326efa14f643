import { maskWarnings, overlapIou } from "../../../../engine/campaigns/static/js/checks.js";
export async function main({ mask, width, crops, iou, limits }) {
  const data = Uint8Array.from(mask);
  const entries = crops.map((crop, i) => ({
    maskId: i + 1,
    crop: { ...crop, data: Uint8Array.from(crop.data) },
  }));
  return {
    ious: entries.map((e) => overlapIou(data, width, e.crop)),
    warnings: maskWarnings({ mask: data, width, iou, entries, limits }),
  };
}
