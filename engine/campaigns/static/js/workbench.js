// The object being made on the current image: pointer input and tools, the decoder run at
// the work size, the mask painted over the image, and what accept and skip send.

import { thresholdToken } from "./decoder.js";
import { clamp } from "./geometry.js";
import { ObjectEditor } from "./object.js";
import { applyStroke, countInside, paintMask } from "./raster.js";
import { encodeMask } from "./rle.js";
import { drawPrompts } from "./view.js";

const WORK_COLOR = [30, 144, 255, 150];

export class Workbench {
  /** el(id) -> element; stage: the Stage; on: {changed(), decoded(ms)}. */
  constructor(el, stage, on) {
    Object.assign(this, { el, stage, on, view: null, editor: null, tool: "prompt", brushSize: 12 });
    Object.assign(this, { rubber: null, cursor: null, stroke: null, preview: null });
  }

  /** Start on an image. view: {lease, decoder, embedding, work: [h, w]}; saved: an object
   * history kept from before a reload, or null. */
  open(view, saved) {
    const { width, height } = view.lease.image;
    this.view = { ...view, scale: [view.work[1] / width, view.work[0] / height] };
    const canvas = this.el("work-layer");
    [canvas.width, canvas.height] = [view.work[1], view.work[0]];
    this.newObject(saved);
  }

  close() {
    this.view = null;
    this.editor = null;
    this.render();
  }

  newObject(saved = null, carried = null) {
    if (!this.view) return;
    const { work, scale } = this.view;
    this.editor = new ObjectEditor({
      decode: (p, m) => this.decode(p, m),
      work,
      scale,
      onChange: () => this.render(),
      carried,
    });
    if (saved) this.editor.restore(saved);
    this.render();
  }

  /** Esc: start the object over, its clicks and time still counting; on an object with
   * nothing on it, forget it (a new object, nothing counted). */
  clear() {
    const editor = this.editor;
    if (!editor) return;
    this.newObject(null, editor.empty ? null : editor.carried());
  }

  /** Decode a prompt (stored-image pixels) at the work size. */
  async decode(prompt, maskInput) {
    const { decoder, embedding, work, scale } = this.view;
    const [sx, sy] = scale;
    const scaled = {
      points: prompt.points.map(([x, y, label]) => [x * sx, y * sy, label]),
      box: prompt.box && [
        prompt.box[0] * sx,
        prompt.box[1] * sy,
        prompt.box[2] * sx,
        prompt.box[3] * sy,
      ],
    };
    const result = await decoder.run({ embedding, prompt: scaled, maskInput, size: work });
    this.on.decoded(result.ms);
    return result;
  }

  /** The object's mask at the stored size: the last prompt decoded again at that size (when
   * the work size is smaller), with the strokes drawn at that size. */
  async finalMask() {
    const { decoder, embedding, work, lease } = this.view;
    const { height, width } = lease.image;
    if (work[0] === height && work[1] === width) return this.editor.mask();
    const last = this.editor.lastDecode();
    let mask = this.editor.startMask(height, width);
    if (last) {
      const result = await decoder.run({
        embedding,
        prompt: last.prompt,
        maskInput: last.maskInput,
        size: [height, width],
      });
      mask = thresholdToken(result, last.token);
    }
    for (const stroke of this.editor.effectiveStrokes()) applyStroke(mask, width, height, stroke);
    return mask;
  }

  /** The object as the API's mask body and its pixels ({body, mask, editor}); null when
   * the mask is empty. The object stays (see accepted()), so it can still be changed. */
  async accept() {
    const { editor, view } = this;
    if (!view || !editor) return null;
    await editor.queue;
    const mask = await this.finalMask();
    if (this.editor !== editor || !countInside(mask)) return null;
    const { height, width } = view.lease.image;
    const last = editor.lastDecode();
    const body = {
      rle: encodeMask(mask, height, width),
      model_sha256: view.lease.model.sha256,
      prompts: editor.prompt(),
      clicks: editor.clicks,
      brush_strokes: editor.strokes,
      seconds: (Date.now() - editor.startedAt) / 1000,
      predicted_iou: last ? last.iou : null,
    };
    return { body, mask, editor, cursor: editor.cursor };
  }

  /** The object just accepted is sent: start the next one. */
  accepted() {
    this.newObject();
  }

