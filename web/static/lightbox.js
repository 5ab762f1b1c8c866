// The full-size view of a finished image: a modal <dialog>, so the browser keeps the focus in
// it, closes it on Escape and makes the page behind it inert; a click outside the image or on
// Close closes it too, and the focus goes back to what opened it. The image is shown whole
// (scaled down to fit, never cropped), portrait or landscape.

import { setText } from "./dom.js";

export class Lightbox {
  /** @param {HTMLDialogElement} dialog with an img, a caption and a close button */
  constructor(dialog) {
    const img = dialog.querySelector("img");
    const caption = dialog.querySelector(".lightbox-caption");
    const close = dialog.querySelector(".lightbox-close");
    if (!(img instanceof HTMLImageElement) || !(caption instanceof HTMLElement) ||
        !(close instanceof HTMLButtonElement)) {
      throw new Error("the lightbox has no img, .lightbox-caption or .lightbox-close");
    }
    this.dialog = dialog;
    this.img = img;
    this.caption = caption;
    /** @type {HTMLElement | null} */
    this._opener = null;
    close.addEventListener("click", () => dialog.close());
    // The dialog's own box is the backdrop's area too: a click on it, not on its content,
    // is a click outside the image.
    dialog.addEventListener("click", (event) => {
      if (event.target === dialog) dialog.close();
    });
    dialog.addEventListener("close", () => {
      this.img.removeAttribute("src");
      const opener = this._opener;
      this._opener = null;
      if (opener && opener.isConnected) opener.focus({ preventScroll: true });
    });
  }

  get isOpen() {
    return this.dialog.open;
  }

  /**
   * @param {{ src: string, alt: string, caption: string }} image
   * @param {HTMLElement} opener gets the focus back on close
   */
  open({ src, alt, caption }, opener) {
    this._opener = opener;
    this.img.src = src;
    this.img.alt = alt;
    setText(this.caption, caption);
    if (!this.dialog.open) this.dialog.showModal();
  }
}
