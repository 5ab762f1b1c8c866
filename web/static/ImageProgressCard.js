// ImageProgressCard: one image job as a card. Built once, then update(job) changes only what
// changed, so a focused button keeps its focus while positions and progress tick.

import { h, setText, show } from "./dom.js";
import { durationText, etaText, ordinal, positionText, shortPrompt } from "./format.js";

/** @typedef {import("./imageJobsStore.js").StoredJob} StoredJob */
/** @typedef {import("./jobStatus.js").JobStatus} JobStatus */

/**
 * What the card's buttons ask for, and what it asks the page. onImageError: the image did not
 * load, a fresh image_url is wanted; workersFor: how many live workers serve a model (null:
 * not known); onView: the full-size view of the image (opener gets the focus back);
 * onUseSettings: the prompt form takes the job's request; onCopySeed: the seed to the clipboard.
 * @typedef {{ onCancel: (job: StoredJob) => Promise<void>,
 *   onRetry: (job: StoredJob) => Promise<void>,
 *   onMove: (job: StoredJob) => Promise<void>,
 *   onImageError: (job: StoredJob) => void,
 *   onView: (job: StoredJob, image: HTMLImageElement, opener: HTMLElement) => void,
 *   onUseSettings: (job: StoredJob) => void,
 *   onCopySeed: (job: StoredJob) => Promise<boolean>,
 *   workersFor: (model: string) => number | null }} CardActions
 */

/**
 * The badge's word for each state of jobStatus.js (the checker refuses a state without one).
 * @type {Record<JobStatus, string>}
 */
const BADGES = {
  pending: "Waiting",
  queued: "Queued",
  processing: "Generating",
  complete: "Done",
  error: "Failed",
  canceled: "Canceled",
};

let nextId = 0;

/**
 * Whole seconds until a queued job may run again (a retry waiting out its backoff: run_after is
 * ahead); 0 when it may run now.
 * @param {StoredJob} job
 */
function retryInSeconds(job) {
  if (job.status !== "queued" || !job.run_after) return 0;
  const ms = Date.parse(job.run_after) - Date.now();
  return Number.isFinite(ms) && ms > 0 ? Math.ceil(ms / 1000) : 0;
}

/**
 * What the status line says after its badge (read out politely by screen readers as it
 * changes, so nothing here ticks every second); empty where the badge says it all.
 * @param {StoredJob} job
 */
function statusDetail(job) {
  switch (job.status) {
    case "queued":
      if (retryInSeconds(job) > 0) return "waiting to retry";
      return job.attempts > 0 && job.error
        ? `retrying · ${positionText(job.queue_position)}`
        : positionText(job.queue_position);
    case "processing":
      return job.cancel_requested ? "canceling…" : "";
    default:
      return "";
  }
}

/**
 * A queued job of a model no live worker serves: it waits for one, however near the front.
 * @param {StoredJob} job
 * @param {CardActions} actions
 */
function waitingForGpu(job, actions) {
  return job.status === "queued" && Boolean(job.model) && actions.workersFor(job.model || "") === 0;
}

/** @param {StoredJob} job */
function paramsText(job) {
  const p = job.params;
  const parts = [];
  if (p.seed !== undefined && p.seed !== null) parts.push(`seed ${p.seed}`);
  if (p.width && p.height) parts.push(`${p.width}×${p.height}`);
  if (p.steps) parts.push(`${p.steps} steps`);
  if (job.status === "complete" && job.started_at && job.finished_at) {
    const took = durationText(job.started_at, job.finished_at);
    if (took) parts.push(`took ${took}`);
  }
  if (job.status === "error" && job.attempts > 1) parts.push(`after ${job.attempts} attempts`);
  return parts.join(" · ");
}

