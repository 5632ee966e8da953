"use strict";
// The routeproxy dashboard: polls the stats and config endpoints every few seconds, keeps the samples the charts
// need, shows where the figures come from and the routing in force, and sends the operator's changes.
(() => {
  const REFRESH_MS = 3000;
  const HISTORY_POINTS = 600;
  const STORE = { client: "routeproxy.clientKey", admin: "routeproxy.adminToken", history: "routeproxy.history" };
  const { h, fill, at, show, card, tiersOf, render } = window.routeproxyBlocks;
  const $ = (id) => document.getElementById(id);
  let stats = null;
  let config = null;
  let formDirty = false;
  let stepChosen = false;
  let history = loadHistory();

  const cfg = (path) => h("span", { class: "fig", "data-config": path }, show(at(config, path)));

  // -- the endpoints ------------------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, body, path) {
      super(body?.error?.message || `${path} answered ${status}`);
      this.status = status;
    }
  }

  function secret(which) {
    const input = $(which === "admin" ? "admin-token" : "client-key");
    return input.value.trim() || sessionStorage.getItem(STORE[which]) || "";
  }

  async function call(path, method = "GET", body = undefined) {
    const token = secret(method === "GET" ? "client" : "admin");
    const headers = token ? { Authorization: `Bearer ${token}` } : {};
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(path, { method, headers, cache: "no-store",
      body: body === undefined ? undefined : JSON.stringify(body) });
    const parsed = await response.json().catch(() => null);
    if (!response.ok) throw new ApiError(response.status, parsed, path);
    return parsed;
  }

  function problem(error) {
    const box = $("problem");
    if (!error) {
      box.hidden = true;
      return;
    }
    box.hidden = false;
    box.textContent = error instanceof ApiError
      ? (error.status === 401 ? `${error.message} (enter the client key above)` : error.message)
      : `the proxy does not answer (${error.message})`;
  }

  // -- history kept across refreshes (and reloads of this tab) -----------------------------------------------

  function loadHistory() {
    try {
      const saved = JSON.parse(sessionStorage.getItem(STORE.history) || "[]");
      return Array.isArray(saved) ? saved : [];
    } catch {
      return [];
    }
  }

  function remember() {
    const point = { t: Date.now(), period: stats.period, count: {}, latency: {}, ttfb: {} };
    for (const tier of tiersOf(stats)) {
      point.count[tier] = at(stats, `model_distribution.${tier}.count`) ?? 0;
      point.latency[tier] = point.count[tier] ? at(stats, `latency_percentiles_ms.${tier}`) : null;
      point.ttfb[tier] = at(stats, `streams.${tier}`) ? at(stats, `ttfb_percentiles_ms.${tier}`) : null;
    }
    history.push(point);
    history = history.slice(-HISTORY_POINTS);
    try {
      sessionStorage.setItem(STORE.history, JSON.stringify(history));
    } catch {
      history = history.slice(-HISTORY_POINTS / 2); // storage full: keep the newer half in the page only
    }
  }

  // -- where the figures come from, and the routing in force ------------------------------------------------

  function renderView() {
    const replicas = stats.replicas || [];
    const names = replicas.map((name) => h("span", { class: "replica" }, name));
    const view = $("view");
    view.dataset.store = stats.store || "";
    const since = stats.counting_since ? `, counting since ${new Date(stats.counting_since).toLocaleString()}` : "";
    if (stats.store === "redis") {
      fill(view, `Shared view from Redis, period ${stats.period}${since}: ${replicas.length} replica(s) `
        + "report: ", ...names.flatMap((name, index) => (index ? [", ", name] : [name])),
        stats.stale ? h("strong", { class: "stale" }, " STALE: Redis did not answer; these are one replica's numbers")
          : "");
    } else {
      fill(view, `In-memory counters: these are this process's own numbers (period ${stats.period}${since}`
        + "); with several replicas or workers each counts its own. Set ROUTEPROXY_REDIS_URL for one shared view. Replica: ",
        ...names);
    }
  }

  function renderRouting() {
    const rollout = config.rollout;
    const driving = Boolean(rollout && rollout.enabled && !rollout.paused);
    const hasMode = "routing_mode" in config;
    const configured = config.configured || {};
    fill($("routing-now"),
      card("routing", cfg("enable_model_routing")),
      card(`A/B ratio (MEDIUM to ${tiersOf(stats)[0]})`, cfg("ab_test_ratio")),
      hasMode ? card("mode", cfg("routing_mode")) : null,
      rollout && rollout.enabled ? card("rollout step", cfg("rollout.step_index"),
        rollout.paused ? h("span", { class: "badge verdict-review" }, "paused") : "") : null,
      h("p", { class: "muted" }, `configured: ratio ${show(configured.ab_test_ratio)}, routing `
        + `${show(configured.enable_model_routing)}${hasMode ? `, mode ${show(configured.routing_mode)}` : ""}; `
        + "changes made here are shared by every replica and kept in the shared store"));
    $("mode-control").hidden = !hasMode;
    for (const id of ["ratio", "ratio-range"]) $(id).disabled = driving;
    $("ratio-note").textContent = driving
      ? "the rollout controller sets the ratio: pause it to set one by hand, or move its step below" : "";
    if (!formDirty) {
      $("routing-enabled").checked = Boolean(config.enable_model_routing);
      $("ratio").value = $("ratio-range").value = config.ab_test_ratio;
      if (hasMode) $("routing-mode").value = config.routing_mode;
    }
    const schedule = at(stats, "rollout.schedule");
    $("rollout-form").hidden = !(rollout && rollout.enabled && Array.isArray(schedule));
    if (!$("rollout-form").hidden) {
      const select = $("rollout-step");
      const wanted = [-1, ...schedule.keys()].map(String);
      if ([...select.options].map((option) => option.value).join() !== wanted.join()) {
        select.replaceChildren(...wanted.map((step) => h("option", { value: step },
          step === "-1" ? "-1 (ratio 0)" : `${step} (ratio ${schedule[Number(step)]})`)));
      }
      if (!stepChosen) select.value = String(stats.rollout.step_index ?? -1); // follows the controller until picked
    }
  }

  async function refresh() {
    try {
      [stats, config] = await Promise.all([call("v1/model-routing/stats"), call("v1/model-routing/config")]);
    } catch (error) {
      problem(error);
      return;
    }
    problem(null);
    remember();
    renderView();
    renderRouting();
    render(stats, history);
    $("refreshed").textContent = `updated ${new Date().toTimeString().slice(0, 8)}, every ${REFRESH_MS / 1000} s`;
  }

  function loop() {
    refresh().finally(() => setTimeout(loop, REFRESH_MS));
  }

  // -- controls -----------------------------------------------------------------------------------------------

  function say(text, ok) {
    const box = $("routing-message");
    box.textContent = text;
    box.className = `message ${ok ? "ok" : "error"}`;
  }

  async function change(body, done) {
    try {
      await call("v1/model-routing/config", "PUT", body);
    } catch (error) {
      say(error instanceof ApiError && error.status === 401 ? `refused: ${error.message} (enter the admin token above)`
        : `refused: ${error.message}`, false);
      return;
    }
    if ($("admin-token").value.trim()) sessionStorage.setItem(STORE.admin, $("admin-token").value.trim());
    formDirty = false;
    stepChosen = false;
    say(done, true);
    await refresh();
  }

  function wire() {
    for (const [which, id] of [["client", "client-key"], ["admin", "admin-token"]]) {
      $(id).value = sessionStorage.getItem(STORE[which]) || "";
    }
    $("access").addEventListener("submit", (event) => {
      event.preventDefault();
      for (const [which, id] of [["client", "client-key"], ["admin", "admin-token"]]) {
        const value = $(id).value.trim();
        if (value) sessionStorage.setItem(STORE[which], value);
        else sessionStorage.removeItem(STORE[which]);
      }
      refresh();
    });
    $("forget-keys").addEventListener("click", () => {
      sessionStorage.removeItem(STORE.client);
      sessionStorage.removeItem(STORE.admin);
      $("client-key").value = $("admin-token").value = "";
    });
    $("rollout-step").addEventListener("input", () => {
      stepChosen = true;
    });
    $("ratio-range").addEventListener("input", () => {
      $("ratio").value = $("ratio-range").value;
      formDirty = true;
    });
    for (const id of ["ratio", "routing-enabled", "routing-mode"]) {
      $(id).addEventListener("input", () => {
        if (id === "ratio") $("ratio-range").value = $("ratio").value;
        formDirty = true;
      });
    }
    $("routing-form").addEventListener("submit", (event) => {
      event.preventDefault();
      if (!config) return;
      const body = {};
      const enabled = $("routing-enabled").checked;
      if (enabled !== config.enable_model_routing) body.enable_model_routing = enabled;
      const ratio = Number($("ratio").value);
      if (!$("ratio").disabled && ratio !== config.ab_test_ratio) {
        if (!($("ratio").value !== "" && ratio >= 0 && ratio <= 1)) {
          say("the ratio must be a number from 0 to 1", false);
          return;
        }
        body.ab_test_ratio = ratio;
      }
      if (!$("mode-control").hidden && $("routing-mode").value !== config.routing_mode) {
        body.routing_mode = $("routing-mode").value;
      }
      if (!Object.keys(body).length) {
        say("nothing to change", true);
        return;
      }
      change(body, `applied: ${Object.entries(body).map(([key, value]) => `${key} ${value}`).join(", ")}`);
    });
    const why = () => $("rollout-why").value.trim() || undefined;
    $("rollout-pause").addEventListener("click", () => change({ rollout: { paused: true, why: why() } },
      "rollout paused"));
    $("rollout-resume").addEventListener("click", () => change({ rollout: { paused: false, why: why() } },
      "rollout resumed"));
    $("rollout-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const step = Number($("rollout-step").value);
      change({ rollout: { step, why: why() } }, `rollout moved to step ${step}`);
    });
  }

  wire();
  loop();
})();
