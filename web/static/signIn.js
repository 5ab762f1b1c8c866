// Signing in: the token from the first link (?token=) or pasted into the form, who is signed
// in, and signing out when the server no longer takes the token.

import { ApiError, api, setToken } from "./api.js";
import { setText, show } from "./dom.js";

/** @typedef {import("./api.js").Me} Me */

const CLOSE_UNAUTHORIZED = 4401;

export class SignIn {
  /**
   * @param {{ section: HTMLElement, reason: HTMLElement, form: HTMLFormElement,
   *   input: HTMLInputElement, workspace: HTMLElement, whoami: HTMLElement }} ui
   * @param {{ onSignedOut: () => void, onToken: () => void }} hooks onSignedOut: stop
   *   following; onToken: a token was pasted, start again
   */
  constructor(ui, { onSignedOut, onToken }) {
    this.ui = ui;
    this.onSignedOut = onSignedOut;
    ui.form.addEventListener("submit", (event) => {
      event.preventDefault();
      setToken(ui.input.value.trim());
      ui.input.value = "";
      onToken();
    });
  }

  /** @param {string} [reason] why the form shows (the default text when none) */
  show(reason) {
    if (reason) setText(this.ui.reason, reason);
    if (!this.ui.section.hidden) return; // a second refused request: already here
    this.onSignedOut();
    show(this.ui.workspace, false);
    show(this.ui.section, true);
    document.body.classList.add("signed-out");
    this.ui.input.focus();
  }

  /** The token stopped working (a 401 on any request, the socket closed 4401): ask for another. */
  expired() {
    setToken("");
    this.show("Your token was revoked or has expired. Paste a valid one to go on.");
  }

  /** @param {Me | null} me null: /api/me did not answer, the rest can still work */
  signedIn(me) {
    document.body.classList.remove("signed-out");
    show(this.ui.section, false);
    show(this.ui.workspace, true);
    setText(this.ui.whoami, me ? `Signed in as ${me.user}${me.is_admin ? " (admin)" : ""}` : "");
  }

  /**
   * Who the token is; null when it was refused (the form then shows) or /api/me failed.
   * @returns {Promise<{ me: Me | null, refused: boolean }>}
   */
  async check() {
    try {
      return { me: await api.me(), refused: false };
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) {
        this.show("That token was not accepted. Paste a valid one, or open a fresh link.");
        return { me: null, refused: true };
      }
      return { me: null, refused: false };
    }
  }

  /**
   * A socket closed for its token (4401) will never come back by retrying: sign out. One whose
   * upgrade keeps failing may have been refused for it too: ask the API, whose 401 signs out
   * (api.js setUnauthorizedHandler).
   * @param {{ code?: number | null, attempt?: number }} detail
   */
  async recheck(detail) {
    if (detail.code === CLOSE_UNAUTHORIZED) {
      this.expired();
      return;
    }
    if ((detail.attempt || 0) < 2) return;
    try {
      await api.me();
    } catch {
      // a 401 has signed out already; anything else is the outage the socket retries through
    }
  }
}
