// The annotation page: leases in, masks out. One image at a time (the next one fetched
// ahead), one object at a time (Workbench), every change through the Outbox.

import { Offline } from "./api.js";
import { Assets } from "./assets.js";
import { maskWarnings } from "./checks.js";
import { workSize } from "./geometry.js";
import { bindPointer } from "./input.js";
import { SHORTCUTS, bindKeys, renderHelp } from "./keys.js";
import { acceptedEntry, pendingEntry, storedEntry } from "./masks.js";
import { names } from "./names.js";
import { Outbox } from "./outbox.js";
import { MaskPanel } from "./panel.js";
import { LeaseSession } from "./session.js";
import { Messages, ObjectTimer } from "./status.js";
import { Stage } from "./view.js";
import { Workbench } from "./workbench.js";

const RETRY_OPEN_MS = 3000;
const HINTED_KEY = "saengine.hinted";
const FIRST_HINT =
  "Click an object to segment it (right click: a background point; drag: a box). Enter accepts the mask, Esc starts the object over, f finishes the image; h lists every key.";
const CHANGES = {
  mask: "A mask",
  delete: "A deletion",
  skip_object: "A skipped object",
  reject: "A rejection",
  finish: "Finishing the image",
  skip_image: "Skipping the image",
};

export class App {
  static SHORTCUTS = SHORTCUTS; // the keys of this mode of the page (keys.js)

  constructor({ api, ort, annotator, options }) {
    const el = (id) => document.getElementById(id);
    Object.assign(this, {
      el,
      api,
      options,
      lease: null,
      afterEnd: false,
      progress: null,
      confirm: null,
      limits: { warnIou: options.warnIou, duplicateIou: options.warnRepeat },
      stats: { decodeMs: [], workSizes: [] },
    });
    this.messages = new Messages(el("message"));
    this.assets = new Assets(api, ort, {
      quantized: options.quantized,
      maxImageSide: options.maxImageSide,
    });
    this.outbox = new Outbox(api, `saengine.outbox.${annotator.name}`, {
      change: () => this.renderStatus(),
      done: (item, answer) => this.saved(item, answer),
      refused: (item, error) => this.refused(item, error),
    });
    this.session = new LeaseSession(api, { expired: (lease) => this.expired(lease) });
    this.stage = new Stage(el("viewport"), el("stage"), el("prompt-layer"));
    this.timer = new ObjectTimer(el("timer"), el("timer-hint"));
    this.panel = new MaskPanel(el, (entry) => this.removeMask(entry));
    this.bench = new Workbench(el, this.stage, {
      changed: () => this.objectChanged(),
      decoded: (ms) => this.stats.decodeMs.push(ms),
    });
    this.stage.onZoom = () => this.bench.drawOverlay();
    bindPointer(
      el("viewport"),
      this.stage,
      this.bench.pointerHandlers(([x, y]) => this.panel.selectAt(x, y)),
    );
    const actions = this.actions();
    bindKeys(actions, this.constructor.SHORTCUTS);
    for (const button of document.querySelectorAll("[data-action]"))
      button.addEventListener("click", () => actions[button.dataset.action]());
    el("brush-size").addEventListener("input", (e) =>
      this.bench.setBrushSize(Number(e.target.value)),
    );
    renderHelp(el("help-body"), this.constructor.SHORTCUTS);
    window.addEventListener("online", () => this.outbox.flush());
  }

  async start() {
    this.outbox.flush();
    await this.leaseNext();
  }

  // Leases and images -----------------------------------------------------------------------

  async leaseNext() {
    this.messages.show("image", "Leasing an image…");
    try {
      await this.open(await this.session.leaseCurrent());
    } catch (error) {
      this.failed(error, () => this.leaseNext());
    }
  }

  /** Show a lease's image and make it ready to annotate once its embedding is there. */
  async open(lease) {
    const opening = (this.opening = Symbol("open"));
    this.lease = lease;
    this.bench.close();
    this.setReady(false);
    if (!lease) return this.queueEmpty();
    delete document.body.dataset.empty;
    this.showProgress(lease.progress);
    this.outbox.rebind(lease.image.image_id, lease.lease_id);
    this.messages.show("image", `Loading image ${lease.image.key}…`);
    try {
      this.showImage(lease, await this.assets.image(lease));
      const ready = await this.waitForModel(lease, opening);
      const [decoder, embedding] = await Promise.all([
        this.assets.decoder(ready.model),
        this.assets.embedding(ready),
      ]);
      if (this.opening !== opening) return;
      this.startAnnotating(ready, decoder, embedding);
    } catch (error) {
      if (this.opening === opening) this.failed(error, () => this.open(lease));
    }
  }

