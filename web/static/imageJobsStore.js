// imageJobsStore: every image job of one conversation, kept in step with the server.
//
// No DOM here, so the browser tests can import it and feed it messages directly.
//
// Freshness is judged by `seq` alone (global, and commit-ordered: gq_event_lock). Each job
// remembers the seq of the state it shows (`_seq`), and three sources write to it:
//   - the conversation's list (GET /api/conversations/{id}/jobs): every job as of its `seq`;
//   - one job read from the API (GET /api/jobs/{id}, POST answers): as of at least the last seq
//     this page had seen when it asked, since every event it had seen was committed before;
//   - transition events (WebSocket): applied only when their seq is above the job's, so
//     duplicates, replays and events a read already includes change nothing;
//   and `position` and `progress` messages, applied to jobs that are queued / processing.
// Positions are only ever the server's: nothing here computes or shifts one.

import { FINAL_STATUSES, isJobStatus } from "./jobStatus.js";

/** @typedef {import("./api.js").Job} Job */
/** @typedef {import("./api.js").JobList} JobList */
/** @typedef {import("./jobStatus.js").JobStatus} JobStatus */

/**
 * A job as the store holds it: the API's shape, plus what the store needs to keep it fresh.
 * @typedef {Job & { _seq: number, _etaAt: number, _partial: boolean, _order: number }} StoredJob
 */

/**
 * A transition event (queueing/sql events_after), signed image link included.
 * @typedef {object} TransitionEvent
 * @property {JobStatus} type
 * @property {number} seq
 * @property {string} job_id
 * @property {string} message_id
 * @property {string} conversation_id
 * @property {string} [model]
 * @property {JobStatus} status
 * @property {number} queue_position
 * @property {string} at
 * @property {string} [error]
 * @property {string} [image_url]
 */

/**
 * What the WebSocket sends (web/ws.py).
 * @typedef {TransitionEvent
 *   | { type: "position", job_id: string, queue_position: number, eta_s: number | null }
 *   | { type: "progress", job_id: string, step: number, steps: number }
 *   | { type: "subscribed", seq: number, conversation_id?: string, job_ids?: string[] }
 *   | { type: "error", error: { code: string, message: string } }
 *   | { type: "unsubscribed" | "pong" }} ServerFrame
 */

/** @type {(keyof Job)[]} */
const DETAIL_FIELDS = [
  "message_id", "model", "prompt", "params", "priority", "max_attempts", "timeout_s",
  "created_at", "queued_at",
];

/**
 * ISO 8601 to microseconds since the epoch, for the order of jobs (Date.parse keeps only
 * milliseconds, and two jobs can be created in the same millisecond).
 * @param {unknown} value
 * @returns {number | null}
 */
function isoToMicros(value) {
  if (typeof value !== "string") return null;
  const m = /^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d(?::?\d\d)?)?$/.exec(
    value.trim().replace(" ", "T"),
  );
  if (!m) {
    const ms = Date.parse(value);
    return Number.isNaN(ms) ? null : ms * 1000;
  }
  let zone = m[3] || "Z";
  if (/^[+-]\d\d$/.test(zone)) zone += ":00";
  const ms = Date.parse(`${m[1]}${zone}`);
  if (Number.isNaN(ms)) return null;
  const fraction = Number(((m[2] || "") + "000000").slice(0, 6));
  return ms * 1000 + fraction;
}

/**
 * A refused frame: an `error` frame without a seq (an `error` transition event always has one).
 * @param {ServerFrame} message
 * @returns {message is { type: "error", error: { code: string, message: string } }}
 */
export function isRefusal(message) {
  return message.type === "error" && !("seq" in message);
}

export function createImageJobsStore() {
  return new ImageJobsStore();
}

export class ImageJobsStore {
  constructor() {
    /** @type {string | null} */
    this.conversationId = null;
    this.lastSeq = 0; // the highest seq the store includes: a reconnect asks for what follows
    // Whether the first snapshot of the conversation is in: what changes after it is news.
    this.loaded = false;
    /** @type {Map<string, StoredJob>} */
    this._jobs = new Map();
    /** @type {Set<(store: ImageJobsStore) => void>} */
    this._listeners = new Set();
    this._nextOrder = 0;
  }

