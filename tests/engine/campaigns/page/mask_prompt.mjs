import { maskPrompt } from "../../../../engine/campaigns/static/js/correction.js";
export async function main({ crop, stored, input, low }) {
  const data = Uint8Array.from(crop.data);
  return Array.from(maskPrompt({ ...crop, data }, stored, input, low));
}
