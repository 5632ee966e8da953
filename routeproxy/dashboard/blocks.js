"use strict";
// The dashboard's blocks below the routing controls, drawn from the stats JSON. Every figure taken from the JSON
// carries its path (data-field), so what is shown can be checked against the endpoint. Blocks whose keys a proxy
// does not return yet say so instead of breaking.
window.routeproxyBlocks = (() => {
  const SLOTS = ["simple", "medium", "complex", "pinned"];
  const { chart, lineChart, intervalChart } = window.routeproxyCharts;
  const $ = (id) => document.getElementById(id);
  let stats = null;
  let history = [];
  let tiers = ["3b", "8b"]; // the tiers' labels (settings tiers.<tier>.label), small first

  function h(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "class") node.className = value;
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child !== null && child !== undefined && child !== false) node.append(child);
    }
    return node;
  }

  // replaceChildren, leaving out the blocks a proxy has no data for (null / undefined / false).
  function fill(node, ...children) {
    node.replaceChildren(...children.flat().filter((child) => child !== null && child !== undefined && child !== false));
  }

  function at(object, path) {
    return path.split(".").reduce((value, key) => (value === null || value === undefined ? undefined : value[key]),
      object);
  }

  function show(value) {
    if (value === null || value === undefined) return "–";
    if (typeof value === "boolean") return value ? "yes" : "no";
    return String(value);
  }

  const tierClass = (tier) => (tiers.indexOf(tier) === 0 ? "tier-small" : "tier-large");
  const fig = (path) => h("span", { class: "fig", "data-field": path }, show(at(stats, path)));
  const card = (name, ...value) => h("div", { class: "card" }, h("div", { class: "card-name" }, name),
    h("div", { class: "card-value" }, ...value));
  const note = (text) => h("p", { class: "muted" }, text);
  const interval = (path) => h("span", {}, "[", fig(`${path}.0`), ", ", fig(`${path}.1`), "]");

  function table(head, rows, caption, cls) {
    return h("table", { class: cls }, caption ? h("caption", {}, caption) : null,
      h("thead", {}, h("tr", {}, head.map((name) => h("th", {}, name)))),
      h("tbody", {}, rows.map((row) => h("tr", {}, row.map((cell, index) => h(index ? "td" : "th", {}, cell))))));
  }

  function share(part, whole) {
    return whole ? `${(Math.round((part / whole) * 1000) / 10).toFixed(1)}` : "0.0";
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    const parts = [[86400, "d"], [3600, "h"], [60, "min"]].filter(([size]) => seconds >= size);
    if (!parts.length) return `${Math.round(seconds)} s`;
    const [size, unit] = parts[0];
    return `${+(seconds / size).toFixed(1)} ${unit}`;
  }

  function ratePoints(tier) {
    return history.map((point, index) => {
      const before = history[index - 1];
      if (!before || before.period !== point.period || point.t <= before.t) return [point.t, null];
      const added = point.count[tier] - before.count[tier];
      return [point.t, added < 0 ? null : added / ((point.t - before.t) / 1000)];
    });
  }

  function percentileSeries(kind) {
    return tiers.flatMap((tier) => ["p50", "p95"].map((name) => ({
      name: `${tier} ${name}`, cls: tierClass(tier), dashed: name === "p95",
      points: history.map((point) => [point.t, point[kind][tier] ? point[kind][tier][name] : null]),
    })));
  }

  // Where the headline figures come from (simulated or sped-up upstreams, routing off, a configured baseline), said
  // above them: a demo's figures must not read as a measurement of routing between real models.
  function baselineSource() {
    const source = at(stats, "provenance.baseline");
    return { large_tier: "measured: the large tier", configured: "configured", none: "no large-tier request yet" }[source]
      || "";
  }

  function renderTraffic() {
    const caveats = at(stats, "provenance.caveats") || [];
    fill($("caveats"), caveats.map((text) => h("li", { "data-caveat": "" }, text)));
    const tokens = (tier, kind) => at(stats, `tokens.${tier}.${kind}`) === undefined ? "–" : fig(`tokens.${tier}.${kind}`);
    fill($("traffic-cards"),
      card("requests", fig("total_requests")),
      card("average latency (ms)", fig("average_latency_ms")),
      card("baseline (ms)", fig("baseline_latency_ms"), h("div", { class: "card-note" }, baselineSource())),
      card(caveats.length ? "latency improvement % (see the notes)" : "latency improvement %",
        fig("latency_improvement_pct")),
      card("estimated cost savings %", fig("estimated_cost_savings_pct")),
      card("classifier failures", fig("classify_failures")));
    fill($("traffic-tiers"), table(
      ["tier", "requests", "share %", "avg ms", "streams", "prompt tokens", "completion tokens"],
      tiers.map((tier) => [tier, fig(`model_distribution.${tier}.count`), fig(`model_distribution.${tier}.percentage`),
        fig(`model_distribution.${tier}.avg_latency_ms`), fig(`streams.${tier}`), tokens(tier, "prompt"),
        tokens(tier, "completion")]), "per tier"));
    const slots = SLOTS.filter((slot) => stats.complexity_distribution && slot in stats.complexity_distribution);
    fill($("traffic-complexity"), table(["complexity", "requests", ...tiers.map((tier) => `to ${tier}`), "avg ms"],
      slots.map((slot) => [slot, fig(`complexity_distribution.${slot}.count`),
        ...tiers.map((tier) => fig(`complexity_distribution.${slot}.tiers.${tier}`)),
        fig(`complexity_distribution.${slot}.avg_latency_ms`)]), "per complexity"));
    lineChart($("chart-rate"), tiers.map((tier) => ({ name: tier, cls: tierClass(tier), points: ratePoints(tier) })));
  }

  function renderLatency() {
    const rows = [...tiers, "overall"].map((row) => [row,
      ...["p50", "p95", "p99"].map((name) => fig(`latency_percentiles_ms.${row}.${name}`)),
      ...["p50", "p95", "p99"].map((name) => fig(`ttfb_percentiles_ms.${row}.${name}`))]);
    fill($("latency-table"), table(
      ["", "latency p50", "p95", "p99", "TTFB p50", "p95", "p99"], rows, "milliseconds, since the period began"));
    lineChart($("chart-latency"), percentileSeries("latency"));
    lineChart($("chart-ttfb"), percentileSeries("ttfb"));
  }

  function renderRates() {
    const rows = tiers.map((tier) => {
      const requests = at(stats, `model_distribution.${tier}.count`) || 0;
      return [tier, fig(`model_distribution.${tier}.count`), fig(`upstream_errors.${tier}`),
        fig(`error_rate_pct.${tier}`), fig(`fallbacks.${tier}`), share(at(stats, `fallbacks.${tier}`) || 0, requests),
        fig(`disconnects.${tier}`), fig(`status_classes.${tier}.4xx`), fig(`status_classes.${tier}.5xx`)];
    });
    rows.push(["overall", fig("total_requests"), "", fig("error_rate_pct.overall"), "", "", "", "", ""]);
    fill($("rates-table"), table(["tier", "requests", "upstream errors", "error rate %", "fallbacks",
      "fallback rate %", "client disconnects", "4xx", "5xx"], rows));
    renderEscalation();
    renderCache();
  }

  function renderCache() {
    const box = $("cache");
    if (!stats.cache || !stats.cache.enabled) {
      fill(box, note("The response cache is off (cache.enabled): every request goes upstream."));
      return;
    }
    fill(box,
      h("h3", {}, "Response cache (answers given without an upstream call of their own)"),
      h("div", { class: "cards" }, card("store", fig("cache.store")), card("hit rate %", fig("cache.hit_rate_pct")),
        card("answered without upstream %", fig("cache.answered_without_upstream_pct")),
        card("hits", fig("cache.hits")), card("coalesced", fig("cache.coalesced")), card("misses", fig("cache.misses")),
        card("bypassed", fig("cache.bypassed")), card("bytes stored now", fig("cache.bytes_now")),
        card("entries now", fig("cache.entries_now")), card("evictions", fig("cache.evictions")),
        card("store failures", fig("cache.unavailable"))),
      table(["tier", "hits", "coalesced", "upstream ms saved", "prompt tokens saved", "completion tokens saved"],
        tiers.map((tier) => [tier, fig(`cache.by_tier.${tier}.hits`), fig(`cache.by_tier.${tier}.coalesced`),
          fig(`cache.by_tier.${tier}.saved_upstream_ms`), fig(`cache.by_tier.${tier}.saved_prompt_tokens`),
          fig(`cache.by_tier.${tier}.saved_completion_tokens`)])));
  }

  function renderEscalation() {
    const box = $("escalation");
    if (!stats.cascade) {
      fill(box, note("No escalation figures: this proxy's stats have no cascade block (routing mode "
        + "classify only)."));
      return;
    }
    const percentiles = (path) => ["avg", "p50", "p95", "p99"].map((name) => fig(`${path}.${name}`));
    fill(box,
      h("h3", {}, `Escalation (cascade mode: ${tiers[0]} first, ${tiers[1]} when its answer looks weak)`),
      h("div", { class: "cards" }, card("mode", fig("cascade.routing_mode")), card("checked", fig("cascade.checked")),
        card("escalated", fig("cascade.escalated")), card("escalation rate %", fig("cascade.escalated_pct")),
        card(`answered by ${tiers[0]} %`, fig("cascade.answered_by_small_pct")),
        card("escalation failures", fig("cascade.escalation_failures"))),
      h("div", { class: "grid" },
        table(["complexity", "checked", "escalated", "rate %"], SLOTS.map((slot) => [slot,
          fig(`cascade.by_complexity.${slot}.checked`), fig(`cascade.by_complexity.${slot}.escalated`),
          fig(`cascade.by_complexity.${slot}.escalated_pct`)])),
        table(["ms", "avg", "p50", "p95", "p99"], [
          ["added latency (escalated)", ...percentiles("cascade.added_latency_ms")],
          ["hold before first byte", ...percentiles("cascade.hold_ms")]]),
        table([`${tiers[0]} spent on escalated requests`, ""], [
          ["time ms (sum)", fig("cascade.small_tier_on_escalated.time_ms_sum")],
          ["avg time ms", fig("cascade.small_tier_on_escalated.avg_time_ms")],
          ["prompt tokens", fig("cascade.small_tier_on_escalated.prompt_tokens")],
          ["completion tokens", fig("cascade.small_tier_on_escalated.completion_tokens")]])));
  }

  const TIER_ROWS = [
    ["requests", "requests"], ["feedback", "feedback_count"], ["thumbs up", "thumbs_up"],
    ["mean score", "mean_score"], ["score interval", null], ["error rate %", "error_rate_pct"],
    ["avg latency ms", "avg_latency_ms"], ["p95 latency ms", "p95_latency_ms"],
    ["upstream errors", "implicit.upstream_errors"], ["disconnects", "implicit.disconnects"],
    ["regenerations", "implicit.regenerations"], ["implicit bad rate %", "implicit.bad_rate_pct"],
    ["escalated", "escalated"],
  ];

  // One row per figure, one column per tier object (paths in the stats JSON).
  function tierTable(columns, caption) {
    const rows = TIER_ROWS.filter(([, key]) => key === null || columns.some(([, path]) => at(stats, `${path}.${key}`)
      !== undefined)).map(([name, key]) => [name, ...columns.map(([, path]) => (key === null
      ? interval(`${path}.score_interval`) : fig(`${path}.${key}`)))]);
    return table(["", ...columns.map(([name]) => name)], rows, caption);
  }

  function renderQuality() {
    const ab = stats.ab_analysis;
    const box = $("quality-body");
    if (!ab) {
      fill(box, note("No A/B quality analysis in this proxy's stats: it comes with feedback support "
        + "(POST /v1/model-routing/feedback)."));
      return;
    }
    const thresholds = ab.thresholds || {};
    const difference = ab.difference || {};
    const [low, high] = difference.degradation_interval_pct || [null, null];
    const review = thresholds.review_at_pct ?? 5;
    const rollback = thresholds.rollback_at_pct ?? 10;
    const min = Math.floor(Math.min(-review, (low ?? 0) - 1) / 5) * 5;
    const max = Math.ceil(Math.max(rollback * 2, (high ?? 0) + 1) / 5) * 5;
    const degradation = chart("chart-degradation");
    const [small, large] = Object.keys(ab.tiers || {});
    intervalChart(degradation, [{ name: `${small} vs ${large}`, cls: "tier-small", low, high,
      point: difference.degradation_pct }],
      { min, max, unit: "%", marks: [{ at: 0 }, { at: review, name: "review", anchor: "end" }, { at: rollback, name: "rollback" }],
        zones: [{ from: min, to: review, cls: "pass" }, { from: review, to: rollback, cls: "review" },
          { from: rollback, to: max, cls: "rollback" }] });
    const scores = chart("chart-scores");
    intervalChart(scores, [small, large].map((tier) => ({ name: tier, cls: tierClass(tier),
      low: at(ab, `tiers.${tier}.score_interval.0`), high: at(ab, `tiers.${tier}.score_interval.1`),
      point: at(ab, `tiers.${tier}.mean_score`) })), { min: 0, max: 1 });
    const others = Object.keys(ab.other_complexities || {}).flatMap((slot) => [small, large].map((tier) =>
      [`${slot} ${tier}`, `ab_analysis.other_complexities.${slot}.${tier}`]));
    // In a period with cascade checks, the small tier's column holds the answers the check kept and the large
    // tier's the escalated ones (feedback counts on the tier that answered).
    const cascade = ab.cascade && ab.cascade.comparison !== "ab_test" ? ab.cascade : null;
    const column = (tier) => (!cascade ? tier : tier === cascade.kept_on ? `${tier} (kept)`
      : tier === cascade.escalated_to ? `${tier} (escalated)` : tier);
    fill(box,
      h("p", { class: "verdict-line" }, h("span", { class: `badge verdict-${ab.verdict}`, id: "verdict",
        "data-field": "ab_analysis.verdict" }, show(ab.verdict)), " ", h("span", {}, show(ab.reason))),
      h("p", { class: "muted" }, `period ${show(ab.period)}, ${show(ab.method)} at ${show(ab.confidence)} `
        + `confidence; the verdict uses ${show(ab.verdict_uses)} (feedback alone: ${show(ab.feedback_verdict)}, `
        + `implicit signals: ${show(ab.implicit_verdict)}); review at ${review} %, rollback at ${rollback} %, `
        + `at least ${show(thresholds.min_feedback_per_tier)} feedback per tier`),
      h("div", { class: "cards" },
        card(`degradation of ${small} vs ${large} %`, fig("ab_analysis.difference.degradation_pct"), " ",
          interval("ab_analysis.difference.degradation_interval_pct")),
        card(`score difference (${small} - ${large})`, fig("ab_analysis.difference.absolute"), " ",
          interval("ab_analysis.difference.absolute_interval")),
        card("feedback received", fig("ab_analysis.feedback.received")),
        card("replaced / unknown / queued", fig("ab_analysis.feedback.replaced"), " / ",
          fig("ab_analysis.feedback.unknown_ids"), " / ", fig("ab_analysis.feedback.queued"))),
      h("figure", {}, h("figcaption", {}, "degradation interval (%), with the review and rollback thresholds"),
        degradation),
      h("div", { class: "grid" },
        tierTable([small, large].map((tier) => [column(tier), `ab_analysis.tiers.${tier}`]),
          "MEDIUM queries, this period"),
        h("figure", {}, h("figcaption", {}, "mean score and its interval, per tier"), scores)),
      cascade ? h("p", { class: "muted" }, "comparison ", fig("ab_analysis.cascade.comparison"), ": ",
        fig("ab_analysis.cascade.checked"), " MEDIUM answers checked, ", fig("ab_analysis.cascade.escalated"),
        " escalated (", fig("ab_analysis.cascade.escalated_pct"), ` %). The ${cascade.kept_on} column holds the `
        + `answers the check kept, the ${cascade.escalated_to} column the escalated ones: different prompts, so the `
        + "rollout controller does not act on this comparison.") : null,
      others.length ? tierTable(others, "beside the comparison (never mixed into it)") : null);
  }

  function renderRollout() {
    const rollout = stats.rollout;
    const box = $("rollout-body");
    if (!rollout) {
      fill(box, note("No rollout controller in this proxy's stats: the ratio is set by hand above."));
      return;
    }
    const schedule = rollout.schedule || [];
    const chips = h("ol", { class: "schedule" }, [-1, ...schedule.keys()].map((step) => h("li", {
      class: step === rollout.step_index ? "current" : step === -1 ? "zero" : "" },
    step === -1 ? "0" : String(schedule[step]))));
    const entries = [...(rollout.history || [])].reverse().map((entry) => [
      new Date(entry.at).toLocaleString(), `${show(entry.from_ratio)} → ${show(entry.to_ratio)}`,
      `${show(entry.from_step)} → ${show(entry.to_step)}`, show(entry.by), show(entry.why)]);
    const progress = (value, limit) => h("progress", { max: limit || 1, value: Math.min(value || 0, limit || 1) });
    fill(box,
      rollout.enabled ? null : note("The rollout controller is off (routing.rollout.enabled): the ratio is set by "
        + "hand. Its stored history is below."),
      rollout.enabled ? h("div", {},
        chips,
        h("div", { class: "cards" },
          card("step", fig("rollout.step_index")), card("ratio", fig("rollout.ratio")),
          card("paused", fig("rollout.paused")), card("waiting for", fig("rollout.waiting_for")),
          card("held", `${duration(rollout.held_s)} of ${duration(rollout.min_hold_s)}`,
            progress(rollout.held_s, rollout.min_hold_s)),
          card("feedback this step", fig("rollout.feedback_since_step"), " of ", fig("rollout.min_feedback_per_step"),
            progress(rollout.feedback_since_step, rollout.min_feedback_per_step))),
        h("p", { class: "status" }, show(rollout.status)),
        h("p", { class: "muted" }, `on rollback: ${show(rollout.rollback_to)} step; version ${show(rollout.version)}`
          + (rollout.step_since ? `; step since ${new Date(rollout.step_since).toLocaleString()}` : ""))) : null,
      entries.length ? table(["when", "ratio", "step", "by", "why"], entries, "history, newest first", "history")
        : note("No rollout changes yet."));
  }

  function tiersOf(data) {
    return data && data.model_distribution ? Object.keys(data.model_distribution) : ["3b", "8b"];
  }

  // Draws every block below the routing controls from one stats JSON and the samples kept so far.
  function render(newStats, newHistory) {
    stats = newStats;
    history = newHistory;
    tiers = tiersOf(stats);
    renderTraffic();
    renderLatency();
    renderRates();
    renderQuality();
    renderRollout();
  }

  return { h, fill, at, show, card, tiersOf, render };
})();
