// A tiny element builder. Text always goes in as text nodes, never as HTML, and no inline
// style attributes are written (the page's Content-Security-Policy forbids them).

/**
 * An element with attributes (class, dataset, text, on<event> handlers, the rest as attributes;
 * null, undefined and false leave one out) and children (nodes or text).
 * @template {keyof HTMLElementTagNameMap} K
 * @param {K} tag
 * @param {Record<string, unknown>} [attrs]
 * @param {...(Node | string | number | null | undefined | false)} children
 * @returns {HTMLElementTagNameMap[K]}
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") el.className = String(value);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2).toLowerCase(), /** @type {EventListener} */ (value));
    } else if (key === "text") el.textContent = String(value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/**
 * Set an element's text only when it changed (a rewrite would be read out again).
 * @param {HTMLElement} el
 * @param {string | null | undefined} text
 */
export function setText(el, text) {
  const value = text ?? "";
  if (el.textContent !== value) el.textContent = value;
}

/** @param {HTMLElement} el @param {boolean} visible */
export function show(el, visible) {
  if (el.hidden === !visible) return;
  el.hidden = !visible;
}
