// The image's masks beside the one being made (accepted ones, stored or still being sent,
// and stage 2's locked prefilled ones): drawn on the masks layer and listed in the side
// panel, where one can be selected to delete (one's own) or reject (prefilled).

import { entryAt, paintMasks, renderMaskList } from "./masks.js";

export class MaskPanel {
  /** el(id) -> element; remove(entry): the caller deletes or rejects it. */
  constructor(el, remove) {
    Object.assign(this, { el, remove, entries: [], selected: null });
  }

  /** A new image's masks (entries from masks.js). */
  reset(entries) {
    this.entries = entries;
    this.selected = null;
    this.render();
  }

  add(entry) {
    this.entries.push(entry);
    this.render();
  }

  find(key) {
    return this.entries.find((e) => e.key === key) ?? null;
  }

  update(key, change) {
    const entry = this.find(key);
    if (entry) Object.assign(entry, change);
    this.render();
  }

  drop(key) {
    this.entries = this.entries.filter((e) => e.key !== key);
    if (this.selected === key) this.selected = null;
    this.render();
  }

  select(key) {
    this.selected = key;
    this.render();
  }

  /** Select the mask under stored pixel (x, y) (none when there is none). */
  selectAt(x, y) {
    this.select(entryAt(this.entries, x, y)?.key ?? null);
  }

  selectNext() {
    if (!this.entries.length) return;
    const index = this.entries.findIndex((e) => e.key === this.selected);
    this.select(this.entries[(index + 1) % this.entries.length].key);
  }

  render() {
    paintMasks(this.el("masks-layer"), this.entries, this.selected);
    renderMaskList(this.el("mask-list"), this.entries, this.selected, {
      select: (key) => this.select(key),
      remove: (key) => this.remove(this.find(key)),
    });
    this.el("mask-count").textContent = String(this.entries.length);
  }
}