  /**
   * Forget everything and follow another conversation (null: none).
   * @param {string | null} [conversationId]
   */
  reset(conversationId = null) {
    this.conversationId = conversationId;
    this.lastSeq = 0;
    this.loaded = false;
    this._jobs.clear();
    this._nextOrder = 0;
    this._emit();
  }

  /**
   * @param {(store: ImageJobsStore) => void} listener
   * @returns {() => void} unsubscribes
   */
  subscribe(listener) {
    this._listeners.add(listener);
    return () => this._listeners.delete(listener);
  }

  /** @param {string} jobId */
  get(jobId) {
    return this._jobs.get(String(jobId)) || null;
  }

  get size() {
    return this._jobs.size;
  }

  /** Jobs in submission order (created_at, then the order the store learned of them). */
  jobs() {
    return [...this._jobs.values()].sort((a, b) => {
      const ca = isoToMicros(a.created_at);
      const cb = isoToMicros(b.created_at);
      if (ca !== null && cb !== null && ca !== cb) return ca - cb;
      if ((ca === null) !== (cb === null)) return ca === null ? 1 : -1;
      return a._order - b._order;
    });
  }

  /**
   * Whether some job matches, in no particular order (cheap enough to ask on every change).
   * @param {(job: StoredJob) => boolean} predicate
   */
  some(predicate) {
    for (const job of this._jobs.values()) if (predicate(job)) return true;
    return false;
  }

  /** Jobs known only from an event, whose prompt and params still have to be fetched. */
  partialJobIds() {
    return [...this._jobs.values()].filter((j) => j._partial).map((j) => j.job_id);
  }

  /**
   * The reload snapshot: the conversation's jobs as of `list.seq`.
   * @param {JobList} list
   */
  applySnapshot(list) {
    let changed = false;
    for (const job of list.jobs) changed = this._merge(job, list.seq) || changed;
    if (list.seq > this.lastSeq) this.lastSeq = list.seq;
    if (changed) this._emit();
    this.loaded = true;
    return changed;
  }

  /**
   * One job from the API (the POST answer, GET /api/jobs/{id}, a cancel's answer).
   * @param {Job} job
   * @param {number} seenSeq the store's lastSeq when the request was sent
   */
  upsertJob(job, seenSeq) {
    const changed = this._merge(job, seenSeq);
    if (changed) this._emit();
    return changed;
  }

  /**
   * One WebSocket message; returns whether the store changed.
   * @param {ServerFrame} message
   */
  applyMessage(message) {
    let changed = false;
    if (message.type === "position") changed = this._applyPosition(message);
    else if (message.type === "progress") changed = this._applyProgress(message);
    else if (message.type === "subscribed") {
      // The server has sent everything up to this seq for the subscription.
      if (message.seq > this.lastSeq) this.lastSeq = message.seq;
    } else if (isJobStatus(message.type) && "seq" in message) {
      changed = this._applyEvent(message);
    }
    if (changed) this._emit();
    return changed;
  }

  /**
   * @param {Job} job
   * @param {number} seq the seq the job's state is as of
   */
  _merge(job, seq) {
    if (this.conversationId && job.conversation_id !== this.conversationId) return false;
    const id = String(job.job_id);
    const existing = this._jobs.get(id);
    if (existing && existing._seq > seq) {
      // An event newer than this read already moved the job on: keep its state, take only
      // the details that never change.
      let changed = existing._partial;
      /** @type {Record<string, unknown>} */
      const target = existing;
      for (const key of DETAIL_FIELDS) {
        if (job[key] !== undefined && (existing._partial || existing[key] === undefined)) {
          changed = changed || target[key] !== job[key];
          target[key] = job[key];
        }
      }
      existing._partial = false;
      return changed;
    }
    /** @type {StoredJob} */
    const next = {
      ...job,
      job_id: id,
      _etaAt: Date.now(), // eta_s counts from when the server computed it, about now
      _seq: seq,
      _partial: false,
      _order: existing ? existing._order : this._nextOrder++,
    };
    // A read a moment before the last progress message must not move the bar back.
    if (
      existing && existing.status === "processing" && next.status === "processing" &&
      existing.started_at === next.started_at && existing.progress && next.progress &&
      existing.progress.step > next.progress.step
    ) {
      next.progress = existing.progress;
    }
    this._jobs.set(id, next);
    return !existing || !sameJob(existing, next);
  }

