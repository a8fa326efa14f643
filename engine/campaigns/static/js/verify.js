// The page in verify mode (SAM 3's verification queue): one proposed mask at a time, zoomed
// to, answered with one key: accept (y) or reject (n), optionally flagged "something is
// missing here" (m) first. The image's last answer finishes it and the next image (leased
// ahead and fetched while this one is answered) shows at once. No decoder and no embedding:
// only the image and the masks. Answers wait in the outbox like every change.

import { Offline } from "./api.js";
import { Assets } from "./assets.js";
import { VERIFY_SHORTCUTS, bindKeys, renderHelp } from "./keys.js";
import { paintMasks, storedEntry } from "./masks.js";
import { names } from "./names.js";
import { Outbox } from "./outbox.js";
import { LeaseSession } from "./session.js";
import { Messages } from "./status.js";
import { Stage } from "./view.js";

export class VerifyApp {
  constructor({ api, annotator, options }) {
    const el = (id) => document.getElementById(id);
    Object.assign(this, { el, api, lease: null, items: [], index: 0, missing: false });
    this.stats = { answers: 0, seconds: [] };
    document.body.dataset.mode = names.campaign_mode.VERIFY;
    this.messages = new Messages(el("message"));
    this.assets = new Assets(api, null, { maxImageSide: options.maxImageSide });
    this.outbox = new Outbox(api, `saengine.outbox.${annotator.name}`, {
      change: () => this.renderStatus(),
      done: (item) => this.saved(item),
      refused: (item, error) => this.refused(item, error),
    });
    this.session = new LeaseSession(api, { expired: (lease) => this.expired(lease) });
    this.stage = new Stage(el("viewport"), el("stage"), el("prompt-layer"));
    const actions = this.actions();
    bindKeys(actions, VERIFY_SHORTCUTS);
    for (const button of document.querySelectorAll("[data-verify]"))
      button.addEventListener("click", () => actions[button.dataset.verify]());
    renderHelp(el("help-body"), VERIFY_SHORTCUTS);
    window.addEventListener("online", () => this.outbox.flush());
  }

  async start() {
    this.outbox.flush();
    await this.leaseNext();
  }

  async leaseNext() {
    this.messages.show("image", "Leasing an image…");
    try {
      await this.open(await this.session.leaseCurrent());
    } catch (error) {
      this.failed(error, () => this.leaseNext());
    }
  }

  /** Show a lease's image and its first proposed mask not answered yet. */
  async open(lease) {
    this.lease = lease;
    delete document.body.dataset.ready;
    if (!lease) return this.queueEmpty();
    const answered = new Set(
      this.outbox.items.filter((i) => i.kind === "answer").map((i) => i.mask_id),
    );
    this.items = lease.masks
      .filter((m) => m.origin === names.mask_origin.PREFILLED)
      .filter((m) => m.state === names.mask_state.PROPOSED && !answered.has(m.mask_id))
      .map(storedEntry);
    this.index = 0;
    this.messages.show("image", `Loading image ${lease.image.key}…`);
    const bitmap = await this.assets.image(lease);
    if (this.lease !== lease) return;
    const { width, height } = lease.image;
    const canvas = this.el("image-layer");
    [canvas.width, canvas.height] = [bitmap.width, bitmap.height];
    canvas.getContext("2d").drawImage(bitmap, 0, 0);
    const masks = this.el("masks-layer");
    [masks.width, masks.height] = [width, height];
    this.stage.setSize(height, width);
    Object.assign(document.body.dataset, { image: String(lease.image.image_id) });
    this.messages.clear("image");
    this.show();
    this.prefetchAhead();
  }

  /** The current proposed mask, zoomed to; the image is finished after its last one. */
  show() {
    const entry = this.items[this.index];
    if (!entry) return this.finishImage();
    paintMasks(this.el("masks-layer"), [entry], entry.key);
    this.focus();
    const { key } = this.lease.image;
    this.el("verify-info").textContent =
      `${key} · mask ${this.index + 1} of ${this.items.length}: is it right?`;
    this.el("image-info").textContent = `${key} · verify`;
    document.body.dataset.item = String(entry.maskId);
    document.body.dataset.ready = "1";
    this.shownAt = Date.now();
    this.renderMissing();
  }

