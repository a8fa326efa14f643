import { encodeMask, stringToRuns } from "../../../../engine/campaigns/static/js/rle.js";
export async function main(input) {
  return input.map(({ mask, h, w }) => {
    const rle = encodeMask(Uint8Array.from(mask), h, w);
    return { counts: rle.counts, size: rle.size, runs: stringToRuns(rle.counts) };
  });
}
