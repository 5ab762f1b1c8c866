// The HTTP API (contract: "HTTP API"), with the bearer token on every request. The typedefs
// are the shapes the server sends (web/api.py; job JSON: queueing), not guesses.

/** @typedef {import("./jobStatus.js").JobStatus} JobStatus */

/**
 * The image's parameters as the job was asked for (web/validation.py image_request).
 * @typedef {object} JobParams
 * @property {string} [negative_prompt]
 * @property {number} [width]
 * @property {number} [height]
 * @property {number} [steps]
 * @property {number} [guidance_scale]
 * @property {number | null} [seed]
 */

/**
 * The body of POST /api/conversations/{id}/images (model: the default one when left out).
 * @typedef {{ prompt: string, model?: string, priority?: number, max_attempts?: number,
 *   timeout_s?: number } & JobParams} ImageRequest
 */

/** @typedef {{ step: number, steps: number }} Progress */

/**
 * A job as the API shows it (GET /api/jobs/{id}, the list of a conversation, POST answers).
 * @typedef {object} Job
 * @property {string} job_id
 * @property {string} message_id
 * @property {string} conversation_id
 * @property {JobStatus} status
 * @property {string} [model] the model it is for (a worker of that model runs it)
 * @property {number} queue_position 0 unless queued, else its place among its model's jobs
 * @property {number | null} eta_s seconds until it should start, when queued (null: no estimate,
 *   e.g. no live worker serves its model)
 * @property {string} prompt
 * @property {JobParams} params
 * @property {number} [priority]
 * @property {number} attempts
 * @property {number} [max_attempts]
 * @property {number} [timeout_s]
 * @property {boolean} [cancel_requested]
 * @property {Progress | null} progress
 * @property {string | null} error
 * @property {string | null} image_url a signed link, when complete
 * @property {string | null} [run_after] a retry waits until then
 * @property {string} [created_at]
 * @property {string | null} [queued_at]
 * @property {string | null} [started_at]
 * @property {string | null} [finished_at]
 */

/**
 * The jobs of a conversation, and the seq of the last event they include.
 * @typedef {{ jobs: Job[], seq: number }} JobList
 */

/** @typedef {{ id: string, title: string, created_at: string }} Conversation */

/** @typedef {{ user: string, user_id: number, is_admin: boolean }} Me */

/**
 * A model a request may name (GET /api/models): workers is how many live workers serve it.
 * @typedef {{ name: string, default: boolean, workers: number, queued: number,
 *   processing: number }} Model
 */

const TOKEN_KEY = "gpuqueue.token";

// Read ?token= once, keep it, and take it out of the address bar (and so out of history).
export function adoptTokenFromUrl() {
  const url = new URL(window.location.href);
  const token = url.searchParams.get("token");
  if (token === null) return;
  if (token) localStorage.setItem(TOKEN_KEY, token);
  url.searchParams.delete("token");
  history.replaceState(history.state, "", url.pathname + url.search + url.hash);
}

export function getToken() {
  return localStorage.getItem(TOKEN_KEY) || "";
}

/** @param {string} token the empty string signs out */
export function setToken(token) {
  if (token) localStorage.setItem(TOKEN_KEY, token);
  else localStorage.removeItem(TOKEN_KEY);
}

/** @type {(message: string) => void} */
let onUnauthorized = () => {};

/**
 * Who hears of a 401 (the token stopped working): whatever the request was, the page signs out.
 * @param {(message: string) => void} handler given the server's message
 */
export function setUnauthorizedHandler(handler) {
  onUnauthorized = handler;
}

export class ApiError extends Error {
  /**
   * @param {number} status the HTTP status (0: the server could not be reached)
   * @param {string} code
   * @param {string} message
   */
  constructor(status, code, message) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
  }
}

/**
 * @param {string} method
 * @param {string} path
 * @param {unknown} [body]
 * @returns {Promise<any>} the answer's JSON; each caller below names its shape
 */
async function request(method, path, body) {
  /** @type {Record<string, string>} */
  const headers = { Accept: "application/json", Authorization: `Bearer ${getToken()}` };
  /** @type {RequestInit} */
  const init = { method, headers, cache: "no-store" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch {
    throw new ApiError(0, "network", "The server cannot be reached.");
  }
  const text = await response.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (!response.ok) {
    const error = (data && data.error) || {};
    const failure = new ApiError(
      response.status,
      error.code || `http_${response.status}`,
      error.message || `The server answered ${response.status}.`,
    );
    if (response.status === 401) onUnauthorized(failure.message);
    throw failure;
  }
  return data;
}

const enc = encodeURIComponent;

export const api = {
  /** @returns {Promise<Me>} */
  me: () => request("GET", "/api/me"),
  /** @returns {Promise<Conversation[]>} newest first */
  listConversations: async () => (await request("GET", "/api/conversations")).conversations,
  /** @param {string} title @returns {Promise<Conversation>} */
  createConversation: (title) => request("POST", "/api/conversations", { title }),
  /** @param {string} id @returns {Promise<Conversation>} (with its messages, unused here) */
  getConversation: (id) => request("GET", `/api/conversations/${enc(id)}`),
  // P2 (conversationList.js) added these two: rename, and delete with everything in it.
  /** @param {string} id @param {string} title @returns {Promise<Conversation>} */
  renameConversation: (id, title) => request("PATCH", `/api/conversations/${enc(id)}`, { title }),
  /** @param {string} id @returns {Promise<null>} 204: its jobs canceled, it and they gone */
  deleteConversation: (id) => request("DELETE", `/api/conversations/${enc(id)}`),
  /** @param {string} conversationId @returns {Promise<JobList>} the reload snapshot */
  listJobs: (conversationId) => request("GET", `/api/conversations/${enc(conversationId)}/jobs`),
  /** @param {string} jobId @returns {Promise<Job>} */
  getJob: (jobId) => request("GET", `/api/jobs/${enc(jobId)}`),
  /** @param {string} conversationId @param {ImageRequest} body @returns {Promise<Job>} */
  submitImage: (conversationId, body) =>
    request("POST", `/api/conversations/${enc(conversationId)}/images`, body),
  /** @param {string} jobId @returns {Promise<Job>} */
  cancelJob: (jobId) => request("POST", `/api/jobs/${enc(jobId)}/cancel`),
  /** @param {string} jobId @returns {Promise<Job>} the job in its owner's earliest place */
  moveToFront: (jobId) => request("POST", `/api/jobs/${enc(jobId)}/move`, { to: "front" }),
  /** @returns {Promise<Model[]>} by name */
  listModels: async () => (await request("GET", "/api/models")).models,
};
