// The sidebar as a drawer on narrow screens: the menu button opens it; Escape, a click on the
// page or picking a conversation closes it. The list in it is conversationList.js.

export class Sidebar {
  /** @param {HTMLButtonElement} menuButton @param {HTMLElement} main */
  constructor(menuButton, main) {
    this.menuButton = menuButton;
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
  }

  isOpen() {
    return document.body.classList.contains("sidebar-open");
  }

  close() {
    this._setOpen(false);
  }

  /** @param {boolean} open */
  _setOpen(open) {
    document.body.classList.toggle("sidebar-open", open);
    this.menuButton.setAttribute("aria-expanded", String(open));
  }
}