  focus() {
    const entry = this.items[this.index];
    if (entry) this.stage.focus([entry.crop.x, entry.crop.y, entry.crop.width, entry.crop.height]);
  }

  answer(verdict) {
    const entry = this.items[this.index];
    if (!entry || !document.body.dataset.ready) return;
    const seconds = (Date.now() - this.shownAt) / 1000;
    this.outbox.push({
      kind: "answer",
      mask_id: entry.maskId,
      lease_id: this.lease.lease_id,
      image_id: this.lease.image.image_id,
      body: { verdict, missing: this.missing, seconds },
    });
    this.stats.answers += 1;
    this.stats.seconds.push(seconds);
    this.missing = false;
    this.index += 1;
    this.show();
  }

  toggleMissing() {
    this.missing = !this.missing;
    this.renderMissing();
  }

  renderMissing() {
    this.el("verify-missing").classList.toggle("hidden", !this.missing);
  }

  /** Finish (or skip) the image: the change waits in the outbox; the next image shows now. */
  finishImage(kind = "finish") {
    if (!this.lease) return;
    delete document.body.dataset.ready;
    this.outbox.push({ kind, lease_id: this.lease.lease_id, image_id: this.lease.image.image_id });
    const next = this.session.advance();
    this.assets.keepOnly(next ? [next.image.image_id] : []);
    this.afterEnd = !next;
    if (next) this.open(next);
    else this.messages.show("image", "Saving the image, then leasing the next…");
  }

  async prefetchAhead() {
    try {
      const ahead = this.session.ahead ?? (await this.session.leaseAhead());
      if (ahead) this.assets.image(ahead);
    } catch (error) {
      console.warn("prefetching the next image failed", error);
    }
  }

  saved(item) {
    if (item.kind !== "finish" && item.kind !== "skip_image") return;
    if (!this.afterEnd) return this.prefetchAhead();
    this.afterEnd = false;
    this.leaseNext();
  }

  refused(item, error) {
    this.messages.show("save", `A change was not saved: ${error.detail}`, "error", {
      label: "Dismiss",
      run: () => {},
    });
    this.saved(item);
  }

  queueEmpty() {
    this.stage.setSize(1, 1);
    this.el("verify-info").textContent = "";
    const waiting = this.session.waiting;
    if (waiting) {
      this.messages.show("image", `${waiting} images are being prefilled; checking again…`);
      setTimeout(() => this.leaseNext(), 5000);
      return;
    }
    this.messages.show("image", "No masks left to verify.", "info", {
      label: "Check again",
      run: () => this.leaseNext(),
    });
  }

  failed(error, retry) {
    const text =
      error instanceof Offline
        ? "Connection lost while loading the image."
        : `Could not load the image: ${error.message}`;
    this.messages.show("image", text, "error", { label: "Retry", run: retry });
  }

  expired(lease) {
    if (this.lease?.lease_id !== lease.lease_id) return;
    delete document.body.dataset.ready;
    this.messages.show(
      "image",
      "Your lease on this image expired; answers given are kept.",
      "error",
      {
        label: "Lease an image",
        run: () => this.leaseNext(),
      },
    );
  }

  renderStatus() {
    const waiting = this.outbox.size;
    document.body.dataset.outbox = String(waiting);
    this.el("outbox-status").textContent = waiting
      ? `${waiting} change${waiting > 1 ? "s" : ""} waiting to be saved`
      : "all saved";
  }

  actions() {
    return {
      acceptMask: () => this.answer(names.verdict.KEEP),
      rejectMask: () => this.answer(names.verdict.REJECT),
      missing: () => this.toggleMissing(),
      skipImage: () => this.lease && this.finishImage("skip_image"),
      fit: () => this.stage.fit(),
      focus: () => this.focus(),
      help: () => this.el("help").classList.toggle("hidden"),
    };
  }
}
