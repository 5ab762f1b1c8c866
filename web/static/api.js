// The HTTP API (contract: "HTTP API"), with the bearer token on every request.

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

export function setToken(token) {
  if (token) localStorage.setItem(TOKEN_KEY, token);
  else localStorage.removeItem(TOKEN_KEY);
}

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
  }
}

async function request(method, path, body) {
  const headers = { Accept: "application/json", Authorization: `Bearer ${getToken()}` };
  const init = { method, headers, cache: "no-store" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
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
    throw new ApiError(
      response.status,
      error.code || `http_${response.status}`,
      error.message || `The server answered ${response.status}.`,
    );
  }
  return data;
}

const enc = encodeURIComponent;

export const api = {
  me: () => request("GET", "/api/me"),
  listConversations: async () => {
    const data = await request("GET", "/api/conversations");
    return Array.isArray(data) ? data : (data && data.conversations) || [];
  },
  createConversation: (title = "") => request("POST", "/api/conversations", { title }),
  getConversation: (id) => request("GET", `/api/conversations/${enc(id)}`),
  // The reload snapshot; `seq` (when the server sends one) is the last event it includes.
  listJobs: (conversationId) => request("GET", `/api/conversations/${enc(conversationId)}/jobs`),
  getJob: (jobId) => request("GET", `/api/jobs/${enc(jobId)}`),
  submitImage: (conversationId, body) =>
    request("POST", `/api/conversations/${enc(conversationId)}/images`, body),
  cancelJob: (jobId) => request("POST", `/api/jobs/${enc(jobId)}/cancel`),
};
