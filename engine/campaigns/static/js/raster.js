// Pixel-exact brush and eraser strokes, and masks painted into canvas pixels.

/** Apply a stroke to a mask. stroke: {mode: "brush" | "eraser", radius, points: [[x, y]]}
 * with the radius and points in stored-image pixels; the mask is width x height mask pixels
 * covering the stored image (scaleX, scaleY: mask pixels per image pixel). A pixel is
 * covered when its centre lies within the radius of the stroke's polyline (a disc for a
 * single point), so the same stroke gives the same pixels every time at a given size. */
export function applyStroke(mask, width, height, stroke, scaleX = 1, scaleY = scaleX) {
  const value = stroke.mode === "eraser" ? 0 : 1;
  const radius = (stroke.radius * (scaleX + scaleY)) / 2;
  const points = stroke.points.map(([x, y]) => [x * scaleX, y * scaleY]);
  for (let i = 0; i < points.length; i += 1) {
    const from = points[Math.max(0, i - 1)];
    fillSegment(mask, width, height, from, points[i], radius, value);
  }
}

function fillSegment(mask, width, height, [ax, ay], [bx, by], radius, value) {
  const x0 = Math.max(0, Math.floor(Math.min(ax, bx) - radius));
  const x1 = Math.min(width - 1, Math.ceil(Math.max(ax, bx) + radius));
  const y0 = Math.max(0, Math.floor(Math.min(ay, by) - radius));
  const y1 = Math.min(height - 1, Math.ceil(Math.max(ay, by) + radius));
  const r2 = radius * radius;
  for (let y = y0; y <= y1; y += 1) {
    for (let x = x0; x <= x1; x += 1) {
      if (distanceSquared(x + 0.5, y + 0.5, ax, ay, bx, by) <= r2) mask[y * width + x] = value;
    }
  }
}

/** Squared distance from (px, py) to the segment a-b. */
export function distanceSquared(px, py, ax, ay, bx, by) {
  const dx = bx - ax;
  const dy = by - ay;
  const length2 = dx * dx + dy * dy;
  const t =
    length2 === 0 ? 0 : Math.max(0, Math.min(1, ((px - ax) * dx + (py - ay) * dy) / length2));
  const ex = ax + t * dx - px;
  const ey = ay + t * dy - py;
  return ex * ex + ey * ey;
}

/** Paint a mask into RGBA pixels (an ImageData's data, same width x height): inside pixels
 * get the colour [r, g, b, a]; others are cleared. */
export function paintMask(pixels, mask, color) {
  const [r, g, b, a] = color;
  for (let i = 0, p = 0; i < mask.length; i += 1, p += 4) {
    const inside = mask[i] !== 0;
    pixels[p] = inside ? r : 0;
    pixels[p + 1] = inside ? g : 0;
    pixels[p + 2] = inside ? b : 0;
    pixels[p + 3] = inside ? a : 0;
  }
}

/** Paint a mask crop ({x, y, width, height, data}) over RGBA pixels of an image-sized
 * layer; its edge pixels get `edge`, striped masks leave every other diagonal band lighter. */
export function paintCrop(pixels, layerWidth, crop, { fill, edge, striped = false }) {
  for (let y = 0; y < crop.height; y += 1) {
    for (let x = 0; x < crop.width; x += 1) {
      if (!crop.data[y * crop.width + x]) continue;
      const gx = crop.x + x;
      const gy = crop.y + y;
      let color = isEdge(crop, x, y) ? edge : fill;
      if (striped && color === fill && ((gx + gy) >> 3) % 2 === 1)
        color = [...fill.slice(0, 3), fill[3] >> 1];
      pixels.set(color, (gy * layerWidth + gx) * 4);
    }
  }
}

function isEdge(crop, x, y) {
  const inside = (i, j) =>
    i >= 0 && j >= 0 && i < crop.width && j < crop.height && crop.data[j * crop.width + i] !== 0;
  return !inside(x - 1, y) || !inside(x + 1, y) || !inside(x, y - 1) || !inside(x, y + 1);
}

/** Number of nonzero entries. */
export function countInside(mask) {
  let count = 0;
  for (let i = 0; i < mask.length; i += 1) count += mask[i] !== 0 ? 1 : 0;
  return count;
}
