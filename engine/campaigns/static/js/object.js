// The object being annotated: its prompts and strokes as a history with undo and redo, the
// decoder run once per prompt (each new prompt feeds the previous low-res logits back as the
// mask input), and the mask they make: the latest decoder mask with the strokes over it.

import { candidateTokens, lowResToken, thresholdToken } from "./decoder.js";
import { applyStroke } from "./raster.js";

/** One object's history. decode(prompt, maskInput) -> a decoder result at the work size
 * (prompt in stored-image pixels); work: [h, w]; scale: [x, y] work pixels per image pixel;
 * carried: {clicks, strokes, startedAt} of the same object before it was cleared (its clicks
 * and time count for the mask finally accepted), or null for a new object. */
export class ObjectEditor {
  constructor({ decode, work, scale, onChange, carried = null }) {
    this.decode = decode;
    this.work = work;
    this.scale = scale;
    this.onChange = onChange;
    this.actions = [];
    this.steps = [];
    this.cursor = 0;
    this.clicks = carried?.clicks ?? 0;
    this.strokes = carried?.strokes ?? 0;
    this.startedAt = carried?.startedAt ?? null;
    this.queue = Promise.resolve();
    this.pending = 0;
  }

  get empty() {
    return this.cursor === 0;
  }

  /** Clicks, strokes or time spent on this object so far (also before a clear). */
  get begun() {
    return this.startedAt !== null;
  }

  /** What a clear keeps of the object: its clicks, strokes and first interaction. */
  carried() {
    return { clicks: this.clicks, strokes: this.strokes, startedAt: this.startedAt };
  }

  /** Add a prompt ({kind: "point", x, y, label} or {kind: "box", box}) or a stroke ({kind:
   * "stroke", stroke}); what was undone can no longer be redone. */
  add(action) {
    this.startedAt ??= Date.now();
    this.actions.length = this.cursor;
    this.steps.length = this.cursor;
    this.actions.push(action);
    this.cursor += 1;
    if (action.kind === "stroke") this.strokes += 1;
    else this.clicks += 1;
    if (action.kind !== "stroke") this.schedule(this.cursor - 1);
    this.onChange();
  }

  undo() {
    if (this.cursor === 0) return false;
    this.cursor -= 1;
    this.onChange();
    return true;
  }

  redo() {
    if (this.cursor >= this.actions.length) return false;
    this.cursor += 1;
    if (this.actions[this.cursor - 1].kind !== "stroke" && !this.steps[this.cursor - 1]) {
      this.schedule(this.cursor - 1);
    }
    this.onChange();
    return true;
  }

  /** Show the next of the three multimask outputs (single point prompts only). */
  cycle() {
    const step = this.lastStep();
    if (!step || step.tokens.length < 2) return false;
    step.choice = (step.choice + 1) % step.tokens.length;
    step.mask = null;
    this.actions.length = this.cursor;
    this.steps.length = this.cursor;
    this.onChange();
    return true;
  }

  /** Decode prompt action `index` after the decodes before it. */
  schedule(index, choice = 0) {
    const action = this.actions[index];
    this.pending += 1;
    this.queue = this.queue.then(async () => {
      try {
        if (this.actions[index] !== action) return;
        const prompt = this.promptAt(index + 1);
        const maskInput = this.maskInputBefore(index);
        const result = await this.decode(prompt, maskInput);
        if (this.actions[index] !== action) return;
        const tokens = candidateTokens(prompt.points, prompt.box, result.iou);
        this.steps[index] = {
          result,
          tokens,
          choice: Math.min(choice, tokens.length - 1),
          maskInput,
          prompt,
          mask: null,
        };
      } finally {
        this.pending -= 1;
        this.onChange();
      }
    });
    return this.queue;
  }

  /** Points and box of the first `count` actions (a later box replaces an earlier one). */
  promptAt(count) {
    const points = [];
    let box = null;
    for (const action of this.actions.slice(0, count)) {
      if (action.kind === "point") points.push([action.x, action.y, action.label]);
      if (action.kind === "box") box = action.box;
    }
    return { points, box };
  }

  prompt() {
    return this.promptAt(this.cursor);
  }

  /** The mask input of prompt action `index`: the previous decode's low-res logits, none
   * for the first (a correction gives the proposed mask's). */
  maskInputBefore(index) {
    const before = this.stepBefore(index);
    return before ? lowResToken(before.result, before.tokens[before.choice]) : null;
  }

  /** The mask before any decode, h x w covering the stored image: empty (a correction
   * starts from the proposed mask). */
  startMask(h, w) {
    return new Uint8Array(h * w);
  }

  stepBefore(index) {
    for (let i = index - 1; i >= 0; i -= 1)
      if (this.actions[i].kind !== "stroke") return this.steps[i];
    return null;
  }

  lastStep() {
    return this.stepBefore(this.cursor);
  }

  /** The mask at the work size (Uint8Array h x w, 1 = inside). */
  mask() {
    const [h, w] = this.work;
    const step = this.lastStep();
    let mask;
    if (step) {
      step.mask ??= thresholdToken(step.result, step.tokens[step.choice]);
      mask = step.mask.slice();
    } else mask = this.startMask(h, w);
    for (const stroke of this.effectiveStrokes()) applyStroke(mask, w, h, stroke, ...this.scale);
    return mask;
  }

  effectiveStrokes() {
    return this.actions
      .slice(0, this.cursor)
      .filter((a) => a.kind === "stroke")
      .map((a) => a.stroke);
  }

  /** What the final decode needs to redo the last prompt at another size: its prompt, mask
   * input and chosen output; null without prompts. */
  lastDecode() {
    const step = this.lastStep();
    if (!step) return null;
    const token = step.tokens[step.choice];
    return { prompt: step.prompt, maskInput: step.maskInput, token, iou: step.result.iou[token] };
  }

  /** The history as JSON-able data (kept across a page reload). */
  snapshot() {
    const choices = this.steps.map((s) => (s ? s.choice : 0));
    return {
      actions: this.actions,
      cursor: this.cursor,
      clicks: this.clicks,
      strokes: this.strokes,
      startedAt: this.startedAt,
      choices,
    };
  }

  /** Replay a snapshot: its prompts are decoded again in order. */
  restore(saved) {
    this.actions = saved.actions;
    this.cursor = saved.cursor;
    this.clicks = saved.clicks;
    this.strokes = saved.strokes;
    this.startedAt = saved.startedAt;
    this.actions.forEach((action, index) => {
      if (index < this.cursor && action.kind !== "stroke")
        this.schedule(index, saved.choices[index] ?? 0);
    });
    this.onChange();
    return this.queue;
  }
}
