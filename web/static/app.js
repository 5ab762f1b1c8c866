// The page: builds its parts and wires them together. Each part has one job: the catch-up
// protocol (catchUp.js), the store (imageJobsStore.js), the cards (cards.js) and what their
// buttons do (jobActions.js), the models and their workers (models.js), the address (router.js),
// signing in (signIn.js), the sidebar (sidebar.js, conversationList.js), the prompt
// (promptForm.js), and what the person is told of their jobs: the live region
// (jobAnnouncer.js), the tab's title (tabTitle.js), notifications (notifications.js) and whether
// any GPU is there (fleetStatus.js). Which conversation is open is the store's conversationId.

import { adoptTokenFromUrl, api, ApiError, getToken, setUnauthorizedHandler } from "./api.js";
import { CardList } from "./cards.js";
import { CatchUp } from "./catchUp.js";
import { ConversationList, conversationLabel } from "./conversationList.js";
import { setText, show } from "./dom.js";
import { whenText } from "./format.js";
import { FleetStatus } from "./fleetStatus.js";
import { createImageJobsStore } from "./imageJobsStore.js";
import { JobAnnouncer, jobSentence } from "./jobAnnouncer.js";
import { Lightbox } from "./lightbox.js";
import { errorText, JobActions } from "./jobActions.js";
import { Models } from "./models.js";
import { Notifications } from "./notifications.js";
import { PromptForm } from "./promptForm.js";
import { conversationFromUrl, onNavigate, showInUrl } from "./router.js";
import { Sidebar } from "./sidebar.js";
import { SignIn } from "./signIn.js";
import { TabTitle } from "./tabTitle.js";

/** @typedef {import("./liveSocket.js").SocketState} SocketState */

/**
 * @template {HTMLElement} T
 * @param {string} id
 * @param {new () => T} type
 * @returns {T}
 */
function $(id, type) {
  const el = document.getElementById(id);
  if (!(el instanceof type)) throw new Error(`#${id} is missing from index.html`);
  return el;
}

const ui = {
  workspace: $("workspace", HTMLElement),
  title: $("conversation-title", HTMLElement),
  notice: $("notice", HTMLElement),
  connection: $("connection", HTMLElement),
  connectionText: $("connection-text", HTMLElement),
  prompt: $("prompt", HTMLTextAreaElement),
};

/** @type {Record<SocketState, string>} */
const CONNECTION_WORDS = {
  connecting: "Connecting…",
  live: "Live",
  reconnecting: "Reconnecting…",
  stopped: "Offline",
};

/** @param {string} message the empty string hides the notice */
function showNotice(message) {
  setText(ui.notice, message);
  show(ui.notice, Boolean(message));
}

const store = createImageJobsStore();
const models = new Models();
const jobActions = new JobActions(store, showNotice);
const lightbox = new Lightbox($("lightbox", HTMLDialogElement));
const cards = new CardList(
  $("cards", HTMLElement), $("empty", HTMLElement), store, jobActions, models, {
    onView: (job, image, opener) => lightbox.open(
      { src: image.currentSrc || image.src, alt: image.alt, caption: job.prompt }, opener),
    onUseSettings: (job) => promptForm.useSettings(job),
    onCopySeed: async (job) => {
      const seed = String(job.params.seed);
      try {
        await navigator.clipboard.writeText(seed);
        return true;
      } catch {
        showNotice(`The clipboard could not be used; the seed is ${seed}.`);
        return false;
      }
    },
  },
);

// The workers and the queue (the line above the cards, a queued card's "waiting for a GPU"):
// read while a conversation is open, at once when one of its jobs changes state, and when a
// job has an ETA for a model the page thinks no worker serves.
new FleetStatus($("fleet", HTMLElement), models);
models.pollWhile(() => Boolean(getToken()) && store.conversationId !== null);
let activeJobs = "";
store.subscribe(() => {
  const active = store.jobs().filter((j) => j.status === "queued" || j.status === "processing")
    .map((j) => `${j.job_id}:${j.status}`).join();
  const stale = store.some((job) => job.status === "queued" && job.eta_s !== null &&
    job.eta_s !== undefined && models.workers(job.model) === 0);
  if (getToken() && (stale || active !== activeJobs)) models.refreshAfterChange();
  activeJobs = active;
});

// What the person hears and sees of their own jobs: one polite live region, the tab's title,
// and (when asked for) a notification while the tab is hidden.
const announcements = $("announcements", HTMLElement);
const tabTitle = new TabTitle(store);
const notifications = new Notifications(
  $("notify-toggle", HTMLInputElement), $("notify-note", HTMLElement),
);
new JobAnnouncer(store, ({ text, finished }) => {
  setText(announcements, text);
  tabTitle.noteFinished(finished);
  if (finished.length) notifications.notify(finished.map(jobSentence).join(". "));
});

const catchUp = new CatchUp(store, {
  url: () => {
    const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
    return `${scheme}//${window.location.host}/ws?token=${encodeURIComponent(getToken())}`;
  },
  onRefused: showNotice,
  onRetryQueued: (jobId) => jobActions.fetchDetails(jobId),
  onPreview: (frame) => cards.preview(frame),
  onState: (state, detail) => {
    ui.connection.dataset.state = state;
    setText(ui.connectionText, CONNECTION_WORDS[state]);
    if (state === "reconnecting") signIn.recheck(detail);
    // Workers may have come or gone while the page was away.
    if (state === "live") models.refresh({ unlessWithinMs: 1000 });
    // "The server cannot be reached" and the like say nothing true once it is back.
    if (state === "live") promptForm.clearStaleError();
  },
});

