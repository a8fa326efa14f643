// Masks as run lengths, the format the campaign API stores (COCO RLE): column-major runs
// that start with a background run, sent as the compressed counts string.

/** Run lengths of an H x W mask (row-major Uint8Array, nonzero = inside), column-major. */
export function maskRuns(mask, height, width) {
  const runs = [];
  let value = 0;
  let length = 0;
  for (let x = 0; x < width; x += 1) {
    for (let index = x; index < height * width; index += width) {
      const inside = mask[index] !== 0 ? 1 : 0;
      if (inside !== value) {
        runs.push(length);
        value = inside;
        length = 0;
      }
      length += 1;
    }
  }
  runs.push(length);
  return runs;
}

/** The compressed counts string of run lengths: each count (from the third on, minus the
 * count two before) in 5-bit groups, low group first, as characters offset by 48, 0x20
 * meaning "another group follows", the sign in the last group's 0x10 bit. */
export function runsToString(runs) {
  let text = "";
  for (let i = 0; i < runs.length; i += 1) {
    let value = i > 2 ? runs[i] - runs[i - 2] : runs[i];
    let more = true;
    while (more) {
      let group = value & 0x1f;
      value >>= 5;
      more = group & 0x10 ? value !== -1 : value !== 0;
      if (more) group |= 0x20;
      text += String.fromCharCode(group + 48);
    }
  }
  return text;
}

/** The run lengths of a compressed counts string (the inverse of runsToString). */
export function stringToRuns(text) {
  const runs = [];
  let position = 0;
  while (position < text.length) {
    let value = 0;
    let shift = 0;
    let more = true;
    while (more) {
      const group = text.charCodeAt(position) - 48;
      value |= (group & 0x1f) << shift;
      more = (group & 0x20) !== 0;
      position += 1;
      shift += 5;
      if (!more && group & 0x10) value |= -1 << shift;
    }
    runs.push(runs.length > 2 ? value + runs[runs.length - 2] : value);
  }
  return runs;
}

/** {size: [h, w], counts} -> the compressed RLE the API takes. */
export function encodeMask(mask, height, width) {
  return { size: [height, width], counts: runsToString(maskRuns(mask, height, width)) };
}

/** A stored mask {size, counts} -> its pixels inside bbox [x, y, w, h] (SA-1B: no +1),
 * as {x, y, width, height, data} with data row-major over the bbox (1 = inside). */
export function decodeCrop(rle, bbox) {
  const [height] = rle.size;
  const [x0, y0] = [bbox[0], bbox[1]];
  const crop = { x: x0, y: y0, width: bbox[2] + 1, height: bbox[3] + 1 };
  crop.data = new Uint8Array(crop.width * crop.height);
  const runs = typeof rle.counts === "string" ? stringToRuns(rle.counts) : rle.counts;
  let position = 0;
  for (let i = 0; i < runs.length; i += 1) {
    if (i % 2 === 1) fillRun(crop, position, runs[i], height);
    position += runs[i];
  }
  return crop;
}

function fillRun(crop, start, length, height) {
  for (let p = start; p < start + length; p += 1) {
    const x = Math.floor(p / height) - crop.x;
    const y = (p % height) - crop.y;
    if (x >= 0 && y >= 0 && x < crop.width && y < crop.height) crop.data[y * crop.width + x] = 1;
  }
}
