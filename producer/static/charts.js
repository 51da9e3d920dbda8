// The ops page's live charts: draws GET /ops/series (the producer's ring of
// samples) with uPlot, refreshed at the sampling interval. Only numbers come
// from the server; every label is written here, and uPlot sets text as text.
(function () {
  const $ = (id) => document.getElementById(id);
  const fixed = (digits) => (u, v) => (v === null || v === undefined ? "—" : v.toFixed(digits));
  // Each chart: where it goes, its series (a column of the answer each), and its axes.
  const specs = [
    {
      id: "chart-rates", title: "Orders per second",
      series: [
        { key: "placed_per_second", label: "placed", stroke: "#2457d6", value: fixed(2) },
        { key: "processed_per_second", label: "processed", stroke: "#1e7a34", value: fixed(2) },
      ],
      axes: [{ label: "orders/s" }],
    },
    {
      id: "chart-backlog", title: "Outbox backlog",
      series: [
        { key: "backlog", label: "rows waiting", stroke: "#8a6d00", value: fixed(0) },
        { key: "oldest_age_seconds", label: "oldest row (s)", stroke: "#b3261e", scale: "s", value: fixed(1) },
      ],
      axes: [{ label: "rows" }, { label: "seconds", scale: "s", side: 1, grid: { show: false } }],
    },
    {
      id: "chart-latency", title: "End to end, placed to processed (ms)",
      series: [
        { key: "p50_seconds", label: "p50", stroke: "#2457d6", ms: true, value: fixed(1) },
        { key: "p99_seconds", label: "p99", stroke: "#b3261e", ms: true, value: fixed(1) },
      ],
      axes: [{ label: "ms" }],
    },
  ];
  const charts = new Map();
  // The x axis ends at the latest sample and spans at least `span` seconds, so
  // that a few samples are not stretched over the whole width (uPlot's own
  // range makes a lone sample's axis years wide).
  let span = 100, first = null, last = null;
  function xRange() {
    const end = last === null ? Date.now() / 1000 : last;
    return [Math.min(first === null ? end : first, end - span), end];
  }

  function width(el) { return Math.max(300, el.clientWidth || 600); }

  function make(spec, data) {
    const el = $(spec.id);
    const opts = {
      title: spec.title, width: width(el), height: 220,
      scales: { x: { time: true, range: xRange } },
      series: [{}].concat(spec.series.map((s) => ({ label: s.label, stroke: s.stroke, width: 2, scale: s.scale || "y", value: s.value }))),
      axes: [{}].concat(spec.axes.map((a) => Object.assign({ scale: "y" }, a))),
    };
    return new uPlot(opts, data, el);
  }

  function columns(spec, series) {
    return [series.t].concat(spec.series.map((s) => {
      const column = series[s.key] || [];
      return s.ms ? column.map((v) => (v === null ? null : v * 1000)) : column;
    }));
  }

  let every = 5000;
  async function refresh() {
    try {
      const res = await fetch("/ops/series", { cache: "no-store" });
      if (res.ok) draw(await res.json());
    } catch (e) {
      // The producer is unreachable or restarting: try again at the next turn.
    }
    setTimeout(refresh, every);
  }

  function draw(answer) {
    every = Math.max(1000, answer.interval_seconds * 1000);
    span = Math.min(answer.window_seconds, 20 * answer.interval_seconds);
    const series = answer.series;
    [first, last] = series.t.length ? [series.t[0], series.t[series.t.length - 1]] : [null, null];
    const section = $("charts");
    for (const spec of specs) {
      const data = columns(spec, series);
      let chart = charts.get(spec.id);
      if (chart) chart.setData(data); else charts.set(spec.id, (chart = make(spec, data)));
      // How many points carry a figure: what a reader (or a test) can check without reading the canvas.
      const drawn = data.slice(1).reduce((n, column) => n + column.filter((v) => v !== null).length, 0);
      $(spec.id).dataset.points = drawn;
    }
    const minutes = Math.round(answer.window_seconds / 60);
    $("charts-note").textContent = series.t.length === 0
      ? "No sample yet."
      : "Sampled every " + answer.interval_seconds + " s; the last " + (minutes >= 1 ? minutes + " min" : answer.window_seconds + " s") +
        " (" + series.t.length + (series.t.length === 1 ? " sample" : " samples") +
        "). A gap is a figure nobody could read: a consumer or the database did not answer.";
    section.dataset.samples = series.t.length;
  }

  window.addEventListener("resize", () => {
    for (const [id, chart] of charts) chart.setSize({ width: width($(id)), height: 220 });
  });
  refresh();
})();
