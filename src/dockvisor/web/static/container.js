// A container's page: its output followed (the API's logs stream, read as it comes),
// its CPU and memory every few seconds, and a shell over the exec websocket.
"use strict";
(function () {
  const csrf = document.body.dataset.csrf;
  const logs = document.getElementById("logs");
  const follow = document.getElementById("logs-follow");
  let reader = null;
  async function readLogs() {
    if (!logs) return;
    if (reader) { reader.cancel(); reader = null; }
    logs.textContent = "";
    const url = `${logs.dataset.logs}?tail=1000&follow=${follow && follow.checked}`;
    const response = await fetch(url, { credentials: "same-origin" });
    if (!response.ok) {
      let detail = response.statusText;
      try { detail = (await response.json()).detail; } catch (e) { /* not JSON */ }
      logs.textContent = `(no logs: ${detail})`;
      return;
    }
    reader = response.body.getReader();
    const decoder = new TextDecoder();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      const atEnd = logs.scrollTop + logs.clientHeight >= logs.scrollHeight - 4;
      logs.append(decoder.decode(value, { stream: true }));
      if (atEnd) logs.scrollTop = logs.scrollHeight;
    }
    logs.append(decoder.decode());
    logs.dataset.ended = "true";
  }
  if (follow) follow.addEventListener("change", readLogs);
  readLogs();

  const stats = document.getElementById("container-stats");
  async function readStats() {
    if (!stats) return;
    const response = await fetch(stats.dataset.stats, { credentials: "same-origin" });
    if (!response.ok) { stats.textContent = "—"; return; }
    const s = await response.json();
    const cpu = s.cpu_percent == null ? "" : `${s.cpu_percent.toFixed(1)}% CPU`;
    const mem = s.memory_used == null ? ""
      : `${(s.memory_used / 1048576).toFixed(1)} MiB memory${s.memory_limit ? ` of ${(s.memory_limit / 1048576).toFixed(0)} MiB` : ""}`;
    stats.textContent = [cpu, mem].filter(Boolean).join(", ") || "—";
  }
  readStats();
  setInterval(readStats, 5000);

  const open = document.getElementById("exec-open");
  const terminal = document.getElementById("exec-terminal");
  if (open && terminal) {
    open.addEventListener("click", () => {
      open.hidden = true;
      const url = `${terminal.dataset.exec}?cmd=sh&tty=true&csrf=${encodeURIComponent(csrf)}`;
      window.dockvisorTerminal(terminal, url, document.getElementById("exec-status"));
    });
  }
})();