export class ImageProgressCard {
  /** @param {StoredJob} job @param {CardActions} actions */
  constructor(job, actions) {
    this.actions = actions;
    this.job = job;
    this._imageShown = false;
    this._imageLoading = false;
    this._imageFailedAt = 0;
    this._imageFailedUrl = null;
    const id = `card-${nextId++}`;

    this.ordinalEl = h("span", { class: "ordinal" });
    this.ordinalCaption = h("span", { class: "ordinal-caption", text: "in line" });
    this.placeholder = h(
      "div",
      { class: "placeholder", "aria-hidden": "true" },
      this.ordinalEl,
      this.ordinalCaption,
    );
    this.img = h("img", { class: "card-image", alt: "", decoding: "async" });
    // The image opens its full-size view: a button, so the keyboard reaches it too.
    this.imageButton = h("button", {
      type: "button", class: "card-image-button",
      onclick: () => this.actions.onView(this.job, this.img, this.imageButton),
    }, this.img);
    this.imageButton.hidden = true;
    // While the job runs: the latest preview the worker sent (issue 16), drawn as it comes;
    // in the card only then, so a finished card holds one image.
    this.previewImg = h("img", { class: "card-preview", alt: "", "aria-hidden": "true" });
    /** @type {string | null} */
    this._preview = null;
    this._which = ""; // which image, for the buttons' names: " 'a red fox'"
    this._seedCopied = false;
    /** @type {ReturnType<typeof setTimeout> | undefined} */
    this._seedCopiedTimer = undefined;
    this.media = h("div", { class: "card-media" }, this.placeholder, this.imageButton);

    this.badge = h("span", { class: "badge" });
    this.statusEl = h("span", { class: "status-text" });
    this.statusLine = h(
      "p",
      // Not a live region: the page's one announcer (jobAnnouncer.js) speaks of changes.
      { class: "card-status", id: `${id}-status` },
      this.badge,
      " ",
      this.statusEl,
    );
    this.etaEl = h("p", { class: "card-eta", id: `${id}-eta` });
    this.progressBar = h("progress", {
      class: "card-progress", max: "1", "aria-labelledby": `${id}-step`,
    });
    this.stepEl = h("span", { class: "card-step", id: `${id}-step` });
    this.progressRow = h("div", { class: "card-progress-row" }, this.progressBar, this.stepEl);
    this.errorEl = h("p", { class: "card-error" });
    this.promptEl = h("p", { class: "card-prompt", id: `${id}-prompt` });
    // A long prompt is cut to a few lines; this shows the rest (only when something is cut).
    this.promptToggle = h("button", {
      type: "button", class: "prompt-toggle", "aria-expanded": "false",
      "aria-controls": `${id}-prompt`, text: "Show more", onclick: () => this._togglePrompt(),
    });
    this.promptToggle.hidden = true;
    this._resizes = new ResizeObserver(() => this._measurePrompt());
    this._resizes.observe(this.promptEl);
    this.negativeEl = h("p", { class: "card-negative" });
    this.modelEl = h("span", { class: "card-model" });
    this.paramsEl = h("span", { class: "card-params" });
    this.metaEl = h("p", { class: "card-meta" }, this.modelEl, this.paramsEl);

    this.cancelButton = h("button", {
      type: "button", class: "button button-quiet cancel",
      text: "Cancel", onclick: () => this._cancel(),
    });
    // Its name stays "Move to front"; the prompt describes which job.
    this.moveButton = h("button", {
      type: "button", class: "button button-quiet move", "aria-describedby": `${id}-prompt`,
      title: "Run this one before your other waiting jobs of this model",
      text: "Move to front", onclick: () => this._move(),
    });
    this.retryButton = h("button", {
      type: "button", class: "button button-secondary retry", "aria-describedby": `${id}-prompt`,
      text: "Retry", onclick: () => this._retry(),
    });
    this.downloadLink = h("a", { class: "button button-quiet download", text: "Download" });
    this.useButton = h("button", {
      type: "button", class: "button button-quiet use-settings", text: "Use these settings",
      onclick: () => this.actions.onUseSettings(this.job),
    });
    this.copySeedButton = h("button", {
      type: "button", class: "button button-quiet copy-seed", text: "Copy seed",
      onclick: () => this._copySeed(),
    });
    this.actionsEl = h(
      "div", { class: "card-actions" },
      this.moveButton, this.cancelButton, this.retryButton, this.downloadLink, this.useButton,
      this.copySeedButton,
    );

    this.element = h(
      "article",
      { class: "card", tabindex: "-1", "aria-labelledby": `${id}-prompt`,
        "aria-describedby": `${id}-status ${id}-eta` },
      this.media,
      h(
        "div",
        { class: "card-body" },
        this.statusLine,
        this.etaEl,
        this.progressRow,
        this.errorEl,
        this.promptEl,
        this.promptToggle,
        this.negativeEl,
        this.metaEl,
        this.actionsEl,
      ),
    );
    this.update(job);
  }