  showImage(lease, bitmap) {
    const { width, height, image_id: imageId, key, stage } = lease.image;
    const canvas = this.el("image-layer");
    [canvas.width, canvas.height] = [bitmap.width, bitmap.height];
    canvas.getContext("2d").drawImage(bitmap, 0, 0);
    const masks = this.el("masks-layer");
    [masks.width, masks.height] = [width, height];
    this.stage.setSize(height, width);
    const pending = this.outbox
      .pendingMasks(imageId)
      .map((item) => pendingEntry(item, this.outbox.held.includes(item)));
    this.panel.reset([
      ...lease.masks.filter((m) => m.state !== names.mask_state.REJECTED).map(storedEntry),
      ...pending,
    ]);
    const about =
      stage === names.stage.SEMI
        ? `stage ${stage}: prefilled masks are locked; add what is missing`
        : `stage ${stage}`;
    this.el("image-info").textContent = `${key} · ${width}×${height} · ${about}`;
    Object.assign(document.body.dataset, { image: String(imageId), lease: lease.lease_id });
  }

  startAnnotating(lease, decoder, embedding) {
    this.lease = lease;
    if (this.session.current?.lease_id === lease.lease_id) this.session.current = lease;
    const { width, height } = lease.image;
    const work = workSize(
      height,
      width,
      Math.max(...lease.model.input_size),
      this.options.workSide,
    );
    this.stats.workSizes.push(work);
    this.bench.open(
      { lease, decoder, embedding, work },
      JSON.parse(sessionStorage.getItem(this.objectKey()) ?? "null"),
    );
    this.messages.clear("image");
    this.setReady(true);
    if (!sessionStorage.getItem(HINTED_KEY)) this.messages.show("hint", FIRST_HINT);
    this.prefetchAhead();
  }

  /** The lease once its embedding is ready; meanwhile the time waited and the server's
   * estimate of the time left are shown. */
  async waitForModel(lease, opening) {
    if (lease.model) return lease;
    const started = Date.now();
    let estimate = { etaS: lease.embedding_eta_s, at: started };
    const say = () => {
      const waited = Math.round((Date.now() - started) / 1000);
      const left =
        estimate.etaS === null ? null : estimate.etaS - (Date.now() - estimate.at) / 1000;
      const more =
        left === null
          ? "no estimate yet"
          : left > 1
            ? `about ${Math.round(left)} s more`
            : "any moment now";
      this.messages.show(
        "image",
        `Waiting for this image's embedding (the embed job is computing it): ${waited} s so far, ${more}…`,
      );
    };
    say();
    const timer = setInterval(say, 1000);
    try {
      return await this.session.withModel(
        lease,
        () => this.opening === opening,
        (polled) => (estimate = { etaS: polled.embedding_eta_s, at: Date.now() }),
      );
    } finally {
      clearInterval(timer);
    }
  }

  /** Lease the next image ahead and fetch its image, embedding and decoder. */
  async prefetchAhead() {
    try {
      const ahead = this.session.ahead ?? (await this.session.leaseAhead());
      if (!ahead) return;
      this.assets.image(ahead);
      const ready = await this.session.withModel(
        ahead,
        () => this.session.ahead?.lease_id === ahead.lease_id,
      );
      if (this.session.ahead?.lease_id !== ready.lease_id) return;
      this.session.ahead = ready;
      await this.assets.embedding(ready);
    } catch (error) {
      console.warn("prefetching the next image failed", error);
    }
  }

  /** Nothing leased: no image on screen (and nothing to click), what was done so far. */
  queueEmpty() {
    document.body.dataset.empty = "1";
    this.panel.reset([]);
    const picture = this.el("image-layer");
    [picture.width, picture.height] = [0, 0];
    this.el("image-info").textContent = "no image";
    this.messages.clear("hint");
    this.showProgress(null);
    const waiting = this.session.waiting;
    if (waiting) {
      this.messages.show("image", `${waiting} images are being prefilled; checking again…`);
      setTimeout(() => this.leaseNext(), 5000);
      return;
    }
    this.messages.show("image", "No images left in the queue.", "info", {
      label: "Check again",
      run: () => this.leaseNext(),
    });
  }

  failed(error, retry) {
    if (error instanceof Offline) {
      const action = { label: "Retry now", run: retry };
      this.messages.show(
        "image",
        "Connection lost while loading the image; trying again…",
        "error",
        action,
      );
      setTimeout(
        () => this.messages.action("image") === action && (this.messages.clear("image"), retry()),
        RETRY_OPEN_MS,
      );
    } else {
      this.messages.show("image", `Could not load the image: ${error.message}`, "error", {
        label: "Retry",
        run: retry,
      });
    }
  }

