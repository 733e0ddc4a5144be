// A VM's consoles: ask for a ticket (bound to this user and VM, 30 s, one use), then
// open the websocket it names with the session's CSRF token. The serial console goes
// to an xterm.js terminal, the screen to noVNC (RFB over a binary websocket).
import RFB from "/static/vendor/@novnc/novnc/core/rfb.js";

const csrf = document.body.dataset.csrf;

async function ticket(button, kind, status) {
  const response = await fetch(button.dataset.tickets, {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
    body: JSON.stringify({ kind }),
  });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    status.textContent = `refused: ${body.detail || response.statusText}`;
    return null;
  }
  const separator = body.url.includes("?") ? "&" : "?";
  return `${body.url}${separator}csrf=${encodeURIComponent(csrf)}`;
}

const serialButton = document.getElementById("serial-open");
serialButton?.addEventListener("click", async () => {
  const status = document.getElementById("serial-status");
  const url = await ticket(serialButton, "serial", status);
  if (!url) return;
  serialButton.hidden = true;
  const terminal = document.getElementById("serial-terminal");
  const { term } = window.dockvisorTerminal(terminal, url, status, false);
  term.write("\r\n");
});

const screenButton = document.getElementById("screen-open");
screenButton?.addEventListener("click", async () => {
  const status = document.getElementById("screen-status");
  const url = await ticket(screenButton, "vnc", status);
  if (!url) return;
  screenButton.hidden = true;
  const screen = document.getElementById("screen");
  screen.hidden = false;
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const rfb = new RFB(screen, `${scheme}//${location.host}${url}`, { wsProtocols: ["binary"] });
  rfb.scaleViewport = true;
  rfb.addEventListener("connect", () => { status.textContent = "connected"; });
  rfb.addEventListener("disconnect", (e) => {
    status.textContent = e.detail.clean ? "closed" : "connection lost";
  });
  rfb.addEventListener("securityfailure", (e) => { status.textContent = `refused: ${e.detail.reason}`; });
});
