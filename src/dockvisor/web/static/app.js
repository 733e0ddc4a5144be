// dockvisor pages: the little htmx does not do by itself. No inline scripts anywhere
// (the Content-Security-Policy forbids them): behaviour hangs on data- attributes.
"use strict";
document.addEventListener("click", (event) => {
  const copy = event.target.closest("[data-copy]");
  if (copy) {
    const source = document.querySelector(copy.dataset.copy);
    if (source) {
      source.select();
      navigator.clipboard?.writeText(source.value).catch(() => document.execCommand("copy"));
      copy.textContent = "Copied";
    }
  }
  const dismiss = event.target.closest("[data-dismiss]");
  if (dismiss) dismiss.parentElement.remove();
});
// After a form comes back with errors, put the keyboard on the first field concerned.
document.addEventListener("htmx:afterSwap", (event) => {
  // (an outerHTML swap leaves the old element detached: look in the page then)
  const where = event.detail.target.isConnected ? event.detail.target : document;
  const invalid = where.querySelector('[aria-invalid="true"]');
  if (invalid) invalid.focus();
});
// A live part (hx-trigger="sse:NAME") told of a change while its previous refresh is still
// on the way: htmx queues the new refresh on the element, but the answer on the way (the
// state before the change) replaces that element (hx-swap="outerHTML") and htmx then
// drops what was queued on it. The part would show the older state until a reload. So the
// element that took its place is refreshed once more. Settling at once (no delay) sets the
// new element up, listening to its events, in the same step as the swap: no event can
// fall between the old element's end and the new one's start.
htmx.config.defaultSettleDelay = 0;
const refreshing = new WeakMap(); // element -> the event message its refresh answers
const missed = new WeakMap(); // element -> the event names it was told of meanwhile
document.addEventListener("htmx:beforeRequest", (event) => {
  const cause = event.detail.requestConfig?.triggeringEvent?.detail;
  refreshing.set(event.detail.elt, cause instanceof MessageEvent ? cause : null);
});
document.addEventListener("htmx:sseMessage", (event) => {
  const elt = event.target;
  if (!refreshing.has(elt) || refreshing.get(elt) === event.detail) return;
  const names = missed.get(elt) ?? new Set();
  names.add(event.detail.type);
  missed.set(elt, names);
});
document.addEventListener("htmx:afterRequest", (event) => {
  // (detail.elt is where the event is told: the requester's parent once it is gone)
  const old = event.detail.requestConfig?.elt ?? event.detail.elt;
  refreshing.delete(old);
  const names = missed.get(old);
  missed.delete(old);
  if (!names || old.isConnected || !old.id) return; // still there: htmx's queue serves it
  const now = document.getElementById(old.id);
  if (now) names.forEach((name) => htmx.trigger(now, `sse:${name}`));
});
