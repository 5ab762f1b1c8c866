// The catch-up protocol: follow one conversation over the WebSocket without missing anything.
//
// On load and after every reconnect, in this order:
//   1. read the conversation's jobs (the snapshot: every job as of the list's `seq`, positions
//      live);
//   2. subscribe with since_seq = the store's last seq (the snapshot's, or one seen since), so
//      the server replays every transition after it and then sends the current positions,
//      which are read after the snapshot and so never older than it, then `subscribed`.
// The store drops replayed events the snapshot already includes (by seq), so the end state is
// what a fresh reload shows.

import { api } from "./api.js";
import { isRefusal } from "./imageJobsStore.js";
import { LiveSocket } from "./liveSocket.js";

/** @typedef {import("./imageJobsStore.js").ImageJobsStore} ImageJobsStore */
/** @typedef {import("./imageJobsStore.js").ServerFrame} ServerFrame */
/** @typedef {import("./liveSocket.js").SocketState} SocketState */
/** @typedef {import("./liveSocket.js").StateDetail} StateDetail */

/**
 * A running job's latest preview (web/live/wire.py preview_message): a small data: image URL.
 * @typedef {{ type: "preview", job_id: string, image: string }} PreviewFrame
 */

/**
 * @param {unknown} message
 * @returns {message is PreviewFrame}
 */
function isPreviewFrame(message) {
  if (typeof message !== "object" || message === null) return false;
  const frame = /** @type {Record<string, unknown>} */ (message);
  return frame.type === "preview" && typeof frame.image === "string" &&
    frame.image.startsWith("data:image/");
}

export class CatchUp {
  /**
   * @param {ImageJobsStore} store holds the followed conversation (store.conversationId)
   * @param {{ url: () => string, onRefused: (message: string) => void,
   *   onRetryQueued: (jobId: string) => void,
   *   onPreview: (frame: PreviewFrame) => void,
   *   onState: (state: SocketState, detail: StateDetail) => void }} hooks onRefused: the server
   *   refused the subscription; onRetryQueued: a job went back in line to retry (its event
   *   does not say when it may run again; the job does); onPreview: a running job's preview
   *   image (not the store's: it is drawn, not kept)
   */
  constructor(store, { url, onRefused, onRetryQueued, onPreview, onState }) {
    this.store = store;
    this.onRefused = onRefused;
    this.onRetryQueued = onRetryQueued;
    this._snapshotFresh = false; // the first open uses the snapshot open() just read
    this.socket = new LiveSocket({
      url,
      onOpen: (send) => this._onOpen(send),
      onMessage: (message) => {
        if (isPreviewFrame(message)) onPreview(message);
        else this._onMessage(/** @type {ServerFrame} */ (message));
      },
      onState,
    });
  }

  /**
   * Follow another conversation (null: none): the socket closes and the store forgets.
   * @param {string | null} conversationId
   */
  follow(conversationId) {
    this.socket.stop();
    this.store.reset(conversationId);
    this._snapshotFresh = false;
  }

  /** Step 1: read the snapshot of the followed conversation into the store. */
  async loadSnapshot() {
    const id = this.store.conversationId;
    if (!id) return;
    const list = await api.listJobs(id);
    if (id !== this.store.conversationId) return;
    this.store.applySnapshot(list);
    this._snapshotFresh = true;
  }

  /** Connect (and reconnect for as long as the conversation is followed). */
  start() {
    this.socket.start();
  }

  /** @param {(message: object) => boolean} send */
  async _onOpen(send) {
    const id = this.store.conversationId;
    if (!id) return;
    if (!this._snapshotFresh) await this.loadSnapshot();
    this._snapshotFresh = false;
    if (id !== this.store.conversationId) return;
    send({ op: "subscribe", conversation_id: id, since_seq: this.store.lastSeq });
  }

  /** @param {ServerFrame} message */
  _onMessage(message) {
    if (isRefusal(message)) {
      this.onRefused(message.error.message || "The server refused the subscription.");
      return;
    }
    const changed = this.store.applyMessage(message);
    if (changed && message.type === "queued" && message.error) {
      this.onRetryQueued(message.job_id);
    }
    if (message.type === "subscribed") this.socket.markLive();
  }
}
