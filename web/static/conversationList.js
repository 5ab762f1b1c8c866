// The sidebar: the user's conversations, newest first, each a real link (?c=<id>) so it can be
// opened in a new tab, with the current one marked aria-current. Each is named by its title
// (the server takes it from the first prompt) and can be renamed in place (Enter or leaving
// the field saves, Escape keeps the old name) or deleted with everything in it, after asking.

import { api, ApiError } from "./api.js";
import { h } from "./dom.js";
import { whenText } from "./format.js";
import { conversationHref } from "./router.js";

/** @typedef {import("./api.js").Conversation} Conversation */

const SVG = "http://www.w3.org/2000/svg";
const ICONS = {
  rename: "M4 20h4L19 9l-4-4L4 16v4zM13.5 6.5l4 4",
  delete: "M5 7h14M10 11v6M14 11v6M6.5 7l1 13h9l1-13M9.5 7V4h5v3",
};

/** @param {string} path */
function icon(path) {
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("width", "16");
  svg.setAttribute("height", "16");
  svg.setAttribute("aria-hidden", "true");
  const line = document.createElementNS(SVG, "path");
  line.setAttribute("d", path);
  for (const [key, value] of Object.entries({
    fill: "none", stroke: "currentColor", "stroke-width": "2", "stroke-linecap": "round",
    "stroke-linejoin": "round",
  })) line.setAttribute(key, value);
  svg.append(line);
  return svg;
}

/** @param {Conversation} conversation */
export function conversationLabel(conversation) {
  return conversation.title || "Untitled conversation";
}

/** @param {unknown} err */
function reason(err) {
  return err instanceof Error ? err.message : String(err);
}

export class ConversationList {
  /**
   * @param {HTMLUListElement} listEl
   * @param {{ onOpen: (id: string) => void, onRenamed: (conversation: Conversation) => void,
   *   onDeleted: (id: string) => void, onError: (message: string) => void }} hooks onOpen: the
   *   user picked a conversation; onRenamed, onDeleted: done on the server (the list shows it
   *   already); onError: a rename or delete was refused
   */
  constructor(listEl, { onOpen, onRenamed, onDeleted, onError }) {
    this.listEl = listEl;
    this.onOpen = onOpen;
    this.onRenamed = onRenamed;
    this.onDeleted = onDeleted;
    this.onError = onError;
    /** @type {Conversation[]} */
    this.conversations = [];
    /** @type {string | null} */
    this.activeId = null;
  }

  /** @param {Conversation[]} conversations newest first */
  set(conversations) {
    this.conversations = [...conversations];
    this.render();
  }

  /** @param {Conversation} conversation it goes first */
  add(conversation) {
    this.conversations = [
      conversation,
      ...this.conversations.filter((c) => c.id !== conversation.id),
    ];
    this.render();
  }

  /**
   * A conversation read again (its title may be new): changed where it is.
   * @param {Conversation} conversation
   */
  update(conversation) {
    const index = this.conversations.findIndex((c) => c.id === conversation.id);
    if (index < 0 || this.conversations[index].title === conversation.title) return;
    this.conversations[index] = { ...this.conversations[index], title: conversation.title };
    this.render();
  }

  /** @param {string} id */
  has(id) {
    return this.conversations.some((c) => c.id === id);
  }

  /** @param {string} id */
  get(id) {
    return this.conversations.find((c) => c.id === id) || null;
  }

