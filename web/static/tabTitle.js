// The tab's title says where the person's images are, so a glance at the tab bar tells:
// "2nd in line · gpuqueue", "generating · gpuqueue", "✓ done · gpuqueue", else the
// conversation's name.

import { ordinal } from "./format.js";

/** @typedef {import("./imageJobsStore.js").ImageJobsStore} ImageJobsStore */
/** @typedef {import("./imageJobsStore.js").StoredJob} StoredJob */

const SUFFIX = "gpuqueue";

export class TabTitle {
  /** @param {ImageJobsStore} store */
  constructor(store) {
    this.store = store;
    this._base = "";
    /** @type {"complete" | "error" | null} how the last job that ended while watched ended */
    this._ended = null;
    store.subscribe(() => this.render());
  }

  /** @param {string} base the open conversation's name (a new one forgets the last ending) */
  setBase(base) {
    this._base = base;
    this._ended = null;
    this.render();
  }

  /** @param {StoredJob[]} finished jobs that just reached a final state (jobAnnouncer.js) */
  noteFinished(finished) {
    const last = finished.filter((j) => j.status !== "canceled").at(-1);
    if (last) this._ended = last.status === "complete" ? "complete" : "error";
    this.render();
  }

  render() {
    const jobs = this.store.jobs();
    let state = "";
    const queued = jobs.filter((j) => j.status === "queued").map((j) => j.queue_position);
    if (jobs.some((j) => j.status === "processing")) state = "generating";
    else if (queued.length) {
      const front = Math.min(...queued.map((p) => (p > 0 ? p : Infinity)));
      state = Number.isFinite(front) ? `${ordinal(front)} in line` : "waiting";
    } else if (this._ended === "complete") state = "✓ done";
    else if (this._ended === "error") state = "✗ failed";
    const title = state || this._base;
    const next = title ? `${title} · ${SUFFIX}` : SUFFIX;
    if (document.title !== next) document.title = next;
  }
}
