// Charts over uPlot: rolling time series and bar histograms.
import uPlot from "./vendor/uplot/uPlot.esm.js";

const COLORS = ["#2f6fde", "#1f9d55", "#d2383b", "#c98a00", "#7a4fd6", "#0f9aa8"];

function width(el) {
  return Math.max(300, el.clientWidth - 4);
}

/**
 * A time series chart keeping the last `keep` points.
 * `series` is a list of {label, color?, fmt?, dash?}.
 */
export class TimeChart {
  constructor(el, title, series, opts = {}) {
    this.keep = opts.keep || 180;
    // Seconds shown: the newest `keep` one-second points.
    this.window = opts.window || this.keep;
    this.data = [[], ...series.map(() => [])];
    const fmt = opts.fmt || ((v) => (v === null || v === undefined ? "–" : String(Math.round(v * 100) / 100)));
    this.plot = new uPlot({
      title,
      width: width(el),
      height: opts.height || 200,
      scales: { x: { time: true, range: (u, min, max) => this.xRange(min, max) }, y: { range: (u, lo, hi) => [Math.min(0, lo), Math.max(hi, opts.minMax || 1)] } },
      axes: [{}, { values: (u, vals) => vals.map(fmt), size: 70 }],
      series: [{}, ...series.map((s, i) => ({
        label: s.label,
        stroke: s.color || COLORS[i % COLORS.length],
        width: 2,
        dash: s.dash,
        value: (u, v) => fmt(v),
        spanGaps: true,
      }))],
      legend: { live: true },
    }, this.data, el);
    this.el = el;
    this.onResize = () => this.plot.setSize({ width: width(el), height: opts.height || 200 });
    window.addEventListener("resize", this.onResize);
  }

  /**
   * The visible time span: the newest `window` seconds, filled from the
   * left, at least one minute wide.
   */
  xRange(min, max) {
    const now = Date.now() / 1000;
    const hi = max ?? now;
    const lo = Math.max(min ?? hi, hi - this.window);
    return [lo, Math.max(hi, lo + 60)];
  }

  /** Adds one point per series at time `t` (Unix ms). */
  push(t, values) {
    this.data[0].push(t / 1000);
    values.forEach((v, i) => this.data[i + 1].push(v));
    if (this.data[0].length > this.keep) for (const col of this.data) col.shift();
    this.plot.setData(this.data);
  }

  destroy() {
    window.removeEventListener("resize", this.onResize);
    this.plot.destroy();
  }
}

/** Bars over buckets: `labels` name the buckets, `series` [{label, values}]. */
export class BarChart {
  constructor(el, title, seriesLabels, opts = {}) {
    this.labels = [];
    this.el = el;
    const bars = uPlot.paths.bars({ size: [0.8, 40] });
    this.plot = new uPlot({
      title,
      width: width(el),
      height: opts.height || 200,
      scales: { x: { time: false, range: (u, min, max) => [(min ?? 0) - 0.5, (max ?? 0) + 0.5] } },
      axes: [
        { values: (u, vals) => vals.map((v) => this.labels[v] ?? ""), space: 60, incrs: [1, 2, 5, 10, 20] },
        { size: 50 },
      ],
      series: [{ label: "bucket", value: (u, v) => this.labels[v] ?? "" }, ...seriesLabels.map((label, i) => ({
        label,
        stroke: COLORS[i % COLORS.length],
        fill: COLORS[i % COLORS.length] + "99",
        paths: bars,
        points: { show: false },
      }))],
    }, [[], ...seriesLabels.map(() => [])], el);
  }

  /** Replaces the data: `labels` for x, `columns` one array per series. */
  set(labels, columns) {
    this.labels = labels;
    this.plot.setData([labels.map((_, i) => i), ...columns]);
  }

  destroy() { this.plot.destroy(); }
}
