// What a screen reader hears: only changes to the person's own jobs (every job of the open
// conversation is theirs), each naming its image, gathered over a short window so that one move
// of the queue is one sentence, not one per card. No DOM here: `say` puts the words in the
// page's single polite live region (app.js), and the store's unit tests feed it directly.

import { FINAL_STATUSES } from "./jobStatus.js";
import { ordinal, shortPrompt } from "./format.js";

/** @typedef {import("./imageJobsStore.js").ImageJobsStore} ImageJobsStore */
/** @typedef {import("./imageJobsStore.js").StoredJob} StoredJob */
/** @typedef {import("./jobStatus.js").JobStatus} JobStatus */

/**
 * One announcement: its words, and the jobs in it that reached a final state (a notification
 * and the tab title want those).
 * @typedef {{ text: string, finished: StoredJob[] }} Announcement
 */

/** @typedef {{ status: JobStatus, position: number }} Seen */

// More position changes than this in one window are summed up in one sentence.
const MAX_POSITIONS_NAMED = 2;

/** @param {StoredJob} job */
function imageName(job) {
  return job.prompt ? `Your image '${shortPrompt(job.prompt)}'` : "Your image";
}

/**
 * The sentence for one job's new state; empty when there is nothing to say.
 * @param {StoredJob} job
 */
export function jobSentence(job) {
  const name = imageName(job);
  switch (job.status) {
    case "queued":
      if (job.attempts > 0 && job.error) return `${name} failed and will be retried: ${job.error}`;
      return job.queue_position > 0 ? `${name} is now ${ordinal(job.queue_position)} in line` : "";
    case "processing":
      return `${name} is being generated`;
    case "complete":
      return `${name} is done`;
    case "error":
      return `${name} failed: ${job.error || "no reason given"}`;
    case "canceled":
      return `${name} was canceled`;
    default:
      return "";
  }
}

export class JobAnnouncer {
  /**
   * @param {ImageJobsStore} store
   * @param {(announcement: Announcement) => void} say
   * @param {{ windowMs?: number }} [options] windowMs: how long changes gather before one
   *   announcement (the first change opens the window; later ones join it)
   */
  constructor(store, say, { windowMs = 1000 } = {}) {
    this.store = store;
    this.say = say;
    this.windowMs = windowMs;
    /** @type {string | null} */
    this._conversationId = null;
    /** @type {Map<string, Seen>} what was last said (or first seen) of each job */
    this._seen = new Map();
    /** @type {Set<string>} jobs that changed in the open window */
    this._changed = new Set();
    /** @type {ReturnType<typeof setTimeout> | undefined} */
    this._timer = undefined;
    store.subscribe(() => this._observe());
  }

  _observe() {
    const store = this.store;
    if (store.conversationId !== this._conversationId) {
      // Another conversation, or none: nothing that was pending concerns it.
      this._conversationId = store.conversationId;
      this._seen.clear();
      this._changed.clear();
      clearTimeout(this._timer);
      this._timer = undefined;
    }
    for (const job of store.jobs()) {
      if (job._partial) continue; // its prompt is still unknown: speak of it once it is read
      const seen = this._seen.get(job.job_id);
      const now = { status: job.status, position: job.queue_position };
      if (!store.loaded) {
        this._seen.set(job.job_id, now); // what the page opened on is not news
        continue;
      }
      if (seen && seen.status === now.status &&
          (now.status !== "queued" || seen.position === now.position)) continue;
      this._seen.set(job.job_id, now);
      this._changed.add(job.job_id);
    }
    if (this._changed.size && this._timer === undefined) {
      this._timer = setTimeout(() => this.flush(), this.windowMs);
    }
  }

  /** Say what changed in the window now (the timer calls it; so can a test). */
  flush() {
    clearTimeout(this._timer);
    this._timer = undefined;
    const jobs = [...this._changed].map((id) => this.store.get(id)).filter((j) => j !== null);
    this._changed.clear();
    const moved = jobs.filter((j) => j.status === "queued" && !j.error);
    const others = jobs.filter((j) => !moved.includes(j));
    const sentences = others.map(jobSentence);
    if (moved.length > MAX_POSITIONS_NAMED) {
      const front = moved.reduce((a, b) => (b.queue_position < a.queue_position ? b : a));
      sentences.push(`${moved.length} of your images moved in line; ${jobSentence(front)
        .replace(/^Your image/, "your image")}`);
    } else {
      sentences.push(...moved.map(jobSentence));
    }
    const text = sentences.filter(Boolean).join(". ");
    if (!text) return;
    this.say({ text: `${text}.`, finished: others.filter((j) => FINAL_STATUSES.has(j.status)) });
  }
}
