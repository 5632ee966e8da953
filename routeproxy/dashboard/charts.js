"use strict";
// Two small SVG charts drawn by hand (no library): lines over time, and intervals on one axis.
window.routeproxyCharts = (() => {
  const NS = "http://www.w3.org/2000/svg";
  const WIDTH = 640;

  function el(tag, attrs, text) {
    const node = document.createElementNS(NS, tag);
    for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // 0, and a round number at or above `value` (1, 2, 2.5 or 5 times a power of ten).
  function niceMax(value) {
    if (!(value > 0)) return 1;
    const power = 10 ** Math.floor(Math.log10(value));
    for (const step of [1, 2, 2.5, 5, 10]) if (step * power >= value) return step * power;
    return 10 * power;
  }

  function clock(ms) {
    return new Date(ms).toTimeString().slice(0, 8);
  }

  function label(value) {
    return Math.abs(value) >= 1000 ? `${+(value / 1000).toFixed(1)}k` : String(+value.toFixed(2));
  }

  // series: [{name, cls, dashed, points: [[time ms, value or null], ...]}]
  function lineChart(svg, series, { height = 200 } = {}) {
    const margin = { left: 46, right: 10, top: 22, bottom: 22 };
    svg.setAttribute("viewBox", `0 0 ${WIDTH} ${height}`);
    svg.replaceChildren();
    const points = series.flatMap((line) => line.points.filter((point) => point[1] !== null));
    if (points.length === 0) {
      svg.append(el("text", { x: WIDTH / 2, y: height / 2, class: "empty", "text-anchor": "middle" },
        "waiting for data"));
      return;
    }
    const times = points.map((point) => point[0]);
    let [t0, t1] = [Math.min(...times), Math.max(...times)];
    if (t1 - t0 < 1000) [t0, t1] = [t1 - 1000, t1];
    const top = niceMax(Math.max(...points.map((point) => point[1])));
    const plotW = WIDTH - margin.left - margin.right;
    const plotH = height - margin.top - margin.bottom;
    const x = (t) => margin.left + ((t - t0) / (t1 - t0)) * plotW;
    const y = (v) => margin.top + plotH - (v / top) * plotH;
    for (let tick = 0; tick <= 4; tick += 1) {
      const value = (top * tick) / 4;
      svg.append(el("line", { x1: margin.left, x2: WIDTH - margin.right, y1: y(value), y2: y(value), class: "gridline" }));
      svg.append(el("text", { x: margin.left - 4, y: y(value) + 4, "text-anchor": "end", class: "tick" },
        label(value)));
    }
    const steps = Math.max(1, Math.min(3, Math.floor((t1 - t0) / 1000)));
    for (let tick = 0; tick <= steps; tick += 1) {
      const t = t0 + ((t1 - t0) * tick) / steps;
      const anchor = tick === 0 ? "start" : tick === steps ? "end" : "middle";
      svg.append(el("text", { x: x(t), y: height - 6, "text-anchor": anchor, class: "tick" }, clock(t)));
    }
    let legendX = margin.left;
    for (const line of series) {
      let path = "";
      let pen = "M";
      for (const [t, v] of line.points) {
        if (v === null) {
          pen = "M";
          continue;
        }
        path += `${pen}${x(t).toFixed(1)},${y(v).toFixed(1)}`;
        pen = "L";
      }
      const cls = `series ${line.cls}${line.dashed ? " dashed" : ""}`;
      if (path) svg.append(el("path", { d: path, class: cls }));
      svg.append(el("line", { x1: legendX, x2: legendX + 18, y1: 9, y2: 9, class: cls }));
      svg.append(el("text", { x: legendX + 22, y: 13, class: "legend" }, line.name));
      legendX += 30 + line.name.length * 7;
    }
  }

  // rows: [{name, cls, low, high, point}] on one axis from `min` to `max`;
  // zones: [{from, to, cls}] shaded behind; marks: [{at, name}] drawn as vertical lines.
  function intervalChart(svg, rows, { min, max, zones = [], marks = [], unit = "" }) {
    const rowH = 30;
    const margin = { left: 60, right: 16, top: marks.some((mark) => mark.name) ? 14 : 4, bottom: 22 };
    const height = margin.top + rows.length * rowH + margin.bottom;
    svg.setAttribute("viewBox", `0 0 ${WIDTH} ${height}`);
    svg.replaceChildren();
    const plotW = WIDTH - margin.left - margin.right;
    const clamp = (v) => Math.min(max, Math.max(min, v));
    const x = (v) => margin.left + ((clamp(v) - min) / (max - min)) * plotW;
    const bottom = height - margin.bottom;
    for (const zone of zones) {
      const [from, to] = [x(zone.from), x(zone.to)];
      svg.append(el("rect", { x: from, y: margin.top, width: Math.max(0, to - from), height: bottom - margin.top,
        class: `zone ${zone.cls}` }));
    }
    const step = niceMax((max - min) / 6);
    for (let value = Math.ceil(min / step) * step; value <= max + step / 1000; value += step) {
      svg.append(el("text", { x: x(value), y: height - 6, "text-anchor": "middle", class: "tick" },
        `${label(value)}${unit}`));
    }
    for (const mark of marks) {
      svg.append(el("line", { x1: x(mark.at), x2: x(mark.at), y1: margin.top, y2: bottom, class: "mark" }));
      if (mark.name) {
        const before = mark.anchor === "end";
        svg.append(el("text", { x: x(mark.at) + (before ? -3 : 3), y: margin.top + 9, class: "tick",
          "text-anchor": before ? "end" : "start" }, mark.name));
      }
    }
    rows.forEach((row, index) => {
      const middle = margin.top + index * rowH + rowH / 2;
      svg.append(el("text", { x: margin.left - 6, y: middle + 4, "text-anchor": "end", class: "legend" }, row.name));
      if (row.low === null || row.high === null || row.low === undefined || row.high === undefined) {
        svg.append(el("text", { x: margin.left + 6, y: middle + 4, class: "empty" }, "no interval yet"));
        return;
      }
      svg.append(el("line", { x1: x(row.low), x2: x(row.high), y1: middle, y2: middle, class: `bar ${row.cls}` }));
      if (row.point !== null && row.point !== undefined) {
        svg.append(el("circle", { cx: x(row.point), cy: middle, r: 5, class: `point ${row.cls}` }));
      }
    });
  }

  // An empty chart element, for charts whose block is built by the page's script.
  function chart(id) {
    return el("svg", { id, class: "chart" });
  }

  return { chart, lineChart, intervalChart };
})();