  /** @param {TransitionEvent} event */
  _applyEvent(event) {
    if (event.seq > this.lastSeq) this.lastSeq = event.seq;
    const id = String(event.job_id);
    let job = this._jobs.get(id);
    if (!job) {
      if (!this.conversationId || event.conversation_id !== this.conversationId) return false;
      // A job submitted elsewhere (another tab): show it now, fetch its details later.
      job = {
        job_id: id, message_id: event.message_id, conversation_id: event.conversation_id,
        model: event.model, status: event.status, queue_position: 0, eta_s: null, prompt: "", params: {},
        progress: null, error: null, image_url: null, attempts: 0,
        _seq: 0, _etaAt: Date.now(), _partial: true, _order: this._nextOrder++,
      };
      this._jobs.set(id, job);
    }
    if (event.seq <= job._seq) return false; // a replay of something applied or read
    const status = event.status;
    /** @type {StoredJob} */
    const next = { ...job, status, _seq: event.seq };
    if (event.model !== undefined) next.model = event.model; // it never changes: fills a gap
    next.queue_position = status === "queued" ? (event.queue_position ?? job.queue_position) : 0;
    if (status !== "queued") next.eta_s = null;
    else if (job.status !== "queued") next.eta_s = null; // unknown until a position message
    if (status === "processing") {
      next.progress = null;
      next.started_at = event.at;
      next.cancel_requested = false;
      next.attempts = (job.attempts || 0) + (job.status === "processing" ? 0 : 1);
    }
    if (FINAL_STATUSES.has(status)) next.finished_at = event.at;
    if (status === "error" || event.error !== undefined) next.error = event.error ?? next.error;
    if (status === "complete") next.image_url = event.image_url || null; // a signed link
    this._jobs.set(id, next);
    return true;
  }

  /** @param {{ job_id: string, queue_position: number, eta_s: number | null }} message */
  _applyPosition(message) {
    const job = this._jobs.get(String(message.job_id));
    if (!job || job.status !== "queued") return false;
    const position = message.queue_position;
    const eta = message.eta_s === undefined ? job.eta_s : message.eta_s;
    if (job.queue_position === position && job.eta_s === eta) {
      job._etaAt = Date.now(); // the same estimate, made again now
      return false;
    }
    const next = { ...job, queue_position: position, eta_s: eta, _etaAt: Date.now() };
    this._jobs.set(job.job_id, next);
    return true;
  }

  /** @param {{ job_id: string, step: number, steps: number }} message */
  _applyProgress(message) {
    const job = this._jobs.get(String(message.job_id));
    if (!job || job.status !== "processing") return false;
    const progress = { step: message.step, steps: message.steps };
    if (job.progress && job.progress.step === progress.step &&
        job.progress.steps === progress.steps) return false;
    this._jobs.set(job.job_id, { ...job, progress });
    return true;
  }

  _emit() {
    for (const listener of this._listeners) {
      try {
        listener(this);
      } catch (err) {
        console.error("imageJobsStore listener failed", err);
      }
    }
  }
}

/**
 * Whether the card would show the same: fields the card reads.
 * @param {StoredJob} a
 * @param {StoredJob} b
 */
function sameJob(a, b) {
  /** @type {(keyof Job)[]} */
  const keys = ["status", "model", "queue_position", "eta_s", "error", "image_url",
    "cancel_requested", "attempts", "prompt", "run_after"];
  for (const key of keys) if (a[key] !== b[key]) return false;
  const pa = a.progress;
  const pb = b.progress;
  if (!pa || !pb) return !pa === !pb;
  return pa.step === pb.step && pa.steps === pb.steps;
}
