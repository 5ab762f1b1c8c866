// The prompt form: a textarea with a character counter, a model picker (shown when there is
// more than one model) and an "advanced" section. It turns the fields into the body of
// POST /api/conversations/{id}/images, sending only what the person set.
//
// Nothing set under Advanced applies silently: the closed section's summary lists what is
// set, and the seed applies to one Generate only (each next one gets a fresh random seed from
// the server) unless "Keep seed" is on. An error about one field is tied to that field
// (aria-invalid, described by the error line, focused); the checks here are the server's
// (web/validation.py), counted the same way, and an error the server finds names its field.

import { ApiError } from "./api.js";
import { h, setText, show } from "./dom.js";

/** @typedef {import("./api.js").ImageRequest} ImageRequest */
/** @typedef {import("./api.js").Job} Job */
/** @typedef {import("./api.js").Model} Model */

// The server's limits (queueing/limits.py), in the server's unit: Unicode code points.
const PROMPT_CHARS = 2000;
const STEPS = [1, 150];
const GUIDANCE = [0, 30];
const SEED_MAX = 2 ** 32 - 1;

/**
 * The fields an error can be about, by the name the server's messages begin with
 * (validation.py: "steps must be between 1 and 150 (got 0)").
 * @typedef {"prompt" | "negative_prompt" | "size" | "steps" | "guidance_scale" | "seed"
 *   | "model"} FieldName
 * @type {Record<string, FieldName>}
 */
const SERVER_FIELDS = {
  prompt: "prompt", negative_prompt: "negative_prompt", width: "size", height: "size",
  steps: "steps", guidance_scale: "guidance_scale", seed: "seed", model: "model",
};

/**
 * Characters as the server counts them (Python's len: code points, so an emoji is one).
 * @param {string} text
 */
export function charCount(text) {
  let count = 0;
  for (const _ of text) count++;
  return count;
}

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

/**
 * @template {HTMLElement} T
 * @param {HTMLElement} root
 * @param {string} selector
 * @param {new () => T} type
 * @returns {T}
 */
function part(root, selector, type) {
  const el = root.querySelector(selector);
  if (!(el instanceof type)) throw new Error(`the prompt form has no ${selector}`);
  return el;
}

/**
 * The field an API error is about, if it names one (422 messages begin with its name).
 * @param {unknown} err
 * @returns {FieldName | null}
 */
function fieldOfError(err) {
  if (!(err instanceof ApiError) || err.status !== 422) return null;
  if (err.code === "unknown_model") return "model";
  const first = /^([a-z_]+) /.exec(err.message);
  return (first && SERVER_FIELDS[first[1]]) || null;
}

/** @param {number} n */
function thousands(n) {
  return n.toLocaleString("en-US");
}

export class PromptForm {
  /**
   * @param {HTMLFormElement} form
   * @param {{ onSubmit: (body: ImageRequest) => Promise<Job> }} hooks a rejection's message
   *   is shown under the form (next to its field, when it names one)
   */
  constructor(form, { onSubmit }) {
    this.form = form;
    this.onSubmit = onSubmit;
    this.prompt = field(form, "prompt", HTMLTextAreaElement);
    this.negative = field(form, "negative_prompt", HTMLInputElement);
    this.size = field(form, "size", HTMLSelectElement);
    this.steps = field(form, "steps", HTMLInputElement);
    this.guidance = field(form, "guidance_scale", HTMLInputElement);
    this.seed = field(form, "seed", HTMLInputElement);
    this.keepSeed = field(form, "keep_seed", HTMLInputElement);
    this.model = field(form, "model", HTMLSelectElement);
    /** @type {Record<FieldName, HTMLInputElement | HTMLTextAreaElement | HTMLSelectElement>} */
    this.fields = {
      prompt: this.prompt, negative_prompt: this.negative, size: this.size, steps: this.steps,
      guidance_scale: this.guidance, seed: this.seed, model: this.model,
    };
    this.picker = part(form, ".model-picker", HTMLElement);
    this.advanced = part(form, "details.advanced", HTMLDetailsElement);
    this.summary = part(form, ".advanced-summary", HTMLElement);
    this.counter = part(form, ".prompt-count", HTMLElement);
    this.button = part(form, "button[type=submit]", HTMLButtonElement);
    this.errorEl = part(form, ".form-error", HTMLElement);
    /** @type {FieldName | null} the field the error line is about */
    this._errorField = null;
    this._modelChosen = false; // the person picked one: keep it while it is offered
    this.model.addEventListener("change", () => {
      this._modelChosen = true;
    });
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
    // Typing fixes what the error was about: it goes; the counter and summary follow.
    form.addEventListener("input", () => {
      this.showError("");
      this._refresh();
    });
    form.addEventListener("change", () => this._refresh());
    this._refresh();
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
    for (const [key, input] of /** @type {const} */ (
      [["steps", this.steps], ["guidance_scale", this.guidance], ["seed", this.seed]])) {
      const value = input.value.trim();
      if (value) body[key] = Number(value);
    }
    return body;
  }