  /** @param {StoredJob} job the job now */
  update(job) {
    this.job = job;
    const status = job.status;
    const el = this.element;
    el.dataset.jobId = job.job_id;
    el.dataset.status = status;
    el.dataset.position = String(job.queue_position || 0);
    el.dataset.model = job.model || "";
    el.classList.toggle("is-partial", Boolean(job._partial));

    setText(this.badge, BADGES[status]);

    this.refreshEta();

    const progress = status === "processing" ? job.progress : null;
    show(this.progressRow, status === "processing");
    if (status === "processing") {
      if (progress && progress.steps > 0) {
        this.progressBar.max = progress.steps;
        this.progressBar.value = Math.min(progress.step, progress.steps);
        setText(this.stepEl, `step ${progress.step} of ${progress.steps}`);
      } else {
        this.progressBar.removeAttribute("value"); // indeterminate until the first step
        setText(this.stepEl, "starting…");
      }
    }

    const failed = status === "error" || (status === "queued" && job.attempts > 0 && job.error);
    setText(this.errorEl, failed ? job.error || "The job failed." : "");
    show(this.errorEl, Boolean(failed));
    this.errorEl.classList.toggle("is-soft", status !== "error");

    const promptText = job.prompt || (job._partial ? "Loading…" : "");
    const promptChanged = this.promptEl.textContent !== promptText;
    setText(this.promptEl, promptText);
    // Short names that say which image, not the whole prompt read out again.
    const which = job.prompt ? ` '${shortPrompt(job.prompt)}'` : "";
    this.cancelButton.setAttribute("aria-label", `Cancel${which}`);
    this.downloadLink.setAttribute("aria-label", `Download${which}`);
    this._which = which;
    this.imageButton.setAttribute("aria-label", `View${which} full size`);
    this.useButton.setAttribute("aria-label", `Use these settings${which}`);
    this._labelCopySeed(this._seedCopied);
    if (promptChanged) this._measurePrompt();
    const negative = job.params && job.params.negative_prompt;
    setText(this.negativeEl, negative ? `Without: ${negative}` : "");
    show(this.negativeEl, Boolean(negative));
    setText(this.modelEl, job.model ? `model ${job.model}` : "");
    setText(this.paramsEl, paramsText(job));

    const width = (job.params && job.params.width) || 1;
    const height = (job.params && job.params.height) || 1;
    // A job that ended without an image needs no image-sized placeholder.
    const compact = status === "error" || status === "canceled";
    this.media.classList.toggle("is-compact", compact);
    this.media.style.aspectRatio = compact ? "" : `${width} / ${height}`;
    this.img.alt = job.prompt ? `Generated image: ${job.prompt}` : "Generated image";

    show(this.cancelButton,
      status === "queued" || (status === "processing" && !job.cancel_requested));
    // 1st in line is ahead of every job of its model, the owner's included.
    show(this.moveButton, status === "queued" && job.queue_position !== 1);
    show(this.retryButton, status === "error" || status === "canceled");
    this.retryButton.disabled = Boolean(job._partial);
    const seed = job.params && job.params.seed;
    show(this.useButton, status === "complete" && !job._partial);
    show(this.copySeedButton, status === "complete" && seed !== undefined && seed !== null);

    // A failed link is tried again when a fresh one comes, or after 5 s.
    const retryDue = job.image_url !== this._imageFailedUrl ||
      Date.now() - this._imageFailedAt > 5000;
    if (status === "complete" && job.image_url && !this._imageShown && !this._imageLoading &&
        retryDue) {
      this._loadImage(job, job.image_url);
    }
    const hasImage = status === "complete" && this._imageShown;
    // The newest link, so a download long after the image appeared is not an expired one.
    if (hasImage && job.image_url) this.downloadLink.href = job.image_url;
    show(this.img, hasImage);
    show(this.imageButton, hasImage);
    if (status !== "processing") this._preview = null; // a new attempt starts without one
    const previewing = status === "processing" && this._preview !== null;
    if (previewing && !this.previewImg.isConnected) {
      this.media.insertBefore(this.previewImg, this.imageButton);
    } else if (!previewing && this.previewImg.isConnected) {
      this.previewImg.remove();
      this.previewImg.removeAttribute("src");
    }
    show(this.placeholder, !hasImage && !previewing);
    show(this.downloadLink, hasImage);
  }

  /** The card is gone for good: stop watching its size. */
  dispose() {
    this._resizes.disconnect();
    clearTimeout(this._seedCopiedTimer);
  }

