// The prompt form: a textarea, a model picker (shown when there is more than one model) and a
// small "advanced" section. It turns the fields into the body of
// POST /api/conversations/{id}/images, sending only what the person set.

import { h, setText, show } from "./dom.js";

/** @typedef {import("./api.js").ImageRequest} ImageRequest */
/** @typedef {import("./api.js").Model} Model */

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
    this.model = field(form, "model", HTMLSelectElement);
    const picker = this.model.closest(".model-picker");
    if (!(picker instanceof HTMLElement)) throw new Error("the model field has no .model-picker");
    this.picker = picker;
    this._modelChosen = false; // the person picked one: keep it while it is offered
    this.model.addEventListener("change", () => {
      this._modelChosen = true;
    });
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

  /**
   * Offer these models, the default one picked unless the person picked another that is still
   * offered; with one model (or none known yet) the picker is hidden and requests name none.
   * @param {Model[]} models
   */
  setModels(models) {
    const names = models.map((m) => m.name);
    const current = this.model.value;
    const options = [...this.model.options].map((o) => o.value);
    if (options.length !== names.length || options.some((name, i) => name !== names[i])) {
      this.model.replaceChildren(...names.map((name) => h("option", { value: name, text: name })));
    }
    const fallback = models.find((m) => m.default) || models[0];
    const keep = this._modelChosen && names.includes(current);
    if (!keep) this._modelChosen = false;
    if (fallback) this.model.value = keep ? current : fallback.name;
    show(this.picker, models.length > 1);
  }

  /** @returns {ImageRequest} */
  body() {
    /** @type {ImageRequest} */
    const body = { prompt: this.prompt.value.trim() };
    if (!this.picker.hidden && this.model.value) body.model = this.model.value;
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
