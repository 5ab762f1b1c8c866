// The job's states: the one JS definition (Python: queueing/states.py JobStatus; SQL: the
// job_status domain). A test compares this list with the Python one; the words a person reads
// for each state stay with the card (ImageProgressCard.js).

export const JOB_STATUSES = /** @type {const} */ ([
  "pending", "queued", "processing", "complete", "error", "canceled",
]);

/** @typedef {typeof JOB_STATUSES[number]} JobStatus */

/** complete, error and canceled: a job in one of them never changes again. */
export const FINAL_STATUSES = /** @type {ReadonlySet<JobStatus>} */ (
  new Set(["complete", "error", "canceled"])
);

/**
 * Whether a WebSocket frame's `type` names a state (a transition event), not another frame.
 * @param {unknown} type
 * @returns {type is JobStatus}
 */
export function isJobStatus(type) {
  return JOB_STATUSES.some((status) => status === type);
}
