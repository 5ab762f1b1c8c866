// imageJobsStore: every image job of one conversation, kept in step with the server.
//
// No DOM here, so the browser tests can import it and feed it messages directly.
//
// Three sources write to it, and it decides which one is fresher:
//   - snapshots (GET /api/conversations/{id}/jobs, GET /api/jobs/{id}, POST answers): the whole
//     job as the database has it now, positions live, but without a seq;
//   - transition events (WebSocket, `seq` rising across the whole system): applied only when
//     newer than what the job already shows, by seq (duplicates and replays) and by the
//     transition's time (a snapshot read after the event already includes it);
//   - `position` and `progress` messages, applied to jobs that are queued / processing.
// Positions are only ever the server's: nothing here computes or shifts one.

const TRANSITIONS = new Set(["queued", "processing", "complete", "error", "canceled"]);
export const FINAL_STATUSES = new Set(["complete", "error", "canceled"]);
const DETAIL_FIELDS = [
  "message_id", "prompt", "params", "priority", "max_attempts", "timeout_s", "created_at",
  "queued_at",
];

// ISO 8601 to microseconds since the epoch (Date.parse keeps only milliseconds, and two
// transitions of one job can fall in the same millisecond).
export function isoToMicros(value) {
  if (typeof value !== "string") return null;
  const m = /^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d(?::?\d\d)?)?$/.exec(
    value.trim().replace(" ", "T"),
  );
  if (!m) {
    const ms = Date.parse(value);
    return Number.isNaN(ms) ? null : ms * 1000;
  }
  let zone = m[3] || "Z";
  if (/^[+-]\d\d$/.test(zone)) zone += ":00";
  const ms = Date.parse(`${m[1]}${zone}`);
  if (Number.isNaN(ms)) return null;
  const fraction = Number(((m[2] || "") + "000000").slice(0, 6));
  return ms * 1000 + fraction;
}

// The time of the latest transition a job snapshot includes.
function snapshotAt(job) {
  let latest = null;
  for (const t of job.transitions || []) {
    const at = isoToMicros(t.at);
    if (at !== null && (latest === null || at > latest)) latest = at;
  }
  if (latest === null) {
    for (const key of ["finished_at", "started_at", "queued_at", "created_at"]) {
      latest = isoToMicros(job[key]);
      if (latest !== null) break;
    }
  }
  return latest;
}

export function createImageJobsStore() {
  return new ImageJobsStore();
}

export class ImageJobsStore {
  constructor() {
    this.conversationId = null;
    this.lastSeq = 0; // the highest transition seq seen: a reconnect asks for what follows
    this._jobs = new Map(); // job_id -> job (the API's shape, plus _seq, _at, _partial, _order)
    this._listeners = new Set();
    this._nextOrder = 0;
  }

  // Forget everything and follow another conversation (null: none).
  reset(conversationId = null) {
    this.conversationId = conversationId;
    this.lastSeq = 0;
    this._jobs.clear();
    this._nextOrder = 0;
    this._emit();
  }

  subscribe(listener) {
    this._listeners.add(listener);
    return () => this._listeners.delete(listener);
  }

  get(jobId) {
    return this._jobs.get(String(jobId)) || null;
  }

  get size() {
    return this._jobs.size;
  }

  // Jobs in submission order (created_at, then the order the store learned of them).
  jobs() {
    return [...this._jobs.values()].sort((a, b) => {
      const ca = isoToMicros(a.created_at);
      const cb = isoToMicros(b.created_at);
      if (ca !== null && cb !== null && ca !== cb) return ca - cb;
      if ((ca === null) !== (cb === null)) return ca === null ? 1 : -1;
      return a._order - b._order;
    });
  }

  // Jobs known only from an event, whose prompt and params still have to be fetched.
  partialJobIds() {
    return [...this._jobs.values()].filter((j) => j._partial).map((j) => j.job_id);
  }

  // The reload snapshot: the conversation's jobs as the database has them now.
  applySnapshot(jobs) {
    let changed = false;
    for (const job of jobs || []) changed = this._merge(job) || changed;
    if (changed) this._emit();
    return changed;
  }

  // One job from the API (the POST answer, GET /api/jobs/{id}, a cancel's answer).
  upsertJob(job) {
    const changed = this._merge(job);
    if (changed) this._emit();
    return changed;
  }

  // One WebSocket message; returns whether the store changed.
  applyMessage(message) {
    if (!message || typeof message !== "object") return false;
    let changed = false;
    if (message.type === "position") changed = this._applyPosition(message);
    else if (message.type === "progress") changed = this._applyProgress(message);
    else if (message.type === "subscribed" && typeof message.seq === "number") {
      // The server has sent everything up to this seq for the subscription.
      if (message.seq > this.lastSeq) this.lastSeq = message.seq;
    }
    else if (TRANSITIONS.has(message.type) && typeof message.seq === "number") {
      changed = this._applyEvent(message);
    }
    if (changed) this._emit();
    return changed;
  }

