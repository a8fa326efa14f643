// The page in audit mode: the annotation page (App) with each proposed mask of the image to
// review. The selected proposed mask is kept (k), corrected (c: clicks, brush and eraser
// starting from the mask, then Enter) or rejected (x); each answer carries the seconds from
// the mask's selection to the answer; objects nothing covers are added as new masks (clicks
// on the image, Enter). Finishing the image keeps the proposed masks left unanswered.

import { App } from "./app.js";
import { CorrectionEditor, startCorrection } from "./correction.js";
import { AUDIT_SHORTCUTS } from "./keys.js";
import { acceptedEntry } from "./masks.js";
import { names } from "./names.js";

const REVIEW_LABELS = () => ({
  [names.mask_state.PROPOSED]: "to review",
  [names.mask_state.KEPT]: "kept as it is",
});

export class AuditApp extends App {
  static SHORTCUTS = AUDIT_SHORTCUTS;

  constructor(args) {
    super(args);
    document.body.dataset.mode = names.campaign_mode.AUDIT;
    const actions = this.actions();
    for (const button of document.querySelectorAll("[data-audit]"))
      button.addEventListener("click", () => actions[button.dataset.audit]());
    this.reviewSince = Date.now();
    // Every selection (key n, Alt+click, the list) starts the selected mask's review time.
    const select = this.panel.select.bind(this.panel);
    this.panel.select = (key) => {
      if (key !== this.panel.selected) this.reviewSince = Date.now();
      select(key);
    };
  }

  showImage(lease, bitmap) {
    super.showImage(lease, bitmap);
    const states = new Map(lease.masks.map((m) => [m.mask_id, m.state]));
    for (const entry of this.panel.entries) {
      if (entry.origin !== names.mask_origin.PREFILLED) continue;
      entry.review = states.get(entry.maskId);
      entry.label = REVIEW_LABELS()[entry.review];
    }
    const { key, width, height } = lease.image;
    this.el("image-info").textContent =
      `${key} · ${width}×${height} · audit: keep (k), correct (c) or reject (x) each proposed mask; add what is missing`;
    this.nextProposed();
  }

  /** The selected entry when it is a proposed mask not answered yet, else null. */
  current() {
    const entry = this.panel.find(this.panel.selected);
    return entry && entry.review === names.mask_state.PROPOSED ? entry : null;
  }

  /** Select the next proposed mask to review (after the selected one, cyclically). */
  nextProposed() {
    const entries = this.panel.entries;
    const start = entries.findIndex((e) => e.key === this.panel.selected);
    for (let step = 1; step <= entries.length; step += 1) {
      const entry = entries[(start + step + entries.length) % entries.length];
      if (entry.review === names.mask_state.PROPOSED) return this.panel.select(entry.key);
    }
    this.panel.select(null);
    if (entries.length)
      this.notice("Every proposed mask is reviewed: add what is missing, then finish (f).", "info");
  }

  startAnnotating(lease, decoder, embedding) {
    super.startAnnotating(lease, decoder, embedding);
    this.reviewSince = Date.now(); // the image is on screen and ready
  }

  /** Keep or reject a proposed mask (the selected one unless given). */
  answer(verdict, entry = this.current()) {
    if (!entry) return this.notice("Select a proposed mask to review first (n).");
    if (this.bench.editor instanceof CorrectionEditor)
      return this.notice("Accept (Enter) or cancel (Esc) the correction first.");
    this.outbox.push({
      kind: "answer",
      mask_id: entry.maskId,
      lease_id: this.lease.lease_id,
      image_id: this.lease.image.image_id,
      body: { verdict, missing: false, seconds: (Date.now() - this.reviewSince) / 1000 },
    });
    if (verdict === names.verdict.REJECT) this.panel.drop(entry.key);
    else
      this.panel.update(entry.key, {
        review: names.mask_state.KEPT,
        label: REVIEW_LABELS()[names.mask_state.KEPT],
      });
    this.nextProposed();
  }

  /** Correct the selected proposed mask: the workbench starts from it. */
  correct() {
    const entry = this.current();
    if (!entry) return this.notice("Select a proposed mask to review first (n).");
    if (!this.bench.view) return this.notice("The image is not ready to edit yet.");
    if (this.bench.editor && !this.bench.editor.empty)
      return this.notice("Accept (Enter) or clear (Esc) the current object first.");
    startCorrection(this.bench, entry);
    this.notice("Correcting: click, brush (b) or erase (e), then Enter.", "info");
  }

  async accept() {
    const editor = this.bench.editor;
    if (!(editor instanceof CorrectionEditor)) return super.accept();
    const lease = this.lease;
    const entry = this.panel.entries.find((e) => e.maskId === editor.maskId);
    const accepted = await this.bench.accept();
    if (!accepted || !entry)
      return this.notice("The corrected mask is empty: reject it (x) instead.", "warn");
    accepted.body.seconds = (Date.now() - this.reviewSince) / 1000;
    this.bench.accepted(); // the correction is sent: the next object starts empty
    const { height, width, image_id: imageId } = lease.image;
    const item = this.outbox.push({
      kind: "correct",
      mask_id: entry.maskId,
      lease_id: lease.lease_id,
      image_id: imageId,
      body: accepted.body,
    });
    this.panel.drop(entry.key);
    this.panel.add({
      ...acceptedEntry(item.client_id, accepted.mask, height, width),
      label: "correction",
    });
    this.messages.clear("object");
    this.nextProposed();
  }

  /** The list's Reject button: a proposed mask is answered (rejected), a correction or an
   * added mask deleted as usual. */
  removeMask(entry) {
    if (entry?.origin !== names.mask_origin.PREFILLED) return super.removeMask(entry);
    if (entry.review === names.mask_state.PROPOSED) this.answer(names.verdict.REJECT, entry);
  }

  saved(item, answer) {
    if (item.kind === "correct")
      this.panel.update(`c${item.client_id}`, { maskId: answer.mask_id, state: "saved" });
    super.saved(item, answer);
  }

  refused(item, error) {
    if (item.kind === "correct") this.panel.drop(`c${item.client_id}`);
    super.refused(item, error);
  }

  actions() {
    const verdicts = names.verdict ?? {};
    return {
      ...super.actions(),
      keep: () => this.answer(verdicts.KEEP),
      reject: () => this.answer(verdicts.REJECT),
      rejectPrefilled: () => this.answer(verdicts.REJECT),
      correct: () => this.correct(),
      nextProposed: () => this.nextProposed(),
    };
  }
}