  /**
   * A preview frame of this job (a data: URL): drawn while the job runs, dropped when it ends.
   * @param {string} image
   */
  showPreview(image) {
    if (this.job.status !== "processing") return;
    this._preview = image;
    this.previewImg.src = image;
    this.update(this.job);
  }

  // Whether the clamped prompt hides something: only then is there a "Show more". Measured as
  // laid out (a prompt of few long words wraps differently on a phone).
  _measurePrompt() {
    const el = this.promptEl;
    const expanded = el.classList.contains("is-expanded");
    show(this.promptToggle, expanded || el.scrollHeight > el.clientHeight + 1);
  }

  _togglePrompt() {
    const expanded = this.promptEl.classList.toggle("is-expanded");
    this.promptToggle.setAttribute("aria-expanded", String(expanded));
    setText(this.promptToggle, expanded ? "Show less" : "Show more");
    this._measurePrompt();
  }

  async _copySeed() {
    if (!(await this.actions.onCopySeed(this.job))) return;
    this._labelCopySeed(true);
    clearTimeout(this._seedCopiedTimer);
    this._seedCopiedTimer = setTimeout(() => this._labelCopySeed(false), 2000);
  }

  /** @param {boolean} copied the button says so for a moment */
  _labelCopySeed(copied) {
    this._seedCopied = copied;
    const words = copied ? "Seed copied" : "Copy seed";
    setText(this.copySeedButton, words);
    this.copySeedButton.setAttribute("aria-label", `${words}${this._which}`);
  }

  // What changes with time alone, refreshed every second by the page: the server's ETA less
  // the time since it was computed (so "starts in about 20 s" does not stand still), and a
  // retry's countdown to its run_after (a job waiting out its backoff is not next in line).
  // When no live worker serves the job's model there is no ETA: the card says what it waits for.
  refreshEta() {
    const job = this.job;
    const retryIn = retryInSeconds(job);
    setText(this.statusEl, statusDetail(job));
    const inLine = job.status === "queued" && job.queue_position > 0 && retryIn === 0;
    setText(this.ordinalEl, inLine ? ordinal(job.queue_position) : "");
    show(this.ordinalCaption, inLine);
    let eta = "";
    const noGpu = retryIn === 0 && waitingForGpu(job, this.actions);
    if (retryIn > 0) eta = `retrying in ${retryIn} s`;
    else if (noGpu) eta = `Waiting for a GPU that runs ${job.model}`;
    else if (job.status === "queued" && job.eta_s !== null && job.eta_s !== undefined) {
      const aged = job._etaAt ? (Date.now() - job._etaAt) / 1000 : 0;
      eta = etaText(Math.max(0, job.eta_s - aged));
    }
    setText(this.etaEl, eta);
    show(this.etaEl, Boolean(eta));
    this.etaEl.classList.toggle("is-waiting-for-gpu", noGpu);
  }

  // A plain <img>: image_url is a signed link that needs no header (contract: Images). Once
  // the image shows, a fresher link to it (a new signature) is not loaded again.
  /** @param {StoredJob} job @param {string} url its image_url */
  async _loadImage(job, url) {
    this._imageLoading = true;
    this.element.classList.add("is-loading-image");
    try {
      this.img.src = url;
      await this.img.decode();
      this._imageShown = true;
      const seed = job.params && job.params.seed;
      this.downloadLink.download = `gpuqueue-${seed ?? job.job_id}.png`;
    } catch {
      this.img.removeAttribute("src");
      this._imageFailedAt = Date.now();
      this._imageFailedUrl = url;
      setText(this.paramsEl, `${paramsText(job)} · the image could not be loaded`);
      this.actions.onImageError(job); // the link may have expired: read the job again
    } finally {
      this._imageLoading = false;
      this.element.classList.remove("is-loading-image");
      if (this.job) this.update(this.job);
    }
  }

  async _cancel() {
    this.cancelButton.disabled = true;
    try {
      await this.actions.onCancel(this.job);
    } finally {
      this.cancelButton.disabled = false;
      if (this.cancelButton.hidden) this.element.focus({ preventScroll: true });
    }
  }

  async _move() {
    this.moveButton.disabled = true;
    try {
      await this.actions.onMove(this.job);
    } finally {
      this.moveButton.disabled = false;
      if (this.moveButton.hidden) this.element.focus({ preventScroll: true });
    }
  }

  async _retry() {
    this.retryButton.disabled = true;
    try {
      await this.actions.onRetry(this.job);
    } finally {
      this.retryButton.disabled = Boolean(this.job && this.job._partial);
    }
  }
}
