// The models a request may name (GET /api/models), with how many live workers serve each and
// how many jobs are queued and running for each (everyone's). Read on load, after every
// reconnect, when one of the person's jobs changes state, and every few seconds while the page
// is visible: the line above the cards (fleetStatus.js) and a queued card's "waiting for a GPU"
// follow it. One read at a time; a call made while one is under way waits for one more after it.

import { api } from "./api.js";

/** @typedef {import("./api.js").Model} Model */

const POLL_MS = 5000;
// The server keeps a list for up to a second (web/keys.py eta_ttl_s): a read this long after a
// change sees it.
const AFTER_CHANGE_MS = 1200;

export class Models {
  constructor() {
    /** @type {Model[]} by name, as the server lists them */
    this.list = [];
    /** @type {Promise<void> | null} */
    this._reading = null;
    this._again = false;
    this._readAt = 0; // when the last read that worked ended (performance.now())
    /** @type {Set<(models: Models) => void>} */
    this._listeners = new Set();
    /** @type {ReturnType<typeof setTimeout> | undefined} */
    this._afterChange = undefined;
  }

  /**
   * @param {(models: Models) => void} listener called when the list changed
   * @returns {() => void} unsubscribes
   */
  subscribe(listener) {
    this._listeners.add(listener);
    return () => this._listeners.delete(listener);
  }

  /**
   * How many live workers serve a model; null when the page does not know the model.
   * @param {string | undefined} name
   */
  workers(name) {
    const model = name === undefined ? undefined : this.list.find((m) => m.name === name);
    return model ? model.workers : null;
  }

  /** The model a request without one is for (null until the list is read). */
  defaultName() {
    const model = this.list.find((m) => m.default);
    return model ? model.name : null;
  }

  /**
   * Read the list again.
   * @param {{ unlessWithinMs?: number }} [when] skip it when a read worked that recently
   */
  refresh({ unlessWithinMs = 0 } = {}) {
    if (this._reading) {
      this._again = true;
      return this._reading;
    }
    if (unlessWithinMs > 0 && this._readAt && performance.now() - this._readAt < unlessWithinMs) {
      return Promise.resolve();
    }
    this._reading = this._read().finally(() => {
      this._reading = null;
    });
    return this._reading;
  }

  /**
   * Something the counts follow changed (a job started, ended, joined the line): read now, and
   * once more when the server's cached list has surely caught up (one read after a burst).
   */
  refreshAfterChange() {
    this.refresh({ unlessWithinMs: 1000 });
    clearTimeout(this._afterChange);
    this._afterChange = setTimeout(() => this.refresh(), AFTER_CHANGE_MS);
  }

  async _read() {
    let changed = false;
    do {
      this._again = false;
      try {
        const list = await api.listModels();
        this._readAt = performance.now();
        if (!sameModels(this.list, list)) {
          this.list = list;
          changed = true;
        }
      } catch (err) {
        console.warn("could not read the models", err);
      }
    } while (this._again);
    if (changed) for (const listener of this._listeners) listener(this);
  }

  /**
   * Read the list every few seconds while `wanted()` says so and the page is visible.
   * @param {() => boolean} wanted
   */
  pollWhile(wanted) {
    setInterval(() => {
      if (!document.hidden && wanted()) this.refresh({ unlessWithinMs: POLL_MS / 2 });
    }, POLL_MS);
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden && wanted()) this.refresh({ unlessWithinMs: POLL_MS / 2 });
    });
  }
}

/** @param {Model[]} a @param {Model[]} b */
function sameModels(a, b) {
  return a.length === b.length && a.every((m, i) => {
    const n = b[i];
    return m.name === n.name && m.default === n.default && m.workers === n.workers &&
      m.queued === n.queued && m.processing === n.processing;
  });
}
