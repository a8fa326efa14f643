import { decodeCrop } from "../../../../engine/campaigns/static/js/rle.js";
export async function main(input) {
  return input.map(({ rle, bbox }) => {
    const crop = decodeCrop(rle, bbox);
    return { ...crop, data: Array.from(crop.data) };
  });
}
