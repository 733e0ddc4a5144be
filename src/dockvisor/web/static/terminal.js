// A terminal (xterm.js) joined to a websocket of this server: binary frames carry the
// bytes both ways; text frames are JSON messages ({"resize": [rows, cols]} from us,
// {"exit_code": N} or {"error": "..."} from the server). Used by the exec terminal
// of a container and by a VM's serial console.
"use strict";
// `resizes`: whether the other end takes {"resize": ...} messages (an exec terminal
// does; a serial console is a plain byte stream, where they would be typed).
window.dockvisorTerminal = function (element, url, status, resizes = true) {
  const term = new window.Terminal({ cursorBlink: true, convertEol: false, fontSize: 14,
                                     screenReaderMode: true });
  const fit = new window.FitAddon.FitAddon();
  term.loadAddon(fit);
  element.hidden = false;
  term.open(element);
  fit.fit();
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(`${scheme}//${location.host}${url}`);
  ws.binaryType = "arraybuffer";
  const encoder = new TextEncoder();
  const say = (text) => { if (status) status.textContent = text; };
  const resize = () => {
    fit.fit();
    if (resizes && ws.readyState === WebSocket.OPEN) {
      ws.send(JSON.stringify({ resize: [term.rows, term.cols] }));
    }
  };
  ws.onopen = () => { say("connected"); resize(); term.focus(); };
  ws.onmessage = (event) => {
    if (typeof event.data === "string") {
      let message = {};
      try { message = JSON.parse(event.data); } catch (e) { return; }
      if (message.error) say(`refused: ${message.error}`);
      else if (message.exit_code !== undefined) say(`ended (exit code ${message.exit_code})`);
      return;
    }
    term.write(new Uint8Array(event.data));
  };
  ws.onclose = (event) => {
    if (!status || !status.textContent.startsWith("refused") && !status.textContent.startsWith("ended")) {
      say(event.reason ? `closed: ${event.reason}` : "closed");
    }
    element.dataset.closed = "true";
  };
  term.onData((data) => { if (ws.readyState === WebSocket.OPEN) ws.send(encoder.encode(data)); });
  window.addEventListener("resize", resize);
  element.dockvisor = { term, ws };
  return { term, ws };
};