  expired(lease) {
    if (this.lease?.lease_id !== lease.lease_id) return;
    this.bench.close();
    this.setReady(false);
    const text =
      "Your lease on this image expired (the server heard nothing from this page in time). The masks you accepted are kept.";
    this.messages.show("image", text, "error", {
      label: "Lease an image",
      run: () => this.leaseNext(),
    });
  }

  /** Finish (or skip) the image: the change waits in the outbox; the next image shows now. */
  endImage(kind) {
    if (!this.lease || !document.body.dataset.ready) return;
    if (this.bench.editor && !this.bench.editor.empty) {
      return this.notice("Accept (Enter) or clear (Esc) the current object first.");
    }
    this.outbox.push({ kind, lease_id: this.lease.lease_id, image_id: this.lease.image.image_id });
    if (kind === "finish" && this.progress) {
      this.progress.done += 1;
      this.progress.left = Math.max(0, this.progress.left - 1);
      this.progress.mine += 1;
    }
    sessionStorage.removeItem(this.objectKey());
    const next = this.session.advance();
    this.assets.keepOnly(next ? [next.image.image_id] : []);
    this.afterEnd = !next;
    this.open(next).then(
      () =>
        this.afterEnd && this.messages.show("image", "Saving the image, then leasing the next…"),
    );
  }

  /** The server has the finish or skip: lease what comes after it. */
  imageEnded() {
    if (!this.afterEnd) return this.prefetchAhead();
    this.afterEnd = false;
    this.leaseNext();
  }

  saved(item, answer) {
    if (item.kind === "mask")
      this.panel.update(`c${item.client_id}`, { maskId: answer.mask_id, state: "saved" });
    if (item.kind === "finish" || item.kind === "skip_image") this.imageEnded();
  }

  refused(item, error) {
    const held = this.outbox.held.includes(item);
    const kept = held
      ? " (it is kept in this page and sent again if this image comes back to you)"
      : "";
    const text = `${CHANGES[item.kind]} was not saved: ${error.detail}${kept}`;
    this.messages.show("save", text, "error", { label: "Dismiss", run: () => {} });
    if (item.kind === "mask" && held) this.panel.update(`c${item.client_id}`, { state: "held" });
    else if (item.kind === "mask") this.panel.drop(`c${item.client_id}`);
    if (item.kind === "finish" || item.kind === "skip_image") this.imageEnded();
  }

  // The object and the image's masks --------------------------------------------------------

  /** Accept the object's mask: checked first (a mask the model is unsure of, or one nearly
   * repeating another of the image, is accepted only with a second Enter), then sent. */
  async accept() {
    const lease = this.lease;
    const accepted = await this.bench.accept();
    if (!accepted)
      return this.notice("The mask is empty: add a point, a box or brush strokes first.", "warn");
    const { height, width, image_id: imageId } = lease.image;
    const warnings = maskWarnings({
      mask: accepted.mask,
      width,
      iou: accepted.body.predicted_iou,
      entries: this.panel.entries,
      limits: this.limits,
    });
    const confirmed = this.confirm?.editor === accepted.editor;
    if (warnings.length && !confirmed) {
      this.confirm = { editor: accepted.editor };
      const text = `Check this mask: ${warnings.join("; ")}. Enter accepts it anyway; or change it (Esc starts it over).`;
      return this.messages.show("object", text, "warn");
    }
    this.confirm = null;
    this.bench.accepted();
    const item = this.outbox.push({
      kind: "mask",
      lease_id: lease.lease_id,
      image_id: imageId,
      body: accepted.body,
    });
    if (this.lease === lease)
      this.panel.add(acceptedEntry(item.client_id, accepted.mask, height, width));
    this.messages.clear("object");
  }

  skipObject() {
    const body = this.bench.skip();
    if (!body) return this.notice("Nothing to skip: this object has no clicks yet.");
    this.outbox.push({
      kind: "skip_object",
      lease_id: this.lease.lease_id,
      image_id: this.lease.image.image_id,
      body,
    });
    this.notice("Object skipped.", "info");
  }

  /** Delete one's mask or reject a prefilled one (a mask not sent yet is simply dropped). */
  removeMask(entry) {
    if (!entry || !this.lease) return;
    const change = { lease_id: this.lease.lease_id, image_id: this.lease.image.image_id };
    if (entry.origin === names.mask_origin.PREFILLED)
      this.outbox.push({ kind: "reject", mask_id: entry.maskId, ...change });
    else if (entry.maskId) this.outbox.push({ kind: "delete", mask_id: entry.maskId, ...change });
    else if (!this.outbox.cancel(entry.clientId))
      this.outbox.push({ kind: "delete", mask_client_id: entry.clientId, ...change });
    this.panel.drop(entry.key);
  }

