// The WebSocket to /ws that never gives up: after a drop it reconnects with exponential backoff
// (0.5 s doubling to 5 s), and on every (re)open hands control to `onOpen`, which catches up
// (snapshot, then subscribe with since_seq) before messages flow again.

const MIN_DELAY_MS = 500;
const MAX_DELAY_MS = 5000;
const LIVE_FALLBACK_MS = 3000;

/** @typedef {"connecting" | "live" | "reconnecting" | "stopped"} SocketState */

/**
 * Why it is reconnecting (empty for the other states).
 * @typedef {{ delay?: number, why?: string, code?: number | null, attempt?: number }} StateDetail
 */

/** @param {number} attempt 0 for the first retry */
function backoffDelay(attempt) {
  return Math.min(MAX_DELAY_MS, MIN_DELAY_MS * 2 ** Math.max(0, attempt));
}

export class LiveSocket {
  /**
   * @param {{ url: () => string,
   *   onOpen: (send: (message: object) => boolean) => Promise<void>,
   *   onMessage: (message: unknown) => void,
   *   onState: (state: SocketState, detail: StateDetail) => void }} hooks url: the ws URL to
   *   open now; onOpen: catches up, before `live`; onState: every change of state
   */
  constructor({ url, onOpen, onMessage, onState }) {
    this._url = url;
    this._onOpen = onOpen;
    this._onMessage = onMessage;
    this._onState = onState;
    /** @type {WebSocket | null} */
    this._ws = null;
    this._attempt = 0;
    /** @type {ReturnType<typeof setTimeout> | undefined} */
    this._timer = undefined;
    /** @type {ReturnType<typeof setTimeout> | undefined} */
    this._liveTimer = undefined;
    this._running = false;
    this._generation = 0; // bumps on every start/stop so stale callbacks do nothing
    /** @type {SocketState} */
    this.state = "stopped";
    this.opens = 0;
    window.addEventListener("online", () => {
      if (this._running && this.state === "reconnecting") this._connectNow();
    });
  }

  start() {
    this.stop();
    this._running = true;
    this._attempt = 0;
    this._setState("connecting");
    this._open();
  }

  stop() {
    this._running = false;
    this._generation += 1;
    clearTimeout(this._timer);
    clearTimeout(this._liveTimer);
    this._timer = undefined;
    if (this._ws) {
      const ws = this._ws;
      this._ws = null;
      try {
        ws.close(1000, "page closed the connection");
      } catch {
        // already closed
      }
    }
    this._setState("stopped");
  }

  // The subscription caught up: show "Live" and start the next backoff from the bottom.
  markLive() {
    clearTimeout(this._liveTimer);
    if (!this._running || !this._ws || this._ws.readyState !== WebSocket.OPEN) return;
    this._attempt = 0;
    if (this.state !== "live") this._setState("live");
  }

  /** @param {object} message @returns {boolean} whether it went out */
  send(message) {
    if (this._ws && this._ws.readyState === WebSocket.OPEN) {
      this._ws.send(JSON.stringify(message));
      return true;
    }
    return false;
  }

  _connectNow() {
    clearTimeout(this._timer);
    this._timer = undefined;
    this._open();
  }

  _open() {
    const generation = this._generation;
    let ws;
    try {
      ws = new WebSocket(this._url());
    } catch (err) {
      this._scheduleReconnect(generation, String(err));
      return;
    }
    this._ws = ws;
    ws.addEventListener("open", async () => {
      if (generation !== this._generation) return;
      this.opens += 1;
      try {
        await this._onOpen((message) => this.send(message));
      } catch (err) {
        // Could not catch up (the server went away again): drop and retry.
        console.warn("catching up after connect failed", err);
        if (generation === this._generation && ws.readyState <= WebSocket.OPEN) ws.close(4000);
        return;
      }
      if (generation !== this._generation || ws.readyState !== WebSocket.OPEN) return;
      // Live once the server says the subscription has caught up (markLive); a server that
      // never says so is taken as live after a moment.
      this._liveTimer = setTimeout(() => this.markLive(), LIVE_FALLBACK_MS);
    });
    ws.addEventListener("message", (event) => {
      if (generation !== this._generation) return;
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        console.warn("ignoring a frame that is not JSON");
        return;
      }
      this._onMessage(message);
    });
    ws.addEventListener("close", (event) => {
      if (generation !== this._generation || this._ws !== ws) return;
      this._ws = null;
      clearTimeout(this._liveTimer);
      this._scheduleReconnect(generation, event.reason || `closed (${event.code})`, event.code);
    });
  }

  /**
   * @param {number} generation
   * @param {string} why
   * @param {number | null} [code] the close code, when it closed
   */
  _scheduleReconnect(generation, why, code = null) {
    if (!this._running || generation !== this._generation) return;
    const delay = backoffDelay(this._attempt);
    this._attempt += 1;
    this._setState("reconnecting", { delay, why, code, attempt: this._attempt });
    clearTimeout(this._timer);
    this._timer = setTimeout(() => {
      if (generation === this._generation) this._open();
    }, delay);
  }

  /** @param {SocketState} state @param {StateDetail} [detail] */
  _setState(state, detail = {}) {
    this.state = state;
    this._onState(state, detail);
  }
}