  /**
   * What the server would refuse, found before sending: the field and why.
   * @returns {{ field: FieldName, message: string } | null}
   */
  problem() {
    const prompt = this.prompt.value.trim();
    if (!prompt) return { field: "prompt", message: "Describe the image you want first." };
    const chars = charCount(prompt);
    if (chars > PROMPT_CHARS) {
      return { field: "prompt", message: `The prompt is ${thousands(chars - PROMPT_CHARS)} ` +
        `character${chars - PROMPT_CHARS === 1 ? "" : "s"} over the limit of ` +
        `${thousands(PROMPT_CHARS)}.` };
    }
    if (charCount(this.negative.value.trim()) > PROMPT_CHARS) {
      return { field: "negative_prompt",
        message: `The negative prompt may be at most ${thousands(PROMPT_CHARS)} characters.` };
    }
    /** @type {[FieldName, HTMLInputElement, string, number, number, boolean][]} */
    const numbers = [
      ["steps", this.steps, "Steps", STEPS[0], STEPS[1], true],
      ["guidance_scale", this.guidance, "Guidance", GUIDANCE[0], GUIDANCE[1], false],
      ["seed", this.seed, "The seed", 0, SEED_MAX, true],
    ];
    for (const [name, input, label, low, high, whole] of numbers) {
      const text = input.value.trim();
      if (!text && !input.validity.badInput) continue;
      const value = Number(text);
      const kind = whole ? "a whole number" : "a number";
      if (input.validity.badInput || !Number.isFinite(value) || (whole && !Number.isInteger(value)) ||
          value < low || value > high) {
        return { field: name,
          message: `${label} must be ${kind} from ${thousands(low)} to ${thousands(high)}.` };
      }
    }
    return null;
  }

  async submit() {
    const problem = this.problem();
    if (problem) {
      this.showError(problem.message, problem.field);
      return;
    }
    const body = this.body();
    this.button.disabled = true;
    this.form.setAttribute("aria-busy", "true");
    try {
      const job = await this.onSubmit(body);
      this.prompt.value = "";
      // The next Generate gets a fresh seed, or with "Keep seed" this one's (the server's
      // random pick included).
      const seed = job.params && job.params.seed;
      this.seed.value = this.keepSeed.checked && seed !== undefined && seed !== null
        ? String(seed) : "";
      this.showError("");
      this._refresh();
      this.prompt.focus();
    } catch (err) {
      const message = err instanceof Error && err.message
        ? err.message : "The request could not be sent.";
      this.showError(message, fieldOfError(err));
    } finally {
      this.button.disabled = false;
      this.form.removeAttribute("aria-busy");
    }
  }

  /**
   * Show an error under the form, tied to its field when it has one (which takes the focus).
   * @param {string} message the empty string hides it
   * @param {FieldName | null} [about]
   */
  showError(message, about = null) {
    if (this._errorField) {
      const previous = this.fields[this._errorField];
      previous.removeAttribute("aria-invalid");
      const rest = (previous.getAttribute("aria-describedby") || "").split(" ")
        .filter((id) => id && id !== this.errorEl.id);
      if (rest.length) previous.setAttribute("aria-describedby", rest.join(" "));
      else previous.removeAttribute("aria-describedby");
    }
    this._errorField = message ? about : null;
    setText(this.errorEl, message);
    show(this.errorEl, Boolean(message));
    if (!message || !about) return;
    const input = this.fields[about];
    input.setAttribute("aria-invalid", "true");
    const described = (input.getAttribute("aria-describedby") || "").split(" ").filter(Boolean);
    input.setAttribute("aria-describedby", [...described, this.errorEl.id].join(" "));
    if (this.advanced.contains(input)) this.advanced.open = true;
    if (about === "model") show(this.picker, true);
    input.focus();
  }

  /** An error that is not about a field (the server could not be reached) is stale now. */
  clearStaleError() {
    if (!this._errorField) this.showError("");
  }

  /**
   * Fill the form with a job's request ("Use these settings"): the same prompt, model, size,
   * steps, guidance, negative prompt and seed make the same image again.
   * @param {Job} job
   */
  useSettings(job) {
    this.showError("");
    const p = job.params || {};
    this.prompt.value = job.prompt || "";
    this.negative.value = p.negative_prompt || "";
    if (p.width && p.height) this._chooseSize(p.width, p.height);
    this.steps.value = p.steps ? String(p.steps) : "";
    this.guidance.value = p.guidance_scale !== undefined ? String(p.guidance_scale) : "";
    this.seed.value = p.seed !== undefined && p.seed !== null ? String(p.seed) : "";
    if (job.model && [...this.model.options].some((o) => o.value === job.model)) {
      this.model.value = job.model;
      this._modelChosen = true;
    }
    this.advanced.open = true;
    this._refresh();
    this.form.scrollIntoView({ block: "nearest", behavior: "smooth" });
    this.prompt.focus({ preventScroll: true });
  }

  /** @param {number} width @param {number} height */
  _chooseSize(width, height) {
    const value = `${width}x${height}`;
    if (![...this.size.options].some((o) => o.value === value)) {
      this.size.append(h("option", { value, text: `${width} × ${height}` }));
    }
    this.size.value = value;
  }

  /** The counter and the closed Advanced section's summary of what is set. */
  _refresh() {
    const chars = charCount(this.prompt.value.trim());
    const over = chars - PROMPT_CHARS;
    setText(this.counter, over > 0
      ? `${thousands(chars)} / ${thousands(PROMPT_CHARS)} · ${thousands(over)} over`
      : `${thousands(chars)} / ${thousands(PROMPT_CHARS)}`);
    this.counter.classList.toggle("is-over", over > 0);
    const set = [];
    const seed = this.seed.value.trim();
    if (seed) set.push(this.keepSeed.checked ? `seed ${seed}, kept` : `seed ${seed}, once`);
    else if (this.keepSeed.checked) set.push("keep seed");
    if (this.size.selectedIndex > 0) set.push(this.size.value.replace("x", "×"));
    if (this.steps.value.trim()) set.push(`${this.steps.value.trim()} steps`);
    if (this.guidance.value.trim()) set.push(`guidance ${this.guidance.value.trim()}`);
    if (this.negative.value.trim()) set.push("negative prompt");
    setText(this.summary, set.join(" · "));
  }
}