  removeSelected(origin) {
    const entry = this.panel.find(this.panel.selected);
    if (!entry) return this.notice("Select a mask first (Alt+click it, or n).");
    if (entry.origin !== origin) {
      const hint =
        origin === names.mask_origin.MANUAL
          ? "Prefilled masks are rejected (x), not deleted."
          : "Only prefilled masks are rejected; delete your own (Delete).";
      return this.notice(hint);
    }
    this.removeMask(entry);
  }

  objectChanged() {
    const editor = this.bench.editor;
    if (editor && this.lease)
      sessionStorage.setItem(this.objectKey(), JSON.stringify(editor.snapshot()));
    if (this.confirm) {
      this.confirm = null; // the mask changed: checked again on the next Enter
      this.messages.clear("object");
    }
    if (editor?.begun && !sessionStorage.getItem(HINTED_KEY)) {
      sessionStorage.setItem(HINTED_KEY, "1");
      this.messages.clear("hint");
    }
    this.timer.follow(editor ? editor.startedAt : null);
    this.renderStatus();
    this.renderControls();
  }

  // Status and controls ---------------------------------------------------------------------

  renderStatus() {
    const waiting = this.outbox.size;
    const held = this.outbox.held.length;
    document.body.dataset.outbox = String(waiting);
    const parts = [
      waiting ? `${waiting} change${waiting > 1 ? "s" : ""} waiting to be saved` : "",
      held ? `${held} mask${held > 1 ? "s" : ""} not saved (lease ended)` : "",
    ].filter(Boolean);
    this.el("outbox-status").textContent = parts.join(", ") || "all saved";
    const times = this.stats.decodeMs;
    if (times.length)
      this.el("decode-status").textContent = `decode ${times[times.length - 1].toFixed(0)} ms`;
  }

  /** A short notice about the object or an action (fades). */
  notice(text, level = "warn") {
    this.messages.show("object", text, level, null, 6000);
  }

  setReady(ready) {
    if (ready) document.body.dataset.ready = "1";
    else delete document.body.dataset.ready;
    this.renderControls();
  }

  /** Buttons are enabled only when they can do something now. */
  renderControls() {
    const ready = Boolean(document.body.dataset.ready);
    const editor = ready ? this.bench.editor : null;
    const step = editor?.lastStep();
    const possible = {
      accept: Boolean(editor && !editor.empty),
      skipObject: Boolean(editor && !editor.empty),
      clear: Boolean(editor?.begun),
      undo: Boolean(editor && editor.cursor > 0),
      redo: Boolean(editor && editor.cursor < editor.actions.length),
      cycle: Boolean(step && step.tokens.length > 1),
    };
    for (const button of document.querySelectorAll("#toolbar [data-action]")) {
      const action = button.dataset.action;
      button.disabled = action === "help" ? false : !(possible[action] ?? ready);
    }
    this.el("brush-size").disabled = !ready;
  }

  /** "image k of N · n left" (k counts the images done before this one). */
  showProgress(progress) {
    if (progress && (!this.progress || progress.done >= this.progress.done))
      this.progress = { ...progress };
    const p = this.progress;
    if (!p) return;
    this.el("progress").textContent = this.lease
      ? `image ${Math.min(p.done + 1, p.total)} of ${p.total} · ${p.left} left`
      : `${p.done} of ${p.total} images done`;
  }

  objectKey() {
    return `saengine.object.${this.lease?.image.image_id}`;
  }

  zoom(factor) {
    if (factor === null) this.stage.fit();
    else this.stage.zoomAt(factor);
  }

  actions() {
    const editor = (run) => () => this.bench.editor && run(this.bench.editor);
    const bench = this.bench;
    return {
      accept: () => this.accept(),
      skipObject: () => this.skipObject(),
      clear: editor(() => bench.clear()),
      undo: editor((e) => e.undo()),
      redo: editor((e) => e.redo()),
      cycle: editor((e) => e.cycle()),
      toolPrompt: () => bench.setTool("prompt"),
      toolBrush: () => bench.setTool("brush"),
      toolEraser: () => bench.setTool("eraser"),
      sizeDown: () => bench.setBrushSize(bench.brushSize / 1.25),
      sizeUp: () => bench.setBrushSize(bench.brushSize * 1.25 + 0.5),
      selectNext: () => this.panel.selectNext(),
      deleteMask: () => this.removeSelected(names.mask_origin.MANUAL),
      rejectPrefilled: () => this.removeSelected(names.mask_origin.PREFILLED),
      finishImage: () => this.endImage("finish"),
      skipImage: () => this.endImage("skip_image"),
      toggleMasks: () => this.el("masks-layer").classList.toggle("hidden"),
      zoomIn: () => this.zoom(1.25),
      zoomOut: () => this.zoom(0.8),
      fit: () => this.zoom(null),
      help: () => this.el("help").classList.toggle("hidden"),
    };
  }
}
