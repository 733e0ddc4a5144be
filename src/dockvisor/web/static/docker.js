// The Docker tab: each running container's CPU and memory (GET .../docker/usage, every
// 10 s and after the rows change), and uploading an image tarball (load or import).
"use strict";
(function () {
  const box = document.getElementById("containers");
  let usage = [];
  const mib = (v) => `${(v / 1048576).toFixed(1)} MiB`;
  function paint() {
    for (const cell of document.querySelectorAll("[data-usage]")) {
      const u = usage.find((x) => x.name === cell.dataset.usage);
      if (!u) continue;
      const cpu = u.cpu_percent == null ? "—" : `${u.cpu_percent.toFixed(1)}%`;
      const mem = u.memory_used == null ? "—" : mib(u.memory_used);
      cell.textContent = `${cpu} / ${mem}`;
    }
  }
  async function refresh() {
    if (!box) return;
    try {
      const response = await fetch(box.dataset.usageUrl, { credentials: "same-origin" });
      if (response.ok) { usage = await response.json(); paint(); }
    } catch (e) { /* the next round tries again */ }
  }
  refresh();
  setInterval(refresh, 10000);
  document.addEventListener("htmx:afterSwap", paint);
})();
(function () {
  const form = document.getElementById("image-upload");
  if (!form) return;
  const progress = document.getElementById("image-progress");
  const result = document.getElementById("image-result");
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const file = form.elements.file.files[0];
    if (!file) return;
    const kind = form.elements.kind.value;
    let url = form.dataset.upload + kind;
    if (kind === "import") {
      const [repository, tag] = (form.elements.repo.value || "imported:latest").split(":");
      url += `?repository=${encodeURIComponent(repository)}&tag=${encodeURIComponent(tag || "latest")}`;
    }
    const xhr = new XMLHttpRequest();
    xhr.open("POST", url);
    xhr.setRequestHeader("X-CSRF-Token", document.body.dataset.csrf);
    xhr.setRequestHeader("Content-Type", "application/x-tar");
    progress.hidden = false;
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) progress.value = e.loaded / e.total; };
    xhr.onload = () => {
      progress.hidden = true;
      if (xhr.status < 300) {
        result.textContent = "Image added.";
        document.body.dispatchEvent(new Event("images-changed"));
      } else {
        let detail = xhr.statusText;
        try { detail = JSON.parse(xhr.responseText).detail; } catch (e) { /* not JSON */ }
        result.textContent = `Refused: ${detail}`;
      }
    };
    xhr.onerror = () => { progress.hidden = true; result.textContent = "The upload failed."; };
    xhr.send(file);
  });
})();