const signIn = new SignIn(
  {
    section: $("signin", HTMLElement),
    reason: $("signin-reason", HTMLElement),
    form: $("signin-form", HTMLFormElement),
    input: $("token-input", HTMLInputElement),
    workspace: ui.workspace,
    whoami: $("whoami", HTMLElement),
  },
  { onSignedOut: () => catchUp.follow(null), onToken: () => boot() },
);
setUnauthorizedHandler(() => signIn.expired());

const sidebar = new Sidebar(
  $("menu-button", HTMLButtonElement), $("main", HTMLElement), $("sidebar", HTMLElement),
);

const conversationList = new ConversationList($("conversation-list", HTMLUListElement), {
  onOpen: (id) => {
    sidebar.close();
    openConversation(id, { push: true });
  },
  onRenamed: (conversation) => {
    if (conversation.id === store.conversationId) showConversationTitle(conversation);
  },
  onDeleted: (id) => {
    if (id !== store.conversationId) return;
    const next = conversationList.conversations[0];
    if (next) openConversation(next.id);
    else newConversation();
  },
  onError: showNotice,
});

const promptForm = new PromptForm($("prompt-form", HTMLFormElement), {
  onSubmit: async (body) => {
    try {
      const job = await jobActions.submit(body);
      const conversation = conversationList.get(job.conversation_id);
      if (conversation && !conversation.title) readTitle(conversation.id);
      return job;
    } catch (err) {
      if (err instanceof ApiError && err.code === "unknown_model") models.refresh();
      throw err;
    }
  },
});
models.subscribe(() => promptForm.setModels(models.list));

$("new-conversation", HTMLButtonElement).addEventListener("click", () => {
  sidebar.close();
  newConversation();
});

onNavigate((id) => {
  if (id !== store.conversationId) openConversation(id);
});

// Exposed for the browser tests and for poking at from the console.
Object.assign(window, {
  gpuqueue: { store, models, socket: catchUp.socket, cards: cards.cards },
});

/**
 * @param {string} id
 * @param {{ push?: boolean }} [how] push: a new history entry (the person moved there)
 */
async function openConversation(id, { push = false } = {}) {
  showInUrl(id, push);
  if (id === store.conversationId) return;
  catchUp.follow(id);
  showNotice("");
  conversationList.setActive(id);
  showConversationTitle(conversationList.get(id));
  ui.workspace.setAttribute("aria-busy", "true");
  try {
    await catchUp.loadSnapshot();
  } catch (err) {
    if (id !== store.conversationId) return;
    if (err instanceof ApiError && err.status === 401) return; // signed out already
    showNotice(`Could not load this conversation: ${errorText(err)}`);
  } finally {
    if (id === store.conversationId) ui.workspace.removeAttribute("aria-busy");
  }
  if (id !== store.conversationId) return;
  cards.render();
  catchUp.start();
}

/** @param {import("./api.js").Conversation | null} conversation the open one */
function showConversationTitle(conversation) {
  const label = conversation ? conversationLabel(conversation) : "Conversation";
  setText(ui.title, conversation && !conversation.title
    ? `${label} · ${whenText(conversation.created_at)}` : label);
  tabTitle.setBase(label);
}

/**
 * The server titles an untitled conversation from its first prompt: show the title it chose.
 * @param {string} id
 */
async function readTitle(id) {
  try {
    const found = await api.getConversation(id);
    conversationList.update(found);
    if (id === store.conversationId) showConversationTitle(conversationList.get(id));
  } catch (err) {
    console.warn("could not read the conversation's title", err);
  }
}

async function newConversation() {
  const current = store.conversationId ? conversationList.get(store.conversationId) : null;
  if (current && !current.title && store.size === 0) {
    ui.prompt.focus(); // this one is still empty: use it rather than pile up empty ones
    return;
  }
  try {
    const conversation = await api.createConversation("");
    conversationList.add(conversation);
    await openConversation(conversation.id, { push: true });
    ui.prompt.focus();
  } catch (err) {
    showNotice(`Could not create a conversation: ${errorText(err)}`);
  }
}

/** The conversation to open: the address's if it is the user's, else the newest, else a new one. */
async function pickConversation() {
  /** @type {import("./api.js").Conversation[]} */
  let conversations = [];
  try {
    conversations = await api.listConversations();
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) return null; // signed out already
    showNotice(`Could not list your conversations: ${errorText(err)}`);
  }
  conversationList.set(conversations);

  const wanted = conversationFromUrl();
  if (wanted && conversationList.has(wanted)) return wanted;
  if (wanted) {
    try {
      const found = await api.getConversation(wanted);
      conversationList.add({ id: found.id, title: found.title, created_at: found.created_at });
      return found.id;
    } catch {
      showNotice("That conversation does not exist, or it is not yours.");
    }
  }
  if (conversations.length) return conversations[0].id;
  try {
    const created = await api.createConversation("");
    conversationList.add(created);
    return created.id;
  } catch (err) {
    showNotice(`Could not create a conversation: ${errorText(err)}`);
    return null;
  }
}

async function boot() {
  adoptTokenFromUrl();
  if (!getToken()) return signIn.show();
  const { me, refused } = await signIn.check();
  if (refused) return;
  signIn.signedIn(me);
  models.refresh();
  const id = await pickConversation();
  if (!id) return;
  const notice = ui.notice.hidden ? "" : ui.notice.textContent;
  await openConversation(id);
  if (notice && ui.notice.hidden) showNotice(notice);
}

boot();
