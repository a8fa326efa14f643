import { inputSize, workSize } from "../../../../engine/campaigns/static/js/geometry.js";
export async function main({ sizes, sides }) {
  return sides.map((side) =>
    sizes.map(([h, w]) => ({ input: inputSize(h, w, side), work: workSize(h, w, side, 1024) })),
  );
}
