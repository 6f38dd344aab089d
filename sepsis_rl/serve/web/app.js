// sepsis-rl clinician page: vanilla JavaScript, no framework, no build step, no outside resource.
// It talks to the API of sepsis_rl/serve/app.py (GET /v1/model, POST /v1/recommend, /v1/stay,
// /v1/what-if) and draws its charts as inline SVG, each with a table for screen readers.
// Its URLs are relative ("v1/model", "static/app.js"), so the page also works when Serve mounts
// the application under a route prefix ("/sepsis/").
"use strict";

(() => {
  // --- What the page knows beyond the API -----------------------------------------------------
  const VITAL_LABELS = {
    HR: "Heart rate",
    O2Sat: "Oxygen saturation (SpO\u2082)",
    SBP: "Systolic blood pressure",
    DBP: "Diastolic blood pressure",
    MAP: "Mean arterial pressure",
    Resp: "Respiratory rate",
    Temp: "Temperature",
    Lactate: "Lactate",
    Age: "Age",
    oxygen: "Oxygen running",
    ventilation: "Ventilation running",
    vasopressors: "Vasopressors running",
    ventilation_hours: "Hours of the current ventilation",
    vasopressor_hours: "Hours of the current vasopressors",
    stable_hours: "Hours stable off ventilation and vasopressors",
    hours: "Hours since the start of the episode",
  };
  const UNIT_DISPLAY = { degC: "\u00b0C" };
  const FLAG_UNIT = "0/1";

  // A septic patient in shock at admission: tachycardic, hypoxaemic, hypotensive
  // (MAP = DBP + (SBP - DBP) / 3), with a raised lactate.
  const EXAMPLE_PATIENT = {
    HR: 112, O2Sat: 90, SBP: 88, DBP: 52, MAP: 64, Resp: 26, Temp: 38.6, Lactate: 3.8, Age: 67,
  };

  const POLICIES = [
    { key: "learned", name: "Learned policy", color: "#0b5cad", dash: "" },
    { key: "protocol", name: "Protocol", color: "#b35900", dash: "8 4" },
    { key: "no_treatment", name: "No treatment", color: "#5f6368", dash: "2 4" },
  ];
  const PATH_VARIABLES = ["MAP", "Lactate", "HR"];

  // One colour per action, in the order of sepsis_env.ACTION_NAMES (colour-blind safe).
  const ACTION_COLORS = [
    "#e3e3e3", "#56b4e9", "#009e73", "#d55e00", "#0072b2", "#e69f00", "#cc79a7", "#222222",
  ];

  // --- State: in memory only (the token is never written to storage) --------------------------
  const state = { model: null, token: "", loading: null };

  // --- DOM helpers ----------------------------------------------------------------------------
  const $ = (id) => document.getElementById(id);
  const SVG_NS = "http://www.w3.org/2000/svg";

  /** An HTML element; string children become text nodes (server text is never parsed as HTML). */
  function h(tag, attrs = {}, ...children) {
    const el = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (value === false || value === null || value === undefined) continue;
      if (key === "class") el.className = value;
      else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
      else el.setAttribute(key, value === true ? "" : value);
    }
    el.append(...children.filter((c) => c !== null && c !== undefined));
    return el;
  }

  /** An SVG element. */
  function s(tag, attrs = {}, ...children) {
    const el = document.createElementNS(SVG_NS, tag);
    if (tag === "svg" && attrs.viewBox) el.setAttribute("width", attrs.viewBox.split(" ")[2]);
    for (const [key, value] of Object.entries(attrs)) el.setAttribute(key, value);
    el.append(...children);
    return el;
  }

  function unitOf(name) {
    const vital = state.model?.vitals.find((v) => v.name === name);
    return vital ? displayUnit(vital.unit) : "";
  }
  const displayUnit = (unit) => UNIT_DISPLAY[unit] ?? unit;
  const labelOf = (name) => VITAL_LABELS[name] ?? name;

  /** A number rounded to `digits` decimals, as text; an em dash for missing. */
  function fmt(value, digits = 1) {
    if (value === null || value === undefined || !Number.isFinite(value)) return "\u2014";
    const scale = 10 ** digits;
    return String(Math.round(value * scale) / scale);
  }
  const pct = (fraction, digits = 1) =>
    fraction === null || fraction === undefined ? "\u2014" : `${(fraction * 100).toFixed(digits)} %`;

  function announce(text) {
    $("status").textContent = text;
  }

  // --- API ------------------------------------------------------------------------------------
  class ApiError extends Error {
    constructor(status, detail) {
      super(typeof detail === "string" ? detail : `HTTP ${status}`);
      this.status = status;
      this.detail = detail;
    }
  }

  /** Call the API; `body` is a plain object (sent as JSON) or FormData. Throws ApiError. */
  async function api(method, path, body) {
    const headers = { Accept: "application/json" };
    if (state.token) headers.Authorization = `Bearer ${state.token}`;
    const init = { method, headers };
    if (body instanceof FormData) init.body = body;
    else if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (err) {
      throw new ApiError(0, `the server did not answer (${err.message}); is it still running?`);
    }
    const text = await response.text();
    let data = text;
    try {
      data = text ? JSON.parse(text) : null;
    } catch {
      // not JSON (e.g. a proxy's plain-text error): keep the text
    }
    if (!response.ok) {
      const detail = data && typeof data === "object" && "detail" in data ? data.detail : text;
      throw new ApiError(response.status, detail || response.statusText);
    }
    return data;
  }

  // --- Errors next to the fields they name ----------------------------------------------------
  function setFieldError(input, errorEl, message) {
    if (input) {
      input.setAttribute("aria-invalid", "true");
      const closed = input.closest("details");
      if (closed) closed.open = true;
    }
    errorEl.textContent = message;
    errorEl.hidden = false;
  }

  function clearErrors(container) {
    for (const el of container.querySelectorAll(".error")) {
      el.textContent = "";
      el.hidden = true;
    }
    for (const el of container.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
  }

  /** "line 4, column 1: " for a problem in an uploaded file, unless its message says so. */
  function where(item) {
    if (item.line !== null && item.line !== undefined && String(item.msg).includes(`line ${item.line}`)) {
      return "";
    }
    const parts = [];
    if (item.line !== null && item.line !== undefined) parts.push(`line ${item.line}`);
    if (item.column !== null && item.column !== undefined) parts.push(`column ${item.column}`);
    return parts.length ? `${parts.join(", ")}: ` : "";
  }

  /**
   * Show an ApiError: 422 items beside the field they name (via `fieldFor(name)` returning
   * {input, error}), everything else in the form's error box. 401 also points at the token field.
   */
  function showApiError(err, formErrorEl, fieldFor) {
    let first = null;
    const formMessages = [];
    if (err.status === 401) {
      $("access").open = true;
      setFieldError($("token"), $("token-error"),
        `This server needs an access token: paste it here and press Enter. (Server: ${detailText(err.detail)})`);
      formMessages.push("Not authorised: enter the access token at the top of the page.");
      first = $("token");
    } else if (err.status === 422 && Array.isArray(err.detail)) {
      for (const item of err.detail) {
        const target = item.field ? fieldFor(item.field) : null;
        if (target) {
          setFieldError(target.input, target.error,
            appendMessage(target.error, `${where(item)}${item.msg}`));
          first = first ?? target.input;
        } else {
          formMessages.push(`${item.field ? `${item.field}: ` : ""}${where(item)}${item.msg}`);
        }
      }
    } else if (err.status === 413) {
      formMessages.push(`Too large for the server: ${detailText(err.detail)}.`);
    } else if (err.status === 0) {
      formMessages.push(`No answer: ${detailText(err.detail)}`);
    } else {
      formMessages.push(`The server refused the request (HTTP ${err.status}): ${detailText(err.detail)}`);
    }
    if (formMessages.length) {
      setFieldError(null, formErrorEl, formMessages.join(" "));
    }
    (first ?? formErrorEl).focus?.();
    announce("There is a problem; see the messages next to the fields.");
  }

  function appendMessage(errorEl, message) {
    return errorEl.hidden || !errorEl.textContent ? message : `${errorEl.textContent}; ${message}`;
  }

  function detailText(detail) {
    if (typeof detail === "string") return detail;
    if (Array.isArray(detail)) return detail.map((d) => `${where(d)}${d.msg}`).join("; ");
    return JSON.stringify(detail);
  }

  /** Disable `button` and mark `region` busy while `task` runs. */
  async function busy(button, region, task) {
    button.disabled = true;
    region.setAttribute("aria-busy", "true");
    try {
      await task();
    } finally {
      button.disabled = false;
      region.removeAttribute("aria-busy");
    }
  }

  // --- Model description and the vitals form --------------------------------------------------
  /** Fetch the model's description and build the form from it (once at a time). */
  function loadModel() {
    state.loading ??= fetchModel().finally(() => { state.loading = null; });
    return state.loading;
  }

  async function fetchModel() {
    clearErrors($("access"));
    clearErrors($("vitals-form"));
    try {
      state.model = await api("GET", "v1/model");
    } catch (err) {
      if (!(err instanceof ApiError)) throw err;
      $("model-info").textContent = "The model's description could not be loaded.";
      $("vitals-fields").replaceChildren(
        h("p", { class: "hint" }, "The form appears once the server describes its model (see the message below)."));
      showApiError(err, $("vitals-error"), () => null);
      return;
    }
    renderModelInfo(state.model);
    buildVitalsForm(state.model.vitals);
  }

  function renderModelInfo(model) {
    const parts = [
      `Policy: ${model.algo} on ${model.env}`,
      `checkpoint ${model.checkpoint}`,
      model.commit ? `commit ${model.commit.slice(0, 12)}` : null,
      model.trained_at ? `trained ${model.trained_at}` : null,
      model.classifier ? `risk classifier ${model.classifier}` : "no risk classifier",
    ];
    $("model-info").textContent = parts.filter(Boolean).join(" \u00b7 ");
  }

  function buildVitalsForm(vitals) {
    const fields = vitals.map((vital) => {
      const id = `vital-${vital.name}`;
      const unit = displayUnit(vital.unit);
      const errorId = `${id}-error`;
      const hintId = `${id}-hint`;
      const required = vital.required
        ? h("abbr", { class: "req", title: "required" }, "*")
        : h("span", { class: "optional" }, " (optional)");
      if (vital.unit === FLAG_UNIT) {
        return h("div", { class: "field checkbox" },
          h("input", { id, name: vital.name, type: "checkbox", "aria-describedby": errorId }),
          h("label", { for: id }, labelOf(vital.name), " ", h("span", { class: "unit" }, `(${vital.name})`)),
          h("p", { id: errorId, class: "error", role: "alert", hidden: true }));
      }
      const hint = [`allowed ${fmt(vital.low, 2)} to ${fmt(vital.high, 2)} ${unit}`];
      if (vital.trained_low !== null && vital.trained_low !== undefined) {
        hint.push(`trained on ${fmt(vital.trained_low, 2)} to ${fmt(vital.trained_high, 2)} ${unit}`);
      }
      return h("div", { class: "field" },
        h("label", { for: id },
          labelOf(vital.name), " ", h("span", { class: "unit" }, `(${vital.name}, ${unit})`), " ", required),
        h("input", {
          id, name: vital.name, type: "number", step: "any", inputmode: "decimal",
          min: vital.low, max: vital.high, required: vital.required,
          "aria-required": vital.required ? "true" : "false",
          "aria-describedby": `${hintId} ${errorId}`,
        }),
        h("p", { id: hintId, class: "hint" }, hint.join("; ")),
        h("p", { id: errorId, class: "error", role: "alert", hidden: true }));
    });
    const required = fields.filter((_, i) => vitals[i].required);
    const optional = fields.filter((_, i) => !vitals[i].required);
    const context = optional.length
      ? h("details", { id: "context-fields", class: "context" },
        h("summary", {}, "Treatments running now and hour counters (optional: default none running, 0 h)"),
        h("div", { class: "vitals-grid" }, ...optional))
      : null;
    $("vitals-fields").replaceChildren(h("div", { class: "vitals-grid" }, ...required), context ?? "");
  }

  function vitalField(name) {
    const short = String(name).split(".").pop();
    const input = $(`vital-${short}`);
    return input ? { input, error: $(`vital-${short}-error`) } : null;
  }

  /** The patient object from the form, or null after marking what must be fixed. */
  function readPatient() {
    clearErrors($("vitals-form"));
    if (!state.model) {
      setFieldError(null, $("vitals-error"), "The model's description is not loaded yet; reload the page.");
      return null;
    }
    const patient = {};
    let firstBad = null;
    for (const vital of state.model.vitals) {
      const { input, error } = vitalField(vital.name);
      if (input.type === "checkbox") {
        patient[vital.name] = input.checked ? 1 : 0;
        continue;
      }
      if (input.validity.badInput) {
        setFieldError(input, error, `${labelOf(vital.name)} is not a number.`);
        firstBad = firstBad ?? input;
      } else if (input.value.trim() === "") {
        if (vital.required) {
          setFieldError(input, error, `${labelOf(vital.name)} is required (${displayUnit(vital.unit)}).`);
          firstBad = firstBad ?? input;
        }
      } else {
        patient[vital.name] = Number(input.value);
      }
    }
    if (firstBad) {
      firstBad.focus();
      announce("Some vitals need fixing; see the messages next to the fields.");
      return null;
    }
    return patient;
  }

  function fillPatient(values) {
    clearErrors($("vitals-form"));
    for (const vital of state.model?.vitals ?? []) {
      const input = $(`vital-${vital.name}`);
      const value = values[vital.name];
      if (input.type === "checkbox") input.checked = value === 1;
      else input.value = value === null || value === undefined ? "" : String(value);
    }
  }

  // --- Recommendation -------------------------------------------------------------------------
  async function onRecommend(event) {
    event.preventDefault();
    const patient = readPatient();
    if (!patient) return;
    await busy($("recommend-button"), $("vitals-form"), async () => {
      try {
        const result = await api("POST", "v1/recommend", patient);
        renderRecommendation(result);
        announce(`Recommendation: ${result.action_name}. Protocol: ${result.protocol.action_name}.`);
      } catch (err) {
        if (!(err instanceof ApiError)) throw err;
        $("result").hidden = true; // an earlier patient's answer must not stand beside the error
        showApiError(err, $("vitals-error"), vitalField);
      }
    });
  }

  function valueUnit(kind) {
    return kind === "probabilities"
      ? { label: "Probability", unit: "%", scale: 100, digits: 1 }
      : { label: "Q-value", unit: "reward points", scale: 1, digits: 2 };
  }

  function renderRecommendation(result) {
    const kind = valueUnit(result.value_kind);
    const valueText = (name) =>
      result.values[name] === undefined ? "" : ` \u00b7 ${kind.label} ${fmt(result.values[name] * kind.scale, kind.digits)} ${kind.unit}`;
    $("recommendation").replaceChildren(
      h("span", { class: "label" }, "Learned policy recommends"),
      h("span", { class: "action" }, result.action_name),
      h("span", { class: "detail" }, `action ${result.action}${valueText(result.action_name)}`));
    $("protocol-choice").replaceChildren(
      h("span", { class: "label" }, "Protocol's choice"),
      h("span", { class: "action" }, result.protocol.action_name),
      h("span", { class: "detail" }, `action ${result.protocol.action}${valueText(result.protocol.action_name)}`));
    $("agreement").textContent = result.action === result.protocol.action
      ? "The learned policy and the protocol agree."
      : "The learned policy and the protocol differ.";
    renderWarnings($("warnings"), result.warnings);
    $("values-caption").textContent = result.value_kind === "probabilities"
      ? "Probability (%) with which the learned policy picks each action; it recommends the most likely."
      : "Q-value: the expected return, in reward points (+15 discharged alive, \u221215 died, minus treatment costs), "
        + "of taking the action now and following the learned policy afterwards. Higher is better.";
    renderValuesChart(result, kind);
    renderObservation(result.observation);
    $("result").hidden = false;
    $("result-heading").focus();
  }

  function renderWarnings(list, warnings) {
    list.replaceChildren(...(warnings ?? []).map((w) => h("li", {}, w)));
    list.hidden = !warnings || warnings.length === 0;
  }

  function renderValuesChart(result, kind) {
    const names = state.model?.actions?.length ? state.model.actions : Object.keys(result.values);
    const rows = names.filter((n) => n in result.values)
      .map((name) => ({ name, value: result.values[name] * kind.scale }));
    const width = 760, labelWidth = 290, valueWidth = 230, rowHeight = 32, top = 8;
    const plotWidth = width - labelWidth - valueWidth;
    const lo = Math.min(0, ...rows.map((r) => r.value));
    const hi = Math.max(kind.unit === "%" ? 100 : 0, ...rows.map((r) => r.value));
    const x = (v) => labelWidth + ((v - lo) / (hi - lo || 1)) * plotWidth;
    const height = top + rows.length * rowHeight + 26;
    const svg = s("svg", { viewBox: `0 0 ${width} ${height}`, "aria-hidden": "true", focusable: "false" });
    rows.forEach((row, i) => {
      const y = top + i * rowHeight;
      const isLearned = row.name === result.action_name;
      const isProtocol = row.name === result.protocol.action_name;
      const marks = [isLearned ? "recommended" : null, isProtocol ? "protocol" : null].filter(Boolean);
      svg.append(
        s("text", { x: labelWidth - 8, y: y + 20, "text-anchor": "end", "font-size": "15",
          "font-weight": isLearned ? "700" : "400" }, row.name),
        s("rect", {
          x: Math.min(x(0), x(row.value)), y: y + 5, height: rowHeight - 10,
          width: Math.max(1, Math.abs(x(row.value) - x(0))),
          fill: isLearned ? "#0b5cad" : "#b8c4d3",
          stroke: isProtocol ? "#b35900" : "none", "stroke-width": isProtocol ? 3 : 0,
          "stroke-dasharray": isProtocol ? "6 3" : "",
        }),
        s("text", { x: labelWidth + plotWidth + 8, y: y + 20, "font-size": "15",
          "font-weight": isLearned ? "700" : "400" },
        `${fmt(row.value, kind.digits)} ${kind.unit === "%" ? "%" : "pts"}${marks.length ? ` \u2190 ${marks.join(", ")}` : ""}`));
    });
    const axisY = top + rows.length * rowHeight + 2;
    svg.append(
      s("line", { x1: x(0), x2: x(0), y1: top, y2: axisY, stroke: "#333", "stroke-width": 1 }),
      s("text", { x: labelWidth, y: axisY + 18, "font-size": "13" }, `${fmt(lo, kind.digits)} ${kind.unit}`),
      s("text", { x: labelWidth + plotWidth, y: axisY + 18, "font-size": "13", "text-anchor": "end" },
        `${fmt(hi, kind.digits)} ${kind.unit}`));
    $("values-chart").replaceChildren(
      svg,
      h("ul", { class: "legend", "aria-hidden": "true" },
        h("li", {}, h("span", { class: "swatch", style: "background:#0b5cad" }), "recommended by the learned policy"),
        h("li", {}, h("span", { class: "swatch", style: "background:#b8c4d3;border:2px dashed #b35900" }), "protocol's choice (dashed outline)"),
        h("li", {}, `values in ${kind.unit}${kind.unit === "%" ? "" : " (pts)"}`)));
    $("values-table").replaceChildren(
      h("caption", {}, `${kind.label} of each action (${kind.unit})`),
      h("thead", {}, h("tr", {},
        h("th", { scope: "col" }, "Action"),
        h("th", { scope: "col" }, `${kind.label} (${kind.unit})`),
        h("th", { scope: "col" }, "Recommended"),
        h("th", { scope: "col" }, "Protocol's choice"))),
      h("tbody", {}, ...rows.map((row) => h("tr", {},
        h("th", { scope: "row" }, row.name),
        h("td", {}, fmt(row.value, kind.digits)),
        h("td", {}, row.name === result.action_name ? "yes" : "no"),
        h("td", {}, row.name === result.protocol.action_name ? "yes" : "no")))));
  }

  function renderObservation(observation) {
    $("observation-table").replaceChildren(
      h("thead", {}, h("tr", {},
        h("th", { scope: "col" }, "Observation"), h("th", { scope: "col" }, "Value"),
        h("th", { scope: "col" }, "Unit"))),
      h("tbody", {}, ...Object.entries(observation ?? {}).map(([name, value]) => h("tr", {},
        h("th", { scope: "row" }, `${labelOf(name)} (${name})`),
        h("td", {}, fmt(value, 2)),
        h("td", { class: "text" }, unitOf(name))))));
  }

  // --- What-if --------------------------------------------------------------------------------
  function whatIfField(name) {
    const short = String(name).split(".").pop();
    if (short === "episodes" || short === "seed") return { input: $(short), error: $(`${short}-error`) };
    return vitalField(short);
  }

  async function onWhatIf(event) {
    event.preventDefault();
    clearErrors($("what-if-form"));
    const patient = readPatient();
    if (!patient) {
      setFieldError(null, $("what-if-error"), "Fix the patient's vitals in section 1 first.");
      return;
    }
    const numbers = {};
    for (const name of ["episodes", "seed"]) {
      const input = $(name);
      if (input.value.trim() === "" || input.validity.badInput || !Number.isInteger(Number(input.value))) {
        setFieldError(input, $(`${name}-error`), "Give a whole number.");
        input.focus();
        return;
      }
      numbers[name] = Number(input.value);
    }
    await busy($("what-if-button"), $("what-if-form"), async () => {
      announce("Simulating; this can take a few seconds.");
      try {
        const result = await api("POST", "v1/what-if", { patient, ...numbers });
        renderWhatIf(result, patient);
        announce("Simulated survival ready.");
      } catch (err) {
        if (!(err instanceof ApiError)) throw err;
        $("what-if").hidden = true;
        showApiError(err, $("what-if-error"), whatIfField);
      }
    });
  }

  function renderWhatIf(result, patient) {
    $("what-if-caveat").textContent = result.caveat;
    const given = Object.entries(patient)
      .filter(([name, value]) => !(unitOf(name) === FLAG_UNIT && value === 0))
      .map(([name, value]) => (unitOf(name) === FLAG_UNIT
        ? labelOf(name).toLowerCase() : `${name} ${fmt(value, 2)} ${unitOf(name)}`))
      .join(", ");
    $("what-if-summary").textContent =
      `${result.episodes} simulated stays per policy, each followed for up to ${result.horizon_hours} h, `
      + `starting from: ${given}.`;
    renderWarnings($("what-if-warnings"), result.warnings);
    const rows = POLICIES.filter((p) => result.policies[p.key])
      .map((p) => ({ ...p, ...result.policies[p.key] }));
    renderSurvivalChart(rows);
    $("survival-table").replaceChildren(
      h("thead", {}, h("tr", {},
        h("th", { scope: "col" }, "Policy"), h("th", { scope: "col" }, "Survival (%)"),
        h("th", { scope: "col" }, "95 % interval (%)"))),
      h("tbody", {}, ...rows.map((r) => h("tr", { "data-policy": r.key },
        h("th", { scope: "row" }, r.name),
        h("td", {}, pct(r.survival)),
        h("td", {}, `${pct(r.survival_ci[0])} to ${pct(r.survival_ci[1])}`)))));
    $("paths-legend").replaceChildren(...rows.map((p) => h("li", {},
      h("span", { class: "swatch", style: `background:${p.color}` }),
      `${p.name} (${p.dash ? (p.dash === "8 4" ? "dashed" : "dotted") : "solid"} line)`)));
    $("paths-charts").replaceChildren(...PATH_VARIABLES
      .filter((name) => rows.some((r) => r.median_path?.[name]))
      .map((name) => pathChart(name, rows)));
    $("what-if").hidden = false;
  }

  function renderSurvivalChart(rows) {
    const width = 760, labelWidth = 170, textWidth = 300, rowHeight = 36, top = 6;
    const plotWidth = width - labelWidth - textWidth;
    const x = (fraction) => labelWidth + fraction * plotWidth;
    const height = top + rows.length * rowHeight + 28;
    const svg = s("svg", { viewBox: `0 0 ${width} ${height}`, "aria-hidden": "true", focusable: "false" });
    rows.forEach((r, i) => {
      const y = top + i * rowHeight;
      const [lo, hi] = r.survival_ci;
      svg.append(
        s("text", { x: labelWidth - 8, y: y + 22, "text-anchor": "end", "font-size": "15" }, r.name),
        s("rect", { x: labelWidth, y: y + 6, width: Math.max(1, x(r.survival) - labelWidth),
          height: rowHeight - 12, fill: r.color, opacity: 0.85 }),
        s("line", { x1: x(lo), x2: x(hi), y1: y + 18, y2: y + 18, stroke: "#000", "stroke-width": 2 }),
        s("line", { x1: x(lo), x2: x(lo), y1: y + 10, y2: y + 26, stroke: "#000", "stroke-width": 2 }),
        s("line", { x1: x(hi), x2: x(hi), y1: y + 10, y2: y + 26, stroke: "#000", "stroke-width": 2 }),
        s("text", { x: labelWidth + plotWidth + 10, y: y + 22, "font-size": "15" },
          `${pct(r.survival)} (95 % CI ${pct(r.survival_ci[0])} to ${pct(r.survival_ci[1])})`));
    });
    const axisY = top + rows.length * rowHeight + 4;
    for (const tick of [0, 0.25, 0.5, 0.75, 1]) {
      svg.append(
        s("line", { x1: x(tick), x2: x(tick), y1: axisY - 4, y2: axisY, stroke: "#333" }),
        s("text", { x: x(tick), y: axisY + 16, "font-size": "12", "text-anchor": "middle" }, `${tick * 100} %`));
    }
    svg.append(s("line", { x1: x(0), x2: x(1), y1: axisY, y2: axisY, stroke: "#333" }));
    $("survival-chart").replaceChildren(svg);
  }

  /** One small line chart of a variable's median course under each policy, with its table. */
  function pathChart(name, rows) {
    const unit = unitOf(name) || { MAP: "mmHg", Lactate: "mmol/L", HR: "bpm" }[name] || "";
    const width = 380, height = 230, left = 52, right = 10, top = 12, bottom = 40;
    const series = rows.filter((r) => r.median_path?.[name]).map((r) => ({
      ...r, xs: r.median_path.hour, ys: r.median_path[name],
    }));
    const allX = series.flatMap((p) => p.xs), allY = series.flatMap((p) => p.ys).filter(Number.isFinite);
    const [x0, x1] = [Math.min(...allX), Math.max(...allX)];
    let [y0, y1] = [Math.min(...allY), Math.max(...allY)];
    if (y0 === y1) { y0 -= 1; y1 += 1; }
    const pad = (y1 - y0) * 0.08;
    y0 -= pad; y1 += pad;
    const x = (v) => left + ((v - x0) / (x1 - x0 || 1)) * (width - left - right);
    const y = (v) => top + (1 - (v - y0) / (y1 - y0)) * (height - top - bottom);
    const svg = s("svg", { viewBox: `0 0 ${width} ${height}`, "aria-hidden": "true", focusable: "false" });
    svg.append(
      s("line", { x1: left, x2: width - right, y1: height - bottom, y2: height - bottom, stroke: "#333" }),
      s("line", { x1: left, x2: left, y1: top, y2: height - bottom, stroke: "#333" }),
      s("text", { x: (left + width - right) / 2, y: height - 6, "font-size": "12", "text-anchor": "middle" },
        "hours since the start (h)"));
    for (const tick of [y0 + pad, (y0 + y1) / 2, y1 - pad]) {
      svg.append(s("text", { x: left - 4, y: y(tick) + 4, "font-size": "13", "text-anchor": "end" }, fmt(tick, 1)));
    }
    for (const tick of [x0, (x0 + x1) / 2, x1]) {
      svg.append(s("text", { x: x(tick), y: height - bottom + 14, "font-size": "13", "text-anchor": "middle" }, fmt(tick, 0)));
    }
    for (const p of series) {
      const points = p.xs.map((xv, i) => (Number.isFinite(p.ys[i]) ? `${x(xv)},${y(p.ys[i])}` : null))
        .filter(Boolean).join(" ");
      svg.append(s("polyline", { points, fill: "none", stroke: p.color, "stroke-width": 2.5,
        "stroke-dasharray": p.dash }));
    }
    const hours = [...new Set(allX)].sort((a, b) => a - b);
    const table = h("table", {},
      h("caption", {}, `Median ${labelOf(name)} (${unit}) by hour`),
      h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Hour (h)"),
        ...series.map((p) => h("th", { scope: "col" }, `${p.name} (${unit})`)))),
      h("tbody", {}, ...hours.map((hour) => h("tr", {},
        h("th", { scope: "row" }, fmt(hour, 1)),
        ...series.map((p) => h("td", {}, fmt(p.ys[p.xs.indexOf(hour)], 2)))))));
    return h("figure", { class: "path-chart", "data-variable": name },
      h("figcaption", {}, h("strong", {}, `${labelOf(name)} (${unit})`)),
      svg,
      h("div", { class: "sr-only" }, table));
  }

  // --- A stay's timeline ----------------------------------------------------------------------
  async function onStay(event) {
    event.preventDefault();
    clearErrors($("stay-form"));
    const input = $("psv-file");
    const file = input.files[0];
    if (!file) {
      setFieldError(input, $("psv-file-error"), "Choose a .psv file first.");
      input.focus();
      return;
    }
    const form = new FormData();
    form.append("file", file, file.name);
    await busy($("stay-button"), $("stay-form"), async () => {
      try {
        const result = await api("POST", "v1/stay", form);
        renderTimeline(result);
        announce(`Timeline ready: ${result.hours.length} hours.`);
      } catch (err) {
        if (!(err instanceof ApiError)) throw err;
        // Every 422 of an upload is about the file (its line and column say where).
        $("timeline").hidden = true;
        showApiError(err, $("stay-error"), () => ({ input, error: $("psv-file-error") }));
      }
    });
  }

  function actionColor(index) {
    return index === null || index === undefined ? "#ffffff" : ACTION_COLORS[index % ACTION_COLORS.length];
  }

  function renderTimeline(result) {
    const hours = result.hours;
    const first = hours.length ? hours[0].hour : 0, last = hours.length ? hours[hours.length - 1].hour : 0;
    $("timeline-heading").textContent =
      `Timeline of patient ${result.patient}: ${hours.length} hours (hour ${first} to ${last})`;
    $("stay-classifier-note").textContent =
      "No sepsis-risk classifier is loaded on the server: risk is not shown.";
    $("stay-classifier-note").hidden = Boolean(result.classifier);
    // Missing values carried forward, hours without a decision: listed, open when they are few.
    const notes = result.warnings ?? [];
    renderWarnings($("stay-warnings"), notes);
    $("stay-notes-summary").textContent =
      `${notes.length} note${notes.length === 1 ? "" : "s"} on how the hours were read (missing values, hours without a decision)`;
    $("stay-notes").hidden = notes.length === 0;
    $("stay-notes").open = notes.length > 0 && notes.length <= 3;
    renderTimelineChart(result);
    renderTimelineTable(result);
    $("timeline").hidden = false;
  }

  function renderTimelineChart(result) {
    const hours = result.hours;
    const width = 900, left = 120, right = 16, riskTop = 14, riskHeight = result.classifier ? 130 : 0;
    const stripTop = riskTop + riskHeight + (result.classifier ? 26 : 0), stripHeight = 26;
    const height = stripTop + 2 * stripHeight + 50;
    const hs = hours.map((r) => r.hour);
    const h0 = Math.min(...hs), h1 = Math.max(...hs) + 1;
    const x = (hour) => left + ((hour - h0) / (h1 - h0 || 1)) * (width - left - right);
    const cell = (width - left - right) / Math.max(1, h1 - h0);
    const svg = s("svg", { viewBox: `0 0 ${width} ${height}`, "aria-hidden": "true", focusable: "false" });
    if (result.classifier) {
      const y = (risk) => riskTop + (1 - risk) * riskHeight;
      for (const tick of [0, 0.5, 1]) {
        svg.append(
          s("line", { x1: left, x2: width - right, y1: y(tick), y2: y(tick), stroke: "#ddd" }),
          s("text", { x: left - 6, y: y(tick) + 4, "font-size": "12", "text-anchor": "end" }, `${tick * 100} %`));
      }
      svg.append(s("text", { x: 4, y: riskTop + riskHeight / 2, "font-size": "13" }, "Sepsis risk"));
      let segment = [];
      const flush = () => {
        if (segment.length) svg.append(s("polyline", { points: segment.join(" "), fill: "none", stroke: "#b00020", "stroke-width": 2 }));
        segment = [];
      };
      for (const row of hours) {
        if (row.risk === null || row.risk === undefined) { flush(); continue; }
        segment.push(`${x(row.hour) + cell / 2},${y(row.risk)}`);
      }
      flush();
    }
    const strips = [["Learned policy", "action"], ["Protocol", "protocol_action"]];
    strips.forEach(([label, key], i) => {
      const y = stripTop + i * (stripHeight + 4);
      svg.append(s("text", { x: 4, y: y + 18, "font-size": "13" }, label));
      for (const row of hours) {
        const action = row[key];
        const rect = s("rect", { x: x(row.hour), y, width: Math.max(1, cell - 0.5), height: stripHeight,
          fill: actionColor(action), stroke: action === null || action === undefined ? "#bbb" : "none" });
        rect.append(s("title", {}, `hour ${row.hour}: ${row[`${key}_name`] ?? "no decision"}`));
        svg.append(rect);
      }
    });
    const axisY = stripTop + 2 * (stripHeight + 4) + 4;
    const step = Math.max(1, Math.ceil((h1 - h0) / 12));
    for (let hour = h0; hour < h1; hour += step) {
      svg.append(s("text", { x: x(hour) + cell / 2, y: axisY + 12, "font-size": "13", "text-anchor": "middle" }, String(hour)));
    }
    svg.append(s("text", { x: (left + width) / 2, y: axisY + 32, "font-size": "12", "text-anchor": "middle" }, "hour of the stay (h)"));
    const used = [...new Set(hours.flatMap((r) => [r.action, r.protocol_action]).filter((a) => a !== null && a !== undefined))].sort((a, b) => a - b);
    const nameOf = (a) => state.model?.actions?.[a] ?? hours.find((r) => r.action === a)?.action_name
      ?? hours.find((r) => r.protocol_action === a)?.protocol_action_name ?? `action ${a}`;
    const undecided = hours.some((r) => r.action === null || r.protocol_action === null);
    $("timeline-chart").replaceChildren(svg, h("ul", { class: "legend", "aria-hidden": "true" },
      ...used.map((a) => h("li", {}, h("span", { class: "swatch", style: `background:${actionColor(a)}` }), nameOf(a))),
      undecided ? h("li", {}, h("span", { class: "swatch", style: "background:#ffffff" }), "no decision (see the notes)") : null));
  }

  function renderTimelineTable(result) {
    const hours = result.hours;
    const present = new Set(hours.flatMap((r) => Object.keys(r.vitals ?? {})));
    const order = (state.model?.vitals ?? []).map((v) => v.name).filter((n) => present.has(n));
    const names = [...order, ...[...present].filter((n) => !order.includes(n))];
    const header = h("tr", {},
      h("th", { scope: "col" }, "Hour (h)"),
      h("th", { scope: "col" }, "Sepsis risk (%)"),
      h("th", { scope: "col", class: "text" }, "Learned policy"),
      h("th", { scope: "col", class: "text" }, "Protocol"),
      ...names.map((n) => h("th", { scope: "col" }, `${n}${unitOf(n) ? ` (${unitOf(n)})` : ""}`)),
      h("th", { scope: "col" }, h("span", { class: "sr-only" }, "Actions")));
    const body = hours.map((row) => {
      const differs = row.action !== null && row.protocol_action !== null && row.action !== row.protocol_action;
      return h("tr", { class: differs ? "differs" : null, "data-hour": row.hour },
        h("th", { scope: "row" }, String(row.hour)),
        h("td", {}, result.classifier ? pct(row.risk) : h("span", { class: "missing", title: "no classifier" }, "\u2014")),
        h("td", { class: "text learned-cell" }, row.action_name ?? h("span", { class: "missing" }, "\u2014")),
        h("td", { class: "text" }, row.protocol_action_name ?? h("span", { class: "missing" }, "\u2014")),
        ...names.map((n) => {
          const value = row.vitals?.[n];
          return value === null || value === undefined
            ? h("td", {}, h("span", { class: "missing", title: "not measured this hour" }, "\u2014"))
            : h("td", {}, fmt(value, 2));
        }),
        h("td", {}, h("button", {
          type: "button", class: "small", "aria-label": `Use the vitals of hour ${row.hour} in the patient form`,
          onclick: () => useHour(row),
        }, "Use vitals")));
    });
    $("timeline-table").replaceChildren(
      h("caption", {}, "One row per hour; \u2014 means not measured or no decision. Bold: the learned policy differs from the protocol."),
      h("thead", {}, header), h("tbody", {}, ...body));
  }

  function useHour(row) {
    fillPatient(row.vitals ?? {});
    $("patient-heading").focus();
    announce(`The vitals of hour ${row.hour} are in the patient form; fill any missing ones and press Enter.`);
  }

  // --- Wiring ---------------------------------------------------------------------------------
  function init() {
    $("token").addEventListener("input", (event) => {
      state.token = event.target.value.trim();
    });
    const tokenEntered = (event) => {
      event.preventDefault();
      clearErrors($("access"));
      if (!state.model) loadModel();
    };
    $("token").addEventListener("change", tokenEntered);
    $("token-form").addEventListener("submit", tokenEntered);
    $("vitals-form").addEventListener("submit", onRecommend);
    $("what-if-form").addEventListener("submit", onWhatIf);
    $("stay-form").addEventListener("submit", onStay);
    $("load-example").addEventListener("click", () => {
      fillPatient(EXAMPLE_PATIENT);
      announce("Example patient loaded; press Recommend.");
    });
    $("clear-vitals").addEventListener("click", () => fillPatient({}));
    loadModel();
  }

  document.addEventListener("DOMContentLoaded", init);
})();
