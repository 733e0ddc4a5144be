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
