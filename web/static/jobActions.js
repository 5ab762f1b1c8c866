// What the cards ask for: cancel, retry, move to the front, and a fresh read of a job (its
// details, a retry's run_after, a new signed image link). Each answer goes into the store with
// the seq the page had seen when it asked, which it is at least as fresh as.

import { ApiError, api } from "./api.js";

/** @typedef {import("./api.js").Job} Job */
/** @typedef {import("./imageJobsStore.js").ImageJobsStore} ImageJobsStore */

// The fields of a job that a retry sends again (web/validation.py image_request).
/** @type {(keyof import("./api.js").JobParams)[]} */
const REQUEST_FIELDS = ["negative_prompt", "width", "height", "steps", "guidance_scale", "seed"];
/** @type {("model" | "priority" | "max_attempts" | "timeout_s")[]} */
const JOB_FIELDS = ["model", "priority", "max_attempts", "timeout_s"];

export class JobActions {
  /**
   * @param {ImageJobsStore} store
   * @param {(message: string) => void} notify shows a notice above the cards
   */
  constructor(store, notify) {
    this.store = store;
    this.notify = notify;
    /** @type {Set<string>} job ids being read now */
    this._reading = new Set();
  }

  /**
   * A job's answer into the store, as fresh as the store was when it was asked.
   * @param {() => Promise<Job>} read
   */
  async _read(read) {
    const seenSeq = this.store.lastSeq;
    const job = await read();
    this.store.upsertJob(job, seenSeq);
    return job;
  }

  /**
   * Submit a new image request to the open conversation.
   * @param {import("./api.js").ImageRequest} body
   */
  async submit(body) {
    const id = this.store.conversationId;
    if (!id) throw new Error("No conversation is open yet.");
    return this._read(() => api.submitImage(id, body));
  }

  /** @param {string} jobId */
  async fetchDetails(jobId) {
    if (this._reading.has(jobId)) return;
    this._reading.add(jobId);
    try {
      await this._read(() => api.getJob(jobId));
    } catch (err) {
      console.warn("could not load job", jobId, err);
    } finally {
      this._reading.delete(jobId);
    }
  }

  /** @param {Job} job */
  async onCancel(job) {
    try {
      await this._read(() => api.cancelJob(job.job_id));
    } catch (err) {
      if (err instanceof ApiError && err.status === 409) {
        await this._read(() => api.getJob(job.job_id)); // it finished meanwhile
      } else {
        this.notify(`Could not cancel: ${errorText(err)}`);
      }
    }
  }

  /**
   * Put a queued job first among its owner's queued jobs of its model. The others of the owner
   * move back one place each; their cards hear of it as position frames, as of any move.
   * @param {Job} job
   */
  async onMove(job) {
    try {
      await this._read(() => api.moveToFront(job.job_id));
    } catch (err) {
      this.notify(`Could not move to the front: ${errorText(err)}`);
      // 409: it left the line meanwhile (started, canceled); the card shows where it is now.
      if (err instanceof ApiError && err.status === 409) await this.fetchDetails(job.job_id);
    }
  }

  /**
   * The same request again: same prompt, same params (the seed included), same limits.
   * @param {Job} job
   * @returns {Promise<string | null>} the new job's id (null: refused, the notice says why)
   */
  async onRetry(job) {
    /** @type {Record<string, unknown>} */
    const fields = {};
    for (const key of REQUEST_FIELDS) {
      const value = job.params[key];
      if (value !== undefined && value !== null) fields[key] = value;
    }
    for (const key of JOB_FIELDS) {
      const value = job[key];
      if (value !== undefined && value !== null) fields[key] = value;
    }
    const body = { ...fields, prompt: job.prompt };
    try {
      const created = await this._read(() => api.submitImage(job.conversation_id, body));
      return created.job_id;
    } catch (err) {
      this.notify(`Could not retry: ${errorText(err)}`);
      return null;
    }
  }

  /**
   * The image's signed link failed (it may have expired): the job, read again, has a fresh one.
   * @param {Job} job
   */
  onImageError(job) {
    this.fetchDetails(job.job_id);
  }
}

/** @param {unknown} err */
export function errorText(err) {
  return err instanceof Error ? err.message : String(err);
}
