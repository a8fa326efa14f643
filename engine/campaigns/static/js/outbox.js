// Every change the annotator makes (accepted masks, deletions, skipped objects, rejected
// prefilled masks, answers on proposed masks and corrections, finished or skipped images) waits here, in order and in localStorage,
// until the server has it: a request that gets no answer is sent again with the same client
// id, so the server stores it once, also across a reload of the page. A request the server
// refuses is reported; masks refused because their lease ended are held and sent again if
// the annotator gets the same image back.

import { ApiError, newClientId } from "./api.js";

const MAX_BACKOFF_MS = 15000;

export class Outbox {
  /** on: {change(), done(item, answer), refused(item, error)}. */
  constructor(api, storageKey, on) {
    this.api = api;
    this.key = storageKey;
    this.on = on;
    const saved = JSON.parse(localStorage.getItem(storageKey) ?? "{}");
    this.items = saved.items ?? [];
    this.held = saved.held ?? [];
    this.maskIds = saved.maskIds ?? {};
    this.sending = false;
    this.backoffMs = 1000;
    this.timer = null;
  }

  /** Queue a change: {kind, lease_id, image_id, body?, mask_id?, mask_client_id?}. */
  push(item) {
    const queued = { client_id: newClientId(), ...item };
    this.items.push(queued);
    this.save();
    this.flush();
    return queued;
  }

  /** Drop a queued item that has not been sent (e.g. a mask deleted before it was sent). */
  cancel(clientId) {
    const index = this.items.findIndex((i) => i.client_id === clientId);
    if (index < 0 || (index === 0 && this.sending)) return false;
    this.items.splice(index, 1);
    this.save();
    return true;
  }

  /** Masks of an image not yet stored (queued or held). */
  pendingMasks(imageId) {
    return [...this.items, ...this.held].filter((i) => i.kind === "mask" && i.image_id === imageId);
  }

  /** The annotator holds `imageId` again under a new lease: send its held masks with it. */
  rebind(imageId, leaseId) {
    const back = this.held.filter((i) => i.image_id === imageId);
    if (!back.length) return;
    this.held = this.held.filter((i) => i.image_id !== imageId);
    for (const item of back) this.items.push({ ...item, lease_id: leaseId });
    this.save();
    this.flush();
  }

  get size() {
    return this.items.length;
  }

  save() {
    localStorage.setItem(
      this.key,
      JSON.stringify({ items: this.items, held: this.held, maskIds: this.maskIds }),
    );
    this.on.change();
  }

  /** Send queued items in order until the queue is empty or the server cannot be reached. */
  async flush() {
    if (this.sending) return;
    clearTimeout(this.timer);
    this.sending = true;
    try {
      while (this.items.length) {
        if (!(await this.sendFirst())) return this.retryLater();
      }
      this.backoffMs = 1000;
    } finally {
      this.sending = false;
      this.on.change();
    }
  }

  retryLater() {
    this.timer = setTimeout(() => this.flush(), this.backoffMs);
    this.backoffMs = Math.min(this.backoffMs * 2, MAX_BACKOFF_MS);
  }

  /** Send the first item: true when it is settled (stored or refused), false to retry. */
  async sendFirst() {
    const item = this.items[0];
    try {
      const answer = await this.send(item);
      this.items.shift();
      if (item.kind === "mask") this.maskIds[item.client_id] = answer.mask_id;
      this.save();
      this.on.done(item, answer);
      return true;
    } catch (error) {
      if (!(error instanceof ApiError) || error.transient || error.status === 401) return false;
      this.items.shift();
      if (item.kind === "mask" && error.status === 409) this.held.push(item);
      this.save();
      this.on.refused(item, error);
      return true;
    }
  }

  send(item) {
    const lease = { client_id: item.client_id, lease_id: item.lease_id };
    switch (item.kind) {
      case "mask":
        return this.api.post("api/masks", { ...item.body, ...lease, image_id: item.image_id });
      case "skip_object":
        return this.api.post("api/skip-object", { ...item.body, ...lease });
      case "reject":
        return this.api.post(`api/prefilled/${item.mask_id}/reject`, lease);
      case "answer": // audit and verify: keep (accept) or reject a proposed mask
        return this.api.post(`api/proposed/${item.mask_id}/answer`, { ...item.body, ...lease });
      case "correct": // audit: the corrected version of a proposed mask
        return this.api.post(`api/proposed/${item.mask_id}/correct`, {
          ...item.body,
          ...lease,
          image_id: item.image_id,
        });
      case "delete":
        return this.sendDelete(item);
      case "finish":
      case "skip_image":
        return this.api.post(
          `api/leases/${item.lease_id}/${item.kind === "finish" ? "finish" : "skip"}`,
          { client_id: item.client_id },
        );
      default:
        throw new ApiError(400, `unknown change ${item.kind}`);
    }
  }

  sendDelete(item) {
    const maskId = item.mask_id ?? this.maskIds[item.mask_client_id];
    if (maskId === undefined) return Promise.resolve({ deleted: null });
    return this.api.request(
      "DELETE",
      `api/masks/${maskId}?lease_id=${encodeURIComponent(item.lease_id)}`,
    );
  }
}
