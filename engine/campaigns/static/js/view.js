// The image on screen: a stage of layers the size of the stored image (CSS pixels = image
// pixels), moved and scaled with a CSS transform for fit, zoom and pan.

import { clamp } from "./geometry.js";

const SVG = "http://www.w3.org/2000/svg";

export class Stage {
  constructor(viewport, stage, overlay) {
    this.viewport = viewport;
    this.stage = stage;
    this.overlay = overlay;
    this.size = [1, 1];
    this.zoom = 1;
    this.tx = 0;
    this.ty = 0;
    this.fitted = true;
    this.onZoom = () => {};
    new ResizeObserver(() => this.fitted && this.fit()).observe(viewport);
  }

  /** A new image of height x width stored pixels, fitted to the viewport. */
  setSize(height, width) {
    this.size = [height, width];
    this.stage.style.width = `${width}px`;
    this.stage.style.height = `${height}px`;
    this.overlay.setAttribute("viewBox", `0 0 ${width} ${height}`);
    this.fit();
  }

  fit() {
    const [height, width] = this.size;
    const box = this.viewport.getBoundingClientRect();
    this.zoom = Math.min(box.width / width, box.height / height);
    this.tx = (box.width - width * this.zoom) / 2;
    this.ty = (box.height - height * this.zoom) / 2;
    this.fitted = true;
    this.apply();
  }

  /** Show the box [x, y, w, h] (stored pixels) with `margin` of its size around it, centred
   * (never zoomed in beyond 4 screen pixels per image pixel). */
  focus([x, y, w, h], margin = 0.6) {
    const box = this.viewport.getBoundingClientRect();
    const [side, tall] = [w * (1 + 2 * margin) + 1, h * (1 + 2 * margin) + 1];
    this.zoom = clamp(Math.min(box.width / side, box.height / tall), 0.02, 4);
    this.tx = box.width / 2 - (x + w / 2) * this.zoom;
    this.ty = box.height / 2 - (y + h / 2) * this.zoom;
    this.fitted = false;
    this.apply();
  }

  /** Zoom by `factor` keeping the image point under (clientX, clientY) in place. */
  zoomAt(factor, clientX, clientY) {
    const box = this.viewport.getBoundingClientRect();
    const px = (clientX ?? box.left + box.width / 2) - box.left;
    const py = (clientY ?? box.top + box.height / 2) - box.top;
    const [ix, iy] = [(px - this.tx) / this.zoom, (py - this.ty) / this.zoom];
    this.zoom = clamp(this.zoom * factor, 0.02, 64);
    this.fitted = false;
    this.tx = px - ix * this.zoom;
    this.ty = py - iy * this.zoom;
    this.apply();
  }

  panBy(dx, dy) {
    this.fitted = false;
    this.tx += dx;
    this.ty += dy;
    this.apply();
  }

  apply() {
    this.stage.style.transform = `translate(${this.tx}px, ${this.ty}px) scale(${this.zoom})`;
    this.onZoom();
  }

  /** Client (viewport) coordinates -> stored-image pixels (fractional). */
  toImage(clientX, clientY) {
    const box = this.stage.getBoundingClientRect();
    const [height, width] = this.size;
    return [
      ((clientX - box.left) * width) / box.width,
      ((clientY - box.top) * height) / box.height,
    ];
  }

  /** Stored-image pixels -> client coordinates (the centre of pixel (x, y) for integers). */
  toClient(x, y) {
    const box = this.stage.getBoundingClientRect();
    const [height, width] = this.size;
    return [
      box.left + ((x + 0.5) * box.width) / width,
      box.top + ((y + 0.5) * box.height) / height,
    ];
  }
}

/** Draw the prompts over the image: points (foreground, background), the box, the box being
 * dragged and the brush outline, in stored-image pixels. */
export function drawPrompts(overlay, { points, box, rubber, brush, zoom }) {
  overlay.replaceChildren();
  const radius = 6 / zoom;
  for (const [x, y, label] of points) {
    overlay.append(
      svg("circle", {
        cx: x + 0.5,
        cy: y + 0.5,
        r: radius,
        class: label ? "point fg" : "point bg",
      }),
    );
  }
  for (const [rect, kind] of [
    [box, "box"],
    [rubber, "box rubber"],
  ]) {
    if (!rect) continue;
    const [x0, y0, x1, y1] = rect;
    overlay.append(svg("rect", { x: x0, y: y0, width: x1 - x0, height: y1 - y0, class: kind }));
  }
  if (brush)
    overlay.append(
      svg("circle", { cx: brush.x, cy: brush.y, r: brush.radius, class: `brush ${brush.mode}` }),
    );
}

function svg(tag, attributes) {
  const element = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) element.setAttribute(name, String(value));
  return element;
}
