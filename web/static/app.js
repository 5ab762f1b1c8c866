// The page: wires the API, the WebSocket, the store and the cards together.
//
// Catching up, on load and after every reconnect, goes in this order:
//   1. read the conversation's jobs (the snapshot: the database's state, positions live);
//   2. subscribe with since_seq = the last event seen before that snapshot (0 on a first load),
//      so the server replays every transition the snapshot may have missed and then sends the
//      current positions, which are read after the snapshot and so never older than it.
// The store drops replayed events the snapshot already includes, so the end state is what a
// fresh reload shows.

import { ApiError, adoptTokenFromUrl, api, getToken, setToken } from "./api.js";
import { ConversationList, conversationHref, conversationLabel } from "./conversationList.js";
import { setText, show } from "./dom.js";
import { whenText } from "./format.js";
import { ImageProgressCard } from "./ImageProgressCard.js";
import { createImageJobsStore } from "./imageJobsStore.js";
import { LiveSocket } from "./liveSocket.js";
import { PromptForm } from "./promptForm.js";

const $ = (id) => document.getElementById(id);
const REQUEST_FIELDS = ["negative_prompt", "width", "height", "steps", "guidance_scale", "seed"];
const JOB_FIELDS = ["priority", "max_attempts", "timeout_s"];
const CLOSE_UNAUTHORIZED = 4401;

const store = createImageJobsStore();
const cards = new Map(); // job_id -> ImageProgressCard
const fetchingDetails = new Set();
let currentId = null;
let snapshotSeq = 0; // the `seq` the last snapshot said it includes (0 when it says nothing)
let caughtUpOnce = false; // the first open uses the snapshot openConversation just read

const ui = {
  signin: $("signin"),
  signinReason: $("signin-reason"),
  workspace: $("workspace"),
  title: $("conversation-title"),
  cards: $("cards"),
  empty: $("empty"),
  notice: $("notice"),
  connection: $("connection"),
  connectionText: $("connection-text"),
  whoami: $("whoami"),
  sidebar: $("sidebar"),
  menuButton: $("menu-button"),
};

const conversationList = new ConversationList($("conversation-list"), {
  onOpen: (id) => {
    closeSidebar();
    openConversation(id, { push: true });
  },
});

const promptForm = new PromptForm($("prompt-form"), {
  onSubmit: async (body) => {
    if (!currentId) throw new Error("No conversation is open yet.");
    const job = await api.submitImage(currentId, body);
    store.upsertJob(job);
  },
});

const socket = new LiveSocket({
  url: () => {
    const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
    return `${scheme}//${window.location.host}/ws?token=${encodeURIComponent(getToken())}`;
  },
  onOpen: async (send) => {
    const id = currentId;
    if (!id) return;
    if (caughtUpOnce) await loadSnapshot(id);
    caughtUpOnce = true;
    if (id !== currentId) return;
    send({
      op: "subscribe",
      conversation_id: id,
      since_seq: Math.max(store.lastSeq, snapshotSeq),
    });
  },
  onMessage: (message) => {
    if (message.type === "error" && typeof message.seq !== "number") {
      // A refused frame (an `error` transition event always carries a seq).
      const error = typeof message.error === "object" && message.error ? message.error : {};
      showNotice(error.message || "The server refused the subscription.");
      return;
    }
    const changed = store.applyMessage(message);
    // A retry's event does not say when it may run again; its job does (run_after).
    if (changed && message.type === "queued" && message.error) {
      fetchDetails(String(message.job_id));
    }
    if (message.type === "subscribed") socket.markLive();
  },
  onState: (state, detail) => {
    ui.connection.dataset.state = state;
    const words = {
      connecting: "Connecting…",
      live: "Live",
      reconnecting: "Reconnecting…",
      stopped: "Offline",
    };
    setText(ui.connectionText, words[state] || state);
    if (state === "reconnecting") checkTokenStillValid(detail);
  },
});

// Exposed for the browser tests and for poking at from the console.
window.gpuqueue = { store, socket, cards };

// ---- jobs and cards -------------------------------------------------------------------

async function loadSnapshot(id) {
  const snapshot = await api.listJobs(id);
  if (id !== currentId) return;
  const seq = snapshot && typeof snapshot.seq === "number" ? snapshot.seq : 0;
  snapshotSeq = Math.max(snapshotSeq, seq);
  store.applySnapshot((snapshot && snapshot.jobs) || []);
}

