// Words and numbers as people read them: "3rd in line", "starts in about 20 s".

/** @param {number} n */
export function ordinal(n) {
  const value = Math.trunc(Number(n));
  const tens = value % 100;
  if (tens >= 11 && tens <= 13) return `${value}th`;
  switch (value % 10) {
    case 1: return `${value}st`;
    case 2: return `${value}nd`;
    case 3: return `${value}rd`;
    default: return `${value}th`;
  }
}

/** @param {number} position 0: not in line yet */
export function positionText(position) {
  return position >= 1 ? `${ordinal(position)} in line` : "waiting for a place in line";
}

/** @param {number | null | undefined} seconds */
export function etaText(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(Number(seconds))) return "";
  const s = Number(seconds);
  if (s < 1.5) return "starts any moment now";
  if (s < 10) return `starts in about ${Math.round(s)} s`;
  if (s < 60) return `starts in about ${Math.round(s / 5) * 5} s`;
  if (s < 3600) {
    const minutes = Math.round(s / 60);
    return `starts in about ${minutes} min`;
  }
  const hours = Math.round((s / 3600) * 10) / 10;
  return `starts in about ${hours} h`;
}

/** @param {string} fromIso @param {string} toIso */
export function durationText(fromIso, toIso) {
  const ms = Date.parse(toIso) - Date.parse(fromIso);
  if (!Number.isFinite(ms) || ms < 0) return "";
  if (ms < 10_000) return `${(ms / 1000).toFixed(1)} s`;
  if (ms < 120_000) return `${Math.round(ms / 1000)} s`;
  return `${Math.round(ms / 60_000)} min`;
}

/** @param {string} iso */
export function whenText(iso) {
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return "";
  const now = new Date();
  const time = date.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" });
  if (date.toDateString() === now.toDateString()) return `Today ${time}`;
  const yesterday = new Date(now);
  yesterday.setDate(now.getDate() - 1);
  if (date.toDateString() === yesterday.toDateString()) return `Yesterday ${time}`;
  return date.toLocaleDateString(undefined, { month: "short", day: "numeric" }) + ` ${time}`;
}

/**
 * A prompt short enough to name an image by (a button's name, an announcement): its first
 * words, up to about 40 characters.
 * @param {string} prompt
 */
export function shortPrompt(prompt) {
  const text = prompt.trim().replace(/\s+/g, " ");
  if (text.length <= 40) return text;
  const cut = text.slice(0, 40);
  const space = cut.lastIndexOf(" ");
  return `${(space > 20 ? cut.slice(0, space) : cut).replace(/[\s,.;:]+$/, "")}…`;
}
