// The annotator's leases: the current image and the next one held ahead (fetched while the
// current one is annotated), kept alive by heartbeats; a lease that could not be renewed in
// time is reported as expired.

import { ApiError } from "./api.js";
import { sleep } from "./assets.js";

const MODEL_POLL_MS = 2000;

export class LeaseSession {
  /** on: {expired(lease)}: the current lease ended without being finished. */
  constructor(api, on) {
    this.api = api;
    this.on = on;
    this.current = null;
    this.ahead = null;
    this.timer = null;
    this.waiting = 0;
  }

  /** Lease (or get back) the current image; null when nothing can be leased now (then
   * `waiting` counts the images still being prepared, e.g. prefilled, for later). */
  async leaseCurrent() {
    const answer = await this.api.post("api/lease");
    this.current = answer.lease;
    this.waiting = answer.waiting || 0;
    this.keepAlive();
    return this.current;
  }

  /** Lease (or get back) the next image ahead of the current one. */
  async leaseAhead() {
    if (!this.current) return null;
    const lease = (await this.api.post("api/lease?ahead=true")).lease;
    this.ahead = lease && lease.lease_id !== this.current.lease_id ? lease : null;
    return this.ahead;
  }

  /** The ahead lease becomes current (after finishing or skipping the current image). */
  advance() {
    this.current = this.ahead;
    this.ahead = null;
    this.keepAlive();
    return this.current;
  }

  /** The lease again, once its embedding is ready (its model is null until then);
   * polled(lease) sees each answer before that. */
  async withModel(lease, isCurrent = () => true, polled = () => {}) {
    while (!lease.model && isCurrent()) {
      await sleep(MODEL_POLL_MS);
      lease = (await this.api.get(`api/leases/${lease.lease_id}`)).lease;
      polled(lease);
    }
    return lease;
  }

  /** Heartbeats every third of the lease's time to live, for both leases. */
  keepAlive() {
    clearInterval(this.timer);
    if (!this.current) return;
    const period = Math.max(1, this.current.ttl_s / 3) * 1000;
    this.timer = setInterval(() => this.beat(), period);
  }

  async beat() {
    for (const which of ["current", "ahead"]) {
      const lease = this[which];
      if (!lease) continue;
      try {
        const answer = await this.api.post(`api/leases/${lease.lease_id}/heartbeat`);
        lease.expires_at = answer.expires_at;
      } catch (error) {
        if (error instanceof ApiError && error.status === 409 && this[which] === lease)
          this.lost(which, lease);
      }
    }
  }

  lost(which, lease) {
    this[which] = null;
    if (which === "current") this.on.expired(lease);
  }

  stop() {
    clearInterval(this.timer);
  }
}
