// The prompt form: a textarea and a small "advanced" section. It turns the fields into the
// body of POST /api/conversations/{id}/images, sending only what the person set.

import { setText, show } from "./dom.js";

/** @typedef {import("./api.js").ImageRequest} ImageRequest */

/**
 * A field of the form, by name.
 * @template {HTMLElement} T
 * @param {HTMLFormElement} form
 * @param {string} name
 * @param {new () => T} type
 * @returns {T}
 */
function field(form, name, type) {
  const el = form.elements.namedItem(name);
  if (!(el instanceof type)) throw new Error(`the prompt form has no ${name} field`);
  return el;
}

export class PromptForm {
  /**
   * @param {HTMLFormElement} form
   * @param {{ onSubmit: (body: ImageRequest) => Promise<unknown> }} hooks a rejection's message
   *   is shown under the form
   */
  constructor(form, { onSubmit }) {
    this.form = form;
    this.onSubmit = onSubmit;
    this.prompt = field(form, "prompt", HTMLTextAreaElement);
    this.negative = field(form, "negative_prompt", HTMLInputElement);
    this.size = field(form, "size", HTMLSelectElement);
    this.steps = field(form, "steps", HTMLInputElement);
    this.seed = field(form, "seed", HTMLInputElement);
    const button = form.querySelector("button[type=submit]");
    const errorEl = form.querySelector(".form-error");
    if (!(button instanceof HTMLButtonElement) || !(errorEl instanceof HTMLElement)) {
      throw new Error("the prompt form has no submit button or error line");
    }
    this.button = button;
    this.errorEl = errorEl;
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.submit();
    });
    this.prompt.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
        event.preventDefault();
        this.submit();
      }
    });
    this.prompt.addEventListener("input", () => this.showError(""));
  }

  /** @returns {ImageRequest} */
  body() {
    /** @type {ImageRequest} */
    const body = { prompt: this.prompt.value.trim() };
    const negative = this.negative.value.trim();
    if (negative) body.negative_prompt = negative;
    const [width, height] = this.size.value.split("x").map(Number);
    if (width && height) Object.assign(body, { width, height });
    const steps = this.steps.value.trim();
    if (steps) body.steps = Number(steps);
    const seed = this.seed.value.trim();
    if (seed) body.seed = Number(seed);
    return body;
  }

  async submit() {
    const body = this.body();
    if (!body.prompt) {
      this.showError("Describe the image you want first.");
      this.prompt.focus();
      return;
    }
    this.button.disabled = true;
    this.form.setAttribute("aria-busy", "true");
    try {
      await this.onSubmit(body);
      this.prompt.value = "";
      this.showError("");
      this.prompt.focus();
    } catch (err) {
      this.showError(err instanceof Error && err.message
        ? err.message : "The request could not be sent.");
    } finally {
      this.button.disabled = false;
      this.form.removeAttribute("aria-busy");
    }
  }

  /** @param {string} message the empty string hides it */
  showError(message) {
    setText(this.errorEl, message);
    show(this.errorEl, Boolean(message));
  }
}