  /** The skipped object as the API's skip-object body; null when it has no clicks yet. */
  skip() {
    const { editor } = this;
    if (!editor || editor.empty) return null;
    const body = {
      seconds: (Date.now() - editor.startedAt) / 1000,
      clicks: editor.clicks,
      prompts: editor.prompt(),
    };
    this.newObject();
    return body;
  }

  render() {
    if (!this.editor) {
      drawPrompts(this.el("prompt-layer"), { points: [], box: null, zoom: this.stage.zoom });
      this.el("object-info").textContent = "";
      return this.on.changed();
    }
    if (!this.stroke) this.paint(this.editor.mask());
    this.drawOverlay();
    const step = this.editor.lastStep();
    const iou = step && step.result.iou[step.tokens[step.choice]];
    const choice = step && step.tokens.length > 1 ? ` · mask ${step.choice + 1}/3 (Tab)` : "";
    this.el("object-info").textContent = step ? `predicted IoU ${iou.toFixed(2)}${choice}` : "";
    document.body.dataset.decoding = String(this.editor.pending);
    this.on.changed();
  }

  paint(mask) {
    const canvas = this.el("work-layer");
    const context = canvas.getContext("2d");
    const image = context.createImageData(canvas.width, canvas.height);
    paintMask(image.data, mask, WORK_COLOR);
    context.putImageData(image, 0, 0);
  }

  drawOverlay() {
    const prompt = this.editor ? this.editor.prompt() : { points: [], box: null };
    const brush =
      this.cursor && this.tool !== "prompt"
        ? { ...this.cursor, radius: this.brushSize / 2, mode: this.tool }
        : null;
    drawPrompts(this.el("prompt-layer"), {
      ...prompt,
      rubber: this.rubber,
      brush,
      zoom: this.stage.zoom,
    });
  }

  setTool(tool) {
    this.tool = tool;
    for (const button of document.querySelectorAll("[data-tool]"))
      button.classList.toggle("active", button.dataset.tool === tool);
    this.el("viewport").dataset.tool = tool;
    this.drawOverlay();
  }

  setBrushSize(size) {
    this.brushSize = clamp(Math.round(size), 1, 200);
    this.el("brush-size").value = String(this.brushSize);
    this.el("brush-size-value").textContent = `${this.brushSize} px`;
    this.drawOverlay();
  }

  /** The pointer handlers (see input.js); select(at) is the caller's. */
  pointerHandlers(select) {
    const pixel = ([x, y]) => {
      const { width, height } = this.view.lease.image;
      return [clamp(Math.floor(x), 0, width - 1), clamp(Math.floor(y), 0, height - 1)];
    };
    return {
      tool: () => this.tool,
      point: (x, y, label) => {
        if (!this.view) return;
        const [px, py] = pixel([x, y]);
        this.editor.add({ kind: "point", x: px, y: py, label });
      },
      box: (box) => {
        if (!this.view) return;
        this.editor.add({ kind: "box", box: [...pixel(box.slice(0, 2)), ...pixel(box.slice(2))] });
      },
      rubber: (box) => {
        this.rubber = box;
        this.drawOverlay();
      },
      hover: (at) => {
        this.cursor = at && { x: at[0], y: at[1] };
        if (this.tool !== "prompt") this.drawOverlay();
      },
      select,
      strokeStart: (at) => this.strokeStart(at),
      strokeMove: (at) => this.strokeMove(at),
      strokeEnd: () => this.strokeEnd(),
    };
  }

  strokeStart(at) {
    if (!this.view) return;
    this.stroke = { mode: this.tool, radius: this.brushSize / 2, points: [at] };
    this.preview = this.editor.mask();
    this.strokeMove(at);
  }

  /** Paint the new segment into the preview (the stroke joins the history when it ends). */
  strokeMove(at) {
    if (!this.stroke) return;
    const points = this.stroke.points;
    if (points[points.length - 1] !== at) points.push(at);
    const [h, w] = this.view.work;
    applyStroke(
      this.preview,
      w,
      h,
      { ...this.stroke, points: points.slice(-2) },
      ...this.view.scale,
    );
    this.paint(this.preview);
  }

  strokeEnd() {
    const stroke = this.stroke;
    this.stroke = null;
    if (stroke && this.editor) this.editor.add({ kind: "stroke", stroke });
  }
}
