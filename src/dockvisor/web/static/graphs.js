// A VM's last hour: CPU, memory, disk and network, as the server sampled them from the
// hypervisor (GET /api/v1/vms/ID/metrics), drawn with uPlot and refreshed each period.
"use strict";
(function () {
  const box = document.getElementById("graphs");
  if (!box || !window.uPlot) return;
  const bytes = (v) => v == null ? "" : v >= 1073741824 ? `${(v / 1073741824).toFixed(1)} GiB`
    : v >= 1048576 ? `${(v / 1048576).toFixed(1)} MiB` : v >= 1024 ? `${(v / 1024).toFixed(0)} KiB` : `${v.toFixed(0)} B`;
  const rate = (v) => v == null ? "" : `${bytes(v)}/s`;
  const charts = [
    { title: "CPU (% of its vCPUs)", series: [["cpu_percent", "CPU %", "#1d4e89"]], fmt: (v) => v == null ? "" : `${v.toFixed(0)}%` },
    { title: "Memory used", series: [["memory_used", "used", "#1b5e20"], ["memory_total", "total", "#8a96a3"]], fmt: bytes },
    { title: "Disk", series: [["disk_read", "read", "#7a4a00"], ["disk_write", "write", "#a4161a"]], fmt: rate },
    { title: "Network", series: [["net_rx", "received", "#1d4e89"], ["net_tx", "sent", "#6a1b9a"]], fmt: rate },
  ];
  const grid = document.createElement("div");
  grid.className = "graphs";
  box.append(grid);
  const plots = [];
  const width = () => Math.max(280, Math.min(560, grid.clientWidth - 16));
  async function load() {
    const response = await fetch(box.dataset.metrics, { credentials: "same-origin" });
    if (!response.ok) {
      box.querySelector(".hint").textContent = "No statistics for this VM (yet).";
      return 60;
    }
    const data = await response.json();
    const s = data.series;
    charts.forEach((chart, i) => {
      const values = [s.time, ...chart.series.map(([key]) => s[key])];
      if (!plots[i]) {
        const figure = document.createElement("figure");
        figure.setAttribute("aria-label", `${chart.title} over the last hour`);
        grid.append(figure);
        const caption = document.createElement("figcaption");
        caption.textContent = chart.title;
        figure.append(caption);
        plots[i] = new window.uPlot({
          width: width(), height: 160,
          series: [{}, ...chart.series.map(([, label, stroke]) => ({ label, stroke, width: 2, value: (u, v) => chart.fmt(v) }))],
          axes: [{}, { values: (u, ticks) => ticks.map(chart.fmt), size: 70 }],
        }, values, figure);
      } else {
        plots[i].setData(values);
      }
    });
    box.dataset.points = String(s.time.length);
    return data.period || 10;
  }
  async function loop() {
    let period = 10;
    try { period = await load(); } catch (e) { period = 30; }
    setTimeout(loop, period * 1000);
  }
  loop();
  window.addEventListener("resize", () => plots.forEach((p) => p.setSize({ width: width(), height: 160 })));
})();
