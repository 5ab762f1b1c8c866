// The sidebar as a drawer on narrow screens: the menu button opens it; Escape, a click on the
// page or picking a conversation closes it. Closed, the drawer is inert (no Tab stop in it, no
// screen reader wandering off screen). The list in it is conversationList.js.

const NARROW = "(max-width: 860px)"; // style.css's drawer breakpoint

export class Sidebar {
  /**
   * @param {HTMLButtonElement} menuButton
   * @param {HTMLElement} main
   * @param {HTMLElement} drawer the sidebar itself
   */
  constructor(menuButton, main, drawer) {
    this.menuButton = menuButton;
    this.drawer = drawer;
    this.narrow = window.matchMedia(NARROW);
    this.narrow.addEventListener("change", () => this._setOpen(false));
    menuButton.addEventListener("click", () => this._setOpen(!this.isOpen()));
    main.addEventListener("click", () => {
      if (this.isOpen()) this.close();
    });
    document.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && this.isOpen()) {
        this.close();
        menuButton.focus();
      }
    });
    this._setOpen(false);
  }

  isOpen() {
    return document.body.classList.contains("sidebar-open");
  }

  close() {
    this._setOpen(false);
  }

  /** @param {boolean} open */
  _setOpen(open) {
    const wasOpen = this.isOpen();
    document.body.classList.toggle("sidebar-open", open);
    this.menuButton.setAttribute("aria-expanded", String(open));
    this.drawer.inert = this.narrow.matches && !open;
    if (open && !wasOpen) {
      const first = this.drawer.querySelector("button, a[href], input");
      if (first instanceof HTMLElement) first.focus();
    }
  }
}
