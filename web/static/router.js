// Routing: the address names the open conversation (/?c=<id>), so a reload, a bookmark or the
// back button comes back to it.

/** @param {string} id */
export function conversationHref(id) {
  const url = new URL(window.location.href);
  url.search = "";
  url.hash = "";
  url.searchParams.set("c", id);
  return url.pathname + url.search;
}

/** The conversation the address names, if any. */
export function conversationFromUrl() {
  return new URL(window.location.href).searchParams.get("c");
}

/**
 * Put the conversation in the address: a new history entry when the person moved there
 * (`push`), else in place of the current one.
 * @param {string} id
 * @param {boolean} push
 */
export function showInUrl(id, push) {
  const href = conversationHref(id);
  if (window.location.pathname + window.location.search === href) return;
  if (push) history.pushState({ c: id }, "", href);
  else history.replaceState({ c: id }, "", href);
}

/**
 * Back and forward: `open(id)` for the conversation the address now names.
 * @param {(id: string) => void} open
 */
export function onNavigate(open) {
  window.addEventListener("popstate", () => {
    const id = conversationFromUrl();
    if (id) open(id);
  });
}
