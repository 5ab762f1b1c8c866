// Whether anything is moving: the GPUs online (per model when there are several), which model
// no worker serves, and the whole queue (everyone's jobs), from GET /api/models. Shown as one
// line above the cards; not a live region (the cards' own changes are announced instead).

import { setText } from "./dom.js";

/** @typedef {import("./models.js").Models} Models */
/** @typedef {import("./api.js").Model} Model */

/** @param {number} n @param {string} one @param {string} many */
function count(n, one, many) {
  return `${n} ${n === 1 ? one : many}`;
}

/**
 * The line's words, and whether some model has no worker.
 * @param {Model[]} list
 * @returns {{ text: string, idle: string[] }}
 */
export function fleetText(list) {
  if (!list.length) return { text: "", idle: [] };
  const idle = list.filter((m) => m.workers === 0).map((m) => m.name);
  const parts = [];
  if (list.length === 1) {
    const only = list[0];
    parts.push(only.workers ? `${count(only.workers, "GPU", "GPUs")} online`
      : `No worker serves ${only.name}`);
  } else {
    const served = list.filter((m) => m.workers > 0)
      .map((m) => `${m.name} ${count(m.workers, "GPU", "GPUs")}`);
    if (served.length) parts.push(`Online: ${served.join(", ")}`);
    if (idle.length) parts.push(`no worker serves ${idle.join(", ")}`);
  }
  const queued = list.reduce((sum, m) => sum + m.queued, 0);
  const processing = list.reduce((sum, m) => sum + m.processing, 0);
  parts.push(`${count(queued, "image", "images")} in line`);
  if (processing) parts.push(`${processing} generating`);
  const text = parts.join(" · ");
  return { text: text.charAt(0).toUpperCase() + text.slice(1), idle };
}

export class FleetStatus {
  /** @param {HTMLElement} element @param {Models} models */
  constructor(element, models) {
    this.element = element;
    models.subscribe(() => this.render(models.list));
  }

  /** @param {Model[]} list */
  render(list) {
    const { text, idle } = fleetText(list);
    setText(this.element, text);
    this.element.hidden = !text;
    this.element.dataset.state = !idle.length ? "ok" : idle.length === list.length ? "none" : "some";
  }
}
