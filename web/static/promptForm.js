// The prompt form: a textarea and a small "advanced" section. It turns the fields into the
// body of POST /api/conversations/{id}/images, sending only what the person set.

import { setText, show } from "./dom.js";

export class PromptForm {
  // onSubmit(body) -> Promise; a rejection's message is shown under the form.
  constructor(form, { onSubmit }) {
    this.form = form;
    this.onSubmit = onSubmit;
    this.prompt = form.elements.namedItem("prompt");
    this.button = form.querySelector("button[type=submit]");
    this.errorEl = form.querySelector(".form-error");
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

  body() {
    const f = this.form.elements;
    const body = { prompt: this.prompt.value.trim() };
    const negative = f.namedItem("negative_prompt").value.trim();
    if (negative) body.negative_prompt = negative;
    const [width, height] = f.namedItem("size").value.split("x").map(Number);
    if (width && height) Object.assign(body, { width, height });
    const steps = f.namedItem("steps").value.trim();
    if (steps) body.steps = Number(steps);
    const seed = f.namedItem("seed").value.trim();
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
      this.showError(err && err.message ? err.message : "The request could not be sent.");
    } finally {
      this.button.disabled = false;
      this.form.removeAttribute("aria-busy");
    }
  }

  showError(message) {
    setText(this.errorEl, message);
    show(this.errorEl, Boolean(message));
  }

  setEnabled(enabled) {
    this.button.disabled = !enabled;
    this.prompt.disabled = !enabled;
  }
}
