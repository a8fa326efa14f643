import { parseNpy } from "../../../../engine/campaigns/static/js/npy.js";
export async function main(input) {
  return input.map((bytes) => {
    const { shape, data } = parseNpy(Uint8Array.from(bytes).buffer);
    return { shape, data: Array.from(data, (v) => (Number.isFinite(v) ? v : String(v))) };
  });
}