let renderQueued = false;
store.subscribe(() => {
  if (renderQueued) return;
  renderQueued = true;
  queueMicrotask(() => {
    renderQueued = false;
    render();
  });
});

function render() {
  const jobs = store.jobs();
  const wanted = new Set(jobs.map((j) => j.job_id));
  for (const [id, card] of cards) {
    if (!wanted.has(id)) {
      card.element.remove();
      cards.delete(id);
    }
  }
  const ordered = [];
  for (const job of jobs) {
    let card = cards.get(job.job_id);
    if (card) card.update(job);
    else {
      card = new ImageProgressCard(job, cardActions);
      cards.set(job.job_id, card);
    }
    ordered.push(card.element);
  }
  ordered.reverse(); // newest first, next to the prompt box
  // Move nodes only when the order changed: moving a node would drop the focus inside it.
  const current = [...ui.cards.children];
  if (current.length !== ordered.length || current.some((el, i) => el !== ordered[i])) {
    ordered.forEach((el, i) => {
      if (ui.cards.children[i] !== el) ui.cards.insertBefore(el, ui.cards.children[i] || null);
    });
  }
  show(ui.empty, currentId !== null && jobs.length === 0);
  for (const id of store.partialJobIds()) fetchDetails(id);
}

setInterval(() => {
  for (const card of cards.values()) if (card.job.status === "queued") card.refreshEta();
}, 1000);

async function fetchDetails(jobId) {
  if (fetchingDetails.has(jobId)) return;
  fetchingDetails.add(jobId);
  try {
    store.upsertJob(await api.getJob(jobId));
  } catch (err) {
    console.warn("could not load job", jobId, err);
  } finally {
    fetchingDetails.delete(jobId);
  }
}

const cardActions = {
  async onCancel(job) {
    try {
      store.upsertJob(await api.cancelJob(job.job_id));
    } catch (err) {
      if (err instanceof ApiError && err.status === 409) {
        store.upsertJob(await api.getJob(job.job_id)); // it finished meanwhile
      } else {
        showNotice(`Could not cancel: ${err.message}`);
      }
    }
  },

  // The same request again: same prompt, same params (the seed included), same limits.
  async onRetry(job) {
    const body = { prompt: job.prompt };
    const params = job.params || {};
    for (const key of REQUEST_FIELDS) {
      if (params[key] !== undefined && params[key] !== null) body[key] = params[key];
    }
    for (const key of JOB_FIELDS) {
      if (job[key] !== undefined && job[key] !== null) body[key] = job[key];
    }
    try {
      const created = await api.submitImage(job.conversation_id || currentId, body);
      store.upsertJob(created);
      await Promise.resolve();
      render();
      const card = cards.get(String(created.job_id));
      if (card) {
        card.element.focus({ preventScroll: true });
        card.element.scrollIntoView({ block: "nearest", behavior: "smooth" });
      }
    } catch (err) {
      showNotice(`Could not retry: ${err.message}`);
    }
  },

  // The image's signed link failed (it may have expired): the job, read again, has a fresh one.
  onImageError(job) {
    fetchDetails(job.job_id);
  },
};

// ---- conversations --------------------------------------------------------------------

function conversationFromUrl() {
  return new URL(window.location.href).searchParams.get("c");
}

async function openConversation(id, { push = false } = {}) {
  const href = conversationHref(id);
  if (window.location.pathname + window.location.search !== href) {
    if (push) history.pushState({ c: id }, "", href);
    else history.replaceState({ c: id }, "", href);
  }
  if (id === currentId) return;
  currentId = id;
  socket.stop();
  for (const card of cards.values()) card.element.remove();
  cards.clear();
  store.reset(id);
  snapshotSeq = 0;
  caughtUpOnce = false;
  showNotice("");
  conversationList.setActive(id);
  const conversation = conversationList.get(id);
  const label = conversation ? conversationLabel(conversation) : "Conversation";
  setText(ui.title, conversation && !conversation.title
    ? `${label} · ${whenText(conversation.created_at)}` : label);
  document.title = `${label} · gpuqueue`;
  ui.workspace.setAttribute("aria-busy", "true");
  try {
    await loadSnapshot(id);
  } catch (err) {
    if (id !== currentId) return;
    if (err instanceof ApiError && err.status === 401) return showSignIn(err.message);
    showNotice(`Could not load this conversation: ${err.message}`);
  } finally {
    if (id === currentId) ui.workspace.removeAttribute("aria-busy");
  }
  if (id !== currentId) return;
  render();
  socket.start();
}

