// Card reconciliation: one ImageProgressCard per job of the store, newest first, built once
// and then updated in place, so a focused button keeps its focus while positions tick.

import { show } from "./dom.js";
import { ImageProgressCard } from "./ImageProgressCard.js";

/** @typedef {import("./imageJobsStore.js").ImageJobsStore} ImageJobsStore */
/** @typedef {import("./jobActions.js").JobActions} JobActions */
/** @typedef {import("./models.js").Models} Models */
/**
 * What a finished card offers that the page does (the full-size view, the prompt form, the
 * clipboard).
 * @typedef {Pick<import("./ImageProgressCard.js").CardActions,
 *   "onView" | "onUseSettings" | "onCopySeed">} ResultActions
 */

export class CardList {
  /**
   * @param {HTMLElement} container
   * @param {HTMLElement} empty shown when the open conversation has no job
   * @param {ImageJobsStore} store
   * @param {JobActions} actions what the cards' buttons do
   * @param {Models} models which models have a live worker (a card says when its has none)
   * @param {ResultActions} results
   */
  constructor(container, empty, store, actions, models, results) {
    this.container = container;
    this.empty = empty;
    this.store = store;
    this.jobActions = actions;
    // A retry's new card takes the focus.
    this.actions = {
      onCancel: actions.onCancel.bind(actions),
      onImageError: actions.onImageError.bind(actions),
      onMove: actions.onMove.bind(actions),
      ...results,
      /** @param {string} model */
      workersFor: (model) => models.workers(model),
      /** @param {import("./api.js").Job} job */
      onRetry: async (job) => {
        const created = await actions.onRetry(job);
        if (created) this.focus(created);
      },
    };
    /** @type {Map<string, ImageProgressCard>} job_id -> its card */
    this.cards = new Map();
    this._renderQueued = false;
    // Several changes in one task render once.
    store.subscribe(() => {
      if (this._renderQueued) return;
      this._renderQueued = true;
      queueMicrotask(() => {
        this._renderQueued = false;
        this.render();
      });
    });
    // A model's workers came or went: what its queued cards wait for changed.
    models.subscribe(() => {
      for (const card of this.cards.values()) if (card.job.status === "queued") card.refreshEta();
    });
    // What changes with time alone: ETAs counting down, a retry's countdown.
    setInterval(() => {
      for (const card of this.cards.values()) if (card.job.status === "queued") card.refreshEta();
    }, 1000);
  }

  render() {
    const jobs = this.store.jobs();
    const wanted = new Set(jobs.map((j) => j.job_id));
    for (const [id, card] of this.cards) {
      if (!wanted.has(id)) {
        card.element.remove();
        card.dispose();
        this.cards.delete(id);
      }
    }
    const ordered = [];
    for (const job of jobs) {
      let card = this.cards.get(job.job_id);
      if (card) card.update(job);
      else {
        card = new ImageProgressCard(job, this.actions);
        this.cards.set(job.job_id, card);
      }
      ordered.push(card.element);
    }
    ordered.reverse(); // newest first, next to the prompt box
    // Move nodes only when the order changed: moving a node would drop the focus inside it.
    const children = this.container.children;
    if (children.length !== ordered.length || ordered.some((el, i) => children[i] !== el)) {
      ordered.forEach((el, i) => {
        if (children[i] !== el) this.container.insertBefore(el, children[i] || null);
      });
    }
    show(this.empty, this.store.conversationId !== null && jobs.length === 0);
    // Jobs known only from an event: their details have to be read.
    for (const id of this.store.partialJobIds()) this.jobActions.fetchDetails(id);
  }

  /**
   * A preview frame: drawn on its job's card while the job runs (a frame for a card not built
   * yet is dropped: the next one comes in a moment).
   * @param {{ job_id: string, image: string }} frame
   */
  preview(frame) {
    const card = this.cards.get(String(frame.job_id));
    if (card) card.showPreview(frame.image);
  }

  /**
   * Render now and move the focus to a job's card (a retry's new job).
   * @param {string} jobId
   */
  focus(jobId) {
    this.render();
    const card = this.cards.get(jobId);
    if (card) {
      card.element.focus({ preventScroll: true });
      card.element.scrollIntoView({ block: "nearest", behavior: "smooth" });
    }
  }
}