  /** @param {string} id */
  setActive(id) {
    this.activeId = id;
    for (const link of this.listEl.querySelectorAll("a[data-conversation-id]")) {
      if (!(link instanceof HTMLAnchorElement)) continue;
      if (link.dataset.conversationId === id) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
  }

  render() {
    const items = this.conversations.map((c) => this._item(c));
    if (!items.length) {
      items.push(h("li", { class: "conversation-none", text: "No conversations yet" }));
    }
    this.listEl.replaceChildren(...items);
  }

  /** @param {Conversation} c */
  _item(c) {
    const label = conversationLabel(c);
    const link = h(
      "a",
      {
        class: "conversation-link",
        href: conversationHref(c.id),
        dataset: { conversationId: c.id },
        "aria-current": c.id === this.activeId ? "page" : null,
      },
      h("span", { class: "conversation-name", text: label }),
      h("span", { class: "conversation-when", text: whenText(c.created_at) }),
    );
    link.addEventListener("click", (event) => {
      if (event.metaKey || event.ctrlKey || event.shiftKey || event.button !== 0) return;
      event.preventDefault();
      this.onOpen(c.id);
    });
    const item = h("li", { class: "conversation", dataset: { conversationId: c.id } });
    const rename = h("button", {
      type: "button", class: "icon-button conversation-rename", "aria-label": `Rename '${label}'`,
      title: "Rename", onclick: () => this._rename(c, item),
    }, icon(ICONS.rename));
    const remove = h("button", {
      type: "button", class: "icon-button conversation-delete", "aria-label": `Delete '${label}'`,
      title: "Delete", onclick: () => this._delete(c),
    }, icon(ICONS.delete));
    item.append(link, h("div", { class: "conversation-tools" }, rename, remove));
    return item;
  }

  /**
   * The name becomes a field; Enter or leaving it saves, Escape keeps the old name.
   * @param {Conversation} c
   * @param {HTMLLIElement} item
   */
  _rename(c, item) {
    const input = h("input", {
      type: "text", class: "conversation-title-input", value: c.title, maxlength: "200",
      "aria-label": `New name for '${conversationLabel(c)}'`,
    });
    const form = h("form", { class: "conversation-rename-form" }, input);
    item.classList.add("is-renaming");
    item.replaceChildren(form);
    input.focus();
    input.select();
    let done = false;
    /** @param {boolean} save */
    const finish = async (save) => {
      if (done) return;
      done = true;
      const title = input.value.trim();
      if (save && title && title !== c.title) {
        try {
          const renamed = await api.renameConversation(c.id, title);
          this.update({ ...c, title: renamed.title });
          this.onRenamed(this.get(c.id) || renamed);
        } catch (err) {
          if (!(err instanceof ApiError && err.status === 401)) {
            this.onError(`Could not rename: ${reason(err)}`);
          }
        }
      }
      this.render();
      this._focus(c.id, ".conversation-rename");
    };
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      finish(true);
    });
    input.addEventListener("keydown", (event) => {
      if (event.key === "Escape") {
        event.preventDefault();
        event.stopPropagation(); // the phone's drawer closes on Escape too: not this time
        finish(false);
      }
    });
    input.addEventListener("blur", () => finish(true));
  }

  /**
   * After asking: cancels its jobs and removes it with its images (the server's DELETE).
   * @param {Conversation} c
   */
  async _delete(c) {
    const label = conversationLabel(c);
    if (!window.confirm(`Delete "${label}" with all its images? Running and waiting ` +
      "images are canceled. This cannot be undone.")) return;
    const index = this.conversations.findIndex((x) => x.id === c.id);
    try {
      await api.deleteConversation(c.id);
    } catch (err) {
      if (!(err instanceof ApiError && err.status === 401)) {
        this.onError(`Could not delete "${label}": ${reason(err)}`);
      }
      return;
    }
    this.conversations = this.conversations.filter((x) => x.id !== c.id);
    this.render();
    this.onDeleted(c.id);
    // The focus goes to the conversation that took its place in the list, if any.
    const next = this.conversations[Math.min(index, this.conversations.length - 1)];
    if (next) this._focus(next.id, ".conversation-link");
  }

  /** @param {string} id @param {string} selector */
  _focus(id, selector) {
    for (const item of this.listEl.querySelectorAll("li.conversation")) {
      if (!(item instanceof HTMLElement) || item.dataset.conversationId !== id) continue;
      const target = item.querySelector(selector);
      if (target instanceof HTMLElement) target.focus();
    }
  }
}