  _merge(job) {
    if (!job || !job.job_id) return false;
    if (this.conversationId && job.conversation_id && job.conversation_id !== this.conversationId) {
      return false;
    }
    const id = String(job.job_id);
    const existing = this._jobs.get(id);
    const at = snapshotAt(job);
    if (existing && existing._at !== null && at !== null && existing._at > at) {
      // An event newer than this snapshot already moved the job on: keep its state, take only
      // the details that never change.
      let changed = existing._partial;
      for (const key of DETAIL_FIELDS) {
        if (job[key] !== undefined && existing[key] === undefined) {
          existing[key] = job[key];
          changed = true;
        }
        if (existing._partial && job[key] !== undefined) existing[key] = job[key];
      }
      existing._partial = false;
      return changed;
    }
    const next = {
      ...job,
      job_id: id,
      _etaAt: Date.now(), // eta_s counts from when the server computed it, about now
      _seq: existing ? existing._seq : 0,
      _at: at,
      _partial: false,
      _order: existing ? existing._order : this._nextOrder++,
    };
    // A snapshot read a moment before the last progress message must not move the bar back.
    if (
      existing && existing.status === "processing" && next.status === "processing" &&
      existing.started_at === next.started_at && existing.progress && next.progress &&
      existing.progress.step > next.progress.step
    ) {
      next.progress = existing.progress;
    }
    if (existing && sameJob(existing, next)) {
      this._jobs.set(id, next);
      return false;
    }
    this._jobs.set(id, next);
    return true;
  }

  _applyEvent(event) {
    if (event.seq > this.lastSeq) this.lastSeq = event.seq;
    const id = String(event.job_id);
    let job = this._jobs.get(id);
    if (!job) {
      if (!this.conversationId || event.conversation_id !== this.conversationId) return false;
      // A job submitted elsewhere (another tab): show it now, fetch its details later.
      job = {
        job_id: id, message_id: event.message_id, conversation_id: event.conversation_id,
        status: event.status, queue_position: 0, eta_s: null, prompt: "", params: {},
        progress: null, error: null, image_url: null, attempts: 0, transitions: [],
        _seq: 0, _at: null, _partial: true, _order: this._nextOrder++,
      };
      this._jobs.set(id, job);
    }
    if (event.seq <= job._seq) return false; // a duplicate or a replay of something applied
    job._seq = event.seq;
    const at = isoToMicros(event.at);
    if (at !== null && job._at !== null && at <= job._at) return false; // the snapshot has it
    const status = event.status || event.type;
    const next = { ...job, status, _at: at === null ? job._at : at };
    next.queue_position = status === "queued" ? (event.queue_position ?? job.queue_position) : 0;
    if (status !== "queued") next.eta_s = null;
    else if (job.status !== "queued") next.eta_s = null; // unknown until a position message
    if (status === "processing") {
      next.progress = null;
      next.started_at = event.at;
      next.cancel_requested = false;
      next.attempts = (job.attempts || 0) + (job.status === "processing" ? 0 : 1);
    }
    if (FINAL_STATUSES.has(status)) next.finished_at = event.at;
    if (status === "error" || event.error !== undefined) next.error = event.error ?? next.error;
    if (status === "complete") next.image_url = event.image_url || null; // a signed link
    next.transitions = [...(job.transitions || []), { status, at: event.at }];
    this._jobs.set(id, next);
    return true;
  }

  _applyPosition(message) {
    const job = this._jobs.get(String(message.job_id));
    if (!job || job.status !== "queued") return false;
    const position = message.queue_position;
    const eta = message.eta_s === undefined ? job.eta_s : message.eta_s;
    if (job.queue_position === position && job.eta_s === eta) {
      job._etaAt = Date.now(); // the same estimate, made again now
      return false;
    }
    const next = { ...job, queue_position: position, eta_s: eta, _etaAt: Date.now() };
    this._jobs.set(job.job_id, next);
    return true;
  }

  _applyProgress(message) {
    const job = this._jobs.get(String(message.job_id));
    if (!job || job.status !== "processing") return false;
    const progress = { step: message.step, steps: message.steps };
    if (job.progress && job.progress.step === progress.step &&
        job.progress.steps === progress.steps) return false;
    this._jobs.set(job.job_id, { ...job, progress });
    return true;
  }

  _emit() {
    for (const listener of this._listeners) {
      try {
        listener(this);
      } catch (err) {
        console.error("imageJobsStore listener failed", err);
      }
    }
  }
}

function sameJob(a, b) {
  const keys = ["status", "queue_position", "eta_s", "error", "image_url", "cancel_requested",
    "attempts", "prompt", "run_after"];
  for (const key of keys) if (a[key] !== b[key]) return false;
  const pa = a.progress;
  const pb = b.progress;
  if (!pa !== !pb) return false;
  return !pa || (pa.step === pb.step && pa.steps === pb.steps);
}