async function newConversation() {
  const current = conversationList.get(currentId);
  if (current && !current.title && store.size === 0) {
    $("prompt").focus(); // this one is still empty: use it rather than pile up empty ones
    return;
  }
  try {
    const conversation = await api.createConversation("");
    conversationList.add(conversation);
    await openConversation(conversation.id, { push: true });
    $("prompt").focus();
  } catch (err) {
    showNotice(`Could not create a conversation: ${err.message}`);
  }
}

// A socket refused for its token (close 4401, or an upgrade that keeps failing) will never
// come back by retrying: ask the API once, and sign out if the token is no longer valid.
async function checkTokenStillValid(detail) {
  if (detail.code !== CLOSE_UNAUTHORIZED && (detail.attempt || 0) < 2) return;
  try {
    await api.me();
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) {
      setToken("");
      showSignIn("Your token was revoked or has expired. Paste a valid one to go on.");
    }
  }
}

// ---- chrome ---------------------------------------------------------------------------

function showNotice(message) {
  setText(ui.notice, message);
  show(ui.notice, Boolean(message));
}

function showSignIn(reason) {
  socket.stop();
  currentId = null;
  show(ui.workspace, false);
  show(ui.signin, true);
  document.body.classList.add("signed-out");
  if (reason) setText(ui.signinReason, reason);
  $("token-input").focus();
}

function closeSidebar() {
  document.body.classList.remove("sidebar-open");
  ui.menuButton.setAttribute("aria-expanded", "false");
}

ui.menuButton.addEventListener("click", () => {
  const open = !document.body.classList.contains("sidebar-open");
  document.body.classList.toggle("sidebar-open", open);
  ui.menuButton.setAttribute("aria-expanded", String(open));
});

$("main").addEventListener("click", () => {
  if (document.body.classList.contains("sidebar-open")) closeSidebar();
});

document.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && document.body.classList.contains("sidebar-open")) {
    closeSidebar();
    ui.menuButton.focus();
  }
});

$("new-conversation").addEventListener("click", () => {
  closeSidebar();
  newConversation();
});

$("signin-form").addEventListener("submit", (event) => {
  event.preventDefault();
  setToken($("token-input").value.trim());
  $("token-input").value = "";
  boot();
});

window.addEventListener("popstate", () => {
  const id = conversationFromUrl();
  if (id && id !== currentId) openConversation(id);
});

// ---- start ----------------------------------------------------------------------------

async function boot() {
  adoptTokenFromUrl();
  if (!getToken()) return showSignIn();
  let me;
  try {
    me = await api.me();
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) {
      setToken("");
      return showSignIn("That token was not accepted. Paste a valid one, or open a fresh link.");
    }
    me = null; // /api/me missing or failing: the rest can still work
  }
  document.body.classList.remove("signed-out");
  show(ui.signin, false);
  show(ui.workspace, true);
  const name = me && (me.name || me.user || me.username);
  setText(ui.whoami, name ? `Signed in as ${name}${me.is_admin ? " (admin)" : ""}` : "");

  let conversations = [];
  try {
    conversations = await api.listConversations();
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) return showSignIn(err.message);
    showNotice(`Could not list your conversations: ${err.message}`);
  }
  conversationList.set(conversations);

  let id = conversationFromUrl();
  if (id && !conversationList.has(id)) {
    try {
      const found = await api.getConversation(id);
      conversationList.add({ id: found.id, title: found.title, created_at: found.created_at });
    } catch {
      id = null;
      showNotice("That conversation does not exist, or it is not yours.");
    }
  }
  if (!id) {
    if (conversations.length) id = conversations[0].id;
    else {
      try {
        const created = await api.createConversation("");
        conversationList.add(created);
        id = created.id;
      } catch (err) {
        showNotice(`Could not create a conversation: ${err.message}`);
        return;
      }
    }
  }
  const notice = ui.notice.hidden ? "" : ui.notice.textContent;
  await openConversation(id);
  if (notice && ui.notice.hidden) showNotice(notice);
}

boot();
