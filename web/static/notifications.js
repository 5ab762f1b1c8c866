// Opt-in browser notifications: when the person asked for them (a checkbox, remembered in this
// browser) and the tab is hidden, a job that ends says so. The browser's permission is asked
// only when the box is ticked.

const KEY = "gpuqueue.notify";

export class Notifications {
  /**
   * @param {HTMLInputElement} toggle the checkbox
   * @param {HTMLElement} note says why notifications cannot be had, when they cannot
   */
  constructor(toggle, note) {
    this.toggle = toggle;
    this.note = note;
    const supported = "Notification" in window;
    const wrapper = toggle.closest(".notify");
    if (wrapper instanceof HTMLElement) wrapper.hidden = !supported;
    toggle.checked = supported && localStorage.getItem(KEY) === "1" &&
      Notification.permission === "granted";
    toggle.addEventListener("change", () => this._changed());
  }

  async _changed() {
    this._setNote("");
    if (!this.toggle.checked) {
      localStorage.removeItem(KEY);
      return;
    }
    const permission = Notification.permission === "default"
      ? await Notification.requestPermission() : Notification.permission;
    if (permission !== "granted") {
      this.toggle.checked = false;
      this._setNote("This browser blocks notifications from this page; allow them in its site settings.");
      return;
    }
    localStorage.setItem(KEY, "1");
  }

  /** @param {string} text */
  _setNote(text) {
    this.note.textContent = text;
    this.note.hidden = !text;
  }

  /**
   * Tell the person, when they asked to be told and are not looking at the page.
   * @param {string} text
   */
  notify(text) {
    if (!this.toggle.checked || !document.hidden) return;
    if (!("Notification" in window) || Notification.permission !== "granted") return;
    const shown = new Notification("gpuqueue", { body: text, tag: "gpuqueue-job" });
    shown.addEventListener("click", () => {
      window.focus();
      shown.close();
    });
  }
}
