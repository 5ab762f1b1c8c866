// The sidebar: the user's conversations, newest first, each a real link (?c=<id>) so it can be
// opened in a new tab, with the current one marked aria-current.

import { h } from "./dom.js";
import { whenText } from "./format.js";
import { conversationHref } from "./router.js";

/** @typedef {import("./api.js").Conversation} Conversation */

/** @param {Conversation} conversation */
export function conversationLabel(conversation) {
  return conversation.title || "Untitled conversation";
}

export class ConversationList {
  /**
   * @param {HTMLUListElement} listEl
   * @param {{ onOpen: (id: string) => void }} hooks onOpen: the user picked a conversation
   */
  constructor(listEl, { onOpen }) {
    this.listEl = listEl;
    this.onOpen = onOpen;
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
    const items = this.conversations.map((c) => {
      const link = h(
        "a",
        {
          class: "conversation-link",
          href: conversationHref(c.id),
          dataset: { conversationId: c.id },
          "aria-current": c.id === this.activeId ? "page" : null,
        },
        h("span", { class: "conversation-name", text: conversationLabel(c) }),
        h("span", { class: "conversation-when", text: whenText(c.created_at) }),
      );
      link.addEventListener("click", (event) => {
        if (event.metaKey || event.ctrlKey || event.shiftKey || event.button !== 0) return;
        event.preventDefault();
        this.onOpen(c.id);
      });
      return h("li", {}, link);
    });
    if (!items.length) {
      items.push(h("li", { class: "conversation-none", text: "No conversations yet" }));
    }
    this.listEl.replaceChildren(...items);
  }
}
