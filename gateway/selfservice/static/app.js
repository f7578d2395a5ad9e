// The API keys page. A new key's plaintext lives only in the reveal field's value
// until "Done": never in a URL, localStorage, sessionStorage, a cookie or the title.

const base = document.body.dataset.base;
const api = `${base}/v1`;
const loginUrl = document.body.dataset.loginUrl;
const $ = (id) => document.getElementById(id);

const FIGMA_PRESET = ["projects:read", "projects:write", "actor_tokens:create"];
const GROUPS = { me: "Account", organizations: "Organizations", projects: "Projects" };
const dateFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium" });
const dateTimeFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });

const state = { session: null, view: "active", keys: [], expiry: null };

class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || `request failed (${status})`);
    this.status = status;
    this.problem = problem;
  }
}

async function call(method, path, body) {
  const init = { method, credentials: "same-origin", cache: "no-store", headers: {} };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(api + path, init);
  if (response.status === 204) return null;
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    if (response.status === 401 && state.session) showSignedOut();
    throw new ApiError(response.status, data);
  }
  return data;
}

// ---- announcements and errors -------------------------------------------------

function announce(text) {
  const live = $("live");
  live.textContent = "";
  // A fresh text node after a tick makes screen readers announce repeats too.
  setTimeout(() => { live.textContent = text; }, 50);
}

function showAlert(text) {
  const alert = $("alert");
  alert.textContent = text;
  alert.hidden = !text;
}

function clearFieldErrors() {
  for (const el of document.querySelectorAll(".field-error")) {
    el.hidden = true;
    el.textContent = "";
  }
  for (const el of document.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
}

function focusFirstError() {
  // The first visible error in page order; a group (the scopes) has no input of
  // its own, so its first checkbox takes the focus.
  const box = [...document.querySelectorAll(".field-error")].find((e) => !e.hidden);
  if (!box) return;
  const field = box.closest(".field") || box.parentElement;
  const target = field.querySelector("input:not([type=hidden]), select, textarea") || $("name");
  // The field itself in view, not only its message: a scope list is taller than a screen.
  target.focus({ preventScroll: true });
  target.scrollIntoView({ block: "center" });
}

function fieldError(field, message) {
  const target = { name: "name", description: "description", scopes: "scopes",
    expires_in_days: "expiry", expires_at: "expiry", never: "expiry" }[field.split("[")[0]];
  const box = target && $(`${target}-error`);
  if (!box) return false;
  box.textContent = message;
  box.hidden = false;
  const input = { name: $("name"), description: $("description"), expiry: $("expiry") }[target];
  if (input) input.setAttribute("aria-invalid", "true");
  return true;
}

// ---- formatting ---------------------------------------------------------------

function formatDate(iso, fallback) {
  return iso ? dateFormat.format(new Date(iso)) : fallback;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "text") node.textContent = value;
    else node.setAttribute(name, value);
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

// ---- signed-in state ----------------------------------------------------------

function showSignedOut() {
  state.session = null;
  $("loading").hidden = true;
  $("app").hidden = true;
  $("who").textContent = "";
  $("signed-out").hidden = false;
  const link = $("sign-in");
  if (loginUrl) {
    const url = new URL(loginUrl, location.href);
    url.searchParams.set("return_to", location.pathname);
    link.href = url.toString();
  } else {
    link.replaceWith(el("p", { class: "hint", text: "Sign in to the application, then reload this page." }));
  }
}

async function start() {
  try {
    state.session = await call("GET", "/session");
  } catch (error) {
    if (error.status === 401) return showSignedOut();
    $("loading").hidden = true;
    return showAlert(`The page could not load: ${error.message}`);
  }
  $("loading").hidden = true;
  $("who").textContent = `Signed in as ${state.session.user.name}`;
  buildScopes(state.session.scopes);
  buildExpiry(state.session.expiry_days);
  $("app").hidden = false;
  await loadKeys();
}

// ---- the create form ----------------------------------------------------------

function buildScopes(scopes) {
  const container = $("scope-groups");
  const groups = new Map();
  for (const scope of scopes) {
    const prefix = scope.name.split(":")[0];
    const title = GROUPS[prefix] || "Other";
    if (!groups.has(title)) groups.set(title, []);
    groups.get(title).push(scope);
  }
  for (const [title, members] of groups) {
    const list = el("ul", { class: "scope-list" });
    for (const scope of members) {
      const id = `scope-${scope.name.replace(/[^a-z0-9]/gi, "-")}`;
      const box = el("input", { type: "checkbox", id, value: scope.name, name: "scopes" });
      const label = el("label", { for: id },
        el("code", { class: "scope-name", text: scope.name }),
        scope.description && el("span", { class: "scope-description", text: scope.description }),
        scope.implies.length && el("span", { class: "scope-implies",
          text: `Includes ${scope.implies.join(", ")}` }));
      list.append(el("li", { class: "scope" }, box, label));
    }
    container.append(el("div", { class: "scope-group", role: "group", "aria-label": title },
      el("h3", { class: "scope-group-title", text: title }), list));
  }
  const known = new Set(scopes.map((s) => s.name));
  const preset = $("figma-preset");
  if (!FIGMA_PRESET.every((name) => known.has(name))) preset.parentElement.hidden = true;
  preset.addEventListener("click", () => {
    for (const box of container.querySelectorAll("input[type=checkbox]")) {
      box.checked = FIGMA_PRESET.includes(box.value);
    }
    announce("Figma plugin scopes selected: projects:read, projects:write, actor_tokens:create.");
  });
}

function addDays(days) {
  const date = new Date();
  date.setDate(date.getDate() + days);
  return date;
}

function isoDate(date) {
  const pad = (n) => String(n).padStart(2, "0");
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}`;
}

function buildExpiry(expiry) {
  const select = $("expiry");
  const presets = [...new Set([...expiry.presets, expiry.default])].sort((a, b) => a - b);
  for (const days of presets) {
    const option = el("option", { value: String(days), text: `${days} days` });
    // defaultSelected (the attribute), so that form.reset() comes back to it.
    if (days === expiry.default) option.defaultSelected = option.selected = true;
    select.append(option);
  }
  select.append(el("option", { value: "custom", text: "Custom date…" }));
  if (expiry.allow_never) select.append(el("option", { value: "never", text: "No expiration" }));
  const custom = $("custom-date");
  custom.min = isoDate(addDays(1));
  custom.max = isoDate(addDays(expiry.max));
  custom.defaultValue = custom.value = isoDate(addDays(expiry.default));
  state.expiry = expiry;
  select.addEventListener("change", updateExpiry);
  custom.addEventListener("input", updateExpiry);
  updateExpiry();
}

function chosenExpiry() {
  const value = $("expiry").value;
  if (value === "never") return { body: { never: true }, date: null };
  if (value === "custom") {
    const custom = $("custom-date");
    const picked = custom.value;
    if (!picked || picked < custom.min || picked > custom.max) return { body: null, date: null };
    // The end of the chosen day, in the person's own time zone.
    const date = new Date(`${picked}T23:59:00`);
    return { body: { expires_at: date.toISOString() }, date };
  }
  const days = Number(value);
  return { body: { expires_in_days: days }, date: addDays(days) };
}

function updateExpiry() {
  $("custom-date").hidden = $("expiry").value !== "custom";
  const { body, date } = chosenExpiry();
  let text;
  if (body && body.never) text = "The key will never expire. Rotate it regularly.";
  else if (date) text = `The key will expire on ${dateFormat.format(date)}.`;
  else {
    const max = state.expiry ? state.expiry.max : 365;
    text = `Choose a date from tomorrow to ${max} days from now.`;
  }
  const policy = state.expiry && state.expiry.policy_max;
  // Say why longer expiries are not offered: the key policy, not the page.
  if (policy) text += ` Keys must expire within ${policy} days (key policy).`;
  $("expiry-result").textContent = text;
}

function openForm() {
  $("create-panel").hidden = false;
  $("new-key").setAttribute("aria-expanded", "true");
  $("name").focus();
}

function closeForm() {
  $("create-panel").hidden = true;
  $("create-panel").reset();
  clearFieldErrors();
  updateExpiry();
  $("new-key").setAttribute("aria-expanded", "false");
}

async function submitCreate(event) {
  event.preventDefault();
  clearFieldErrors();
  showAlert("");
  const name = $("name").value.trim();
  const scopes = [...document.querySelectorAll("#scope-groups input:checked")].map((b) => b.value);
  const { body: expiry } = chosenExpiry();
  let invalid = false;
  if (!name) invalid = fieldError("name", "Give the key a name.");
  if (!scopes.length) invalid = fieldError("scopes", "Choose at least one scope.") || invalid;
  if (!expiry) invalid = fieldError("expires_at", "Choose an expiration date.") || invalid;
  if (invalid) {
    announce("The key was not created: check the highlighted fields.");
    focusFirstError();
    return;
  }
  const description = $("description").value.trim();
  const button = $("create");
  button.disabled = true;
  try {
    const created = await call("POST", "/keys", {
      name, scopes, ...expiry, ...(description ? { description } : {}),
    });
    closeForm();
    reveal(created, `Key “${created.name}” created.`);
    await loadKeys();
  } catch (error) {
    reportFailure("The key was not created", error);
  } finally {
    button.disabled = false;
  }
}

function reportFailure(what, error) {
  const errors = (error.problem && error.problem.errors) || [];
  const placed = errors.filter((e) => fieldError(e.field, e.message));
  if (!placed.length || placed.length < errors.length) showAlert(`${what}: ${error.message}`);
  if (placed.length) focusFirstError();
  announce(`${what}: ${error.message}`);
}

// ---- the one-time reveal ------------------------------------------------------

function reveal(created, headline) {
  const field = $("reveal-key");
  field.value = created.key;
  $("reveal").hidden = false;
  $("new-key").disabled = true;
  field.focus();
  field.select();
  announce(`${headline} Copy it now: it will not be shown again.`);
}

async function copyKey() {
  const field = $("reveal-key");
  try {
    await navigator.clipboard.writeText(field.value);
  } catch {
    field.select();
    document.execCommand("copy");
  }
  $("copy").textContent = "Copied";
  announce("Key copied to the clipboard.");
}

function dismissReveal() {
  $("reveal-key").value = "";
  $("reveal").hidden = true;
  $("copy").textContent = "Copy";
  $("new-key").disabled = false;
  $("new-key").focus();
  announce("The key is no longer shown.");
}

// ---- the list -----------------------------------------------------------------

async function loadKeys() {
  try {
    const data = await call("GET", `/keys?status=${state.view}`);
    state.keys = data.keys;
    renderPool(data.credits);
    renderKeys();
  } catch (error) {
    showAlert(`Your keys could not be loaded: ${error.message}`);
  }
}

// Your credit pool: what every key without credits of its own spends.
function renderPool(credits) {
  const pool = $("pool");
  pool.hidden = !credits;
  if (!credits) return;
  const parts = [el("strong", { text: `${countFormat.format(credits.remaining)} credits` }),
    document.createTextNode(" left, shared by your keys")];
  const refill = credits.refill;
  if (refill) {
    const when = refill.interval === "day" ? "every day" : `on day ${refill.day} of each month`;
    parts.push(document.createTextNode(
      ` · refilled to ${countFormat.format(refill.amount)} ${when} (00:00 UTC)`));
  }
  pool.replaceChildren(...parts);
}

function cell(label, ...content) {
  return el("td", { "data-label": label }, ...content);
}

const SOON_DAYS = 7;

function shownStatus(key) {
  return key.status === "active" && !key.enabled ? "disabled" : key.status;
}

function expiresCell(key) {
  const expires = cell("Expires", document.createTextNode(formatDate(key.expires_at, "Never")));
  const left = key.expires_at ? new Date(key.expires_at) - Date.now() : Infinity;
  if (key.status === "active" && left < SOON_DAYS * 86400 * 1000) {
    expires.append(el("span", { class: "soon", text: "expires soon" }));
  }
  return expires;
}

// ---- usage --------------------------------------------------------------------

const countFormat = new Intl.NumberFormat();
const dayFormat = new Intl.DateTimeFormat(undefined, { month: "short", day: "numeric", timeZone: "UTC" });
const SVG = "http://www.w3.org/2000/svg";

function usageCell(key) {
  const last = key.last_used_at ? dateTimeFormat.format(new Date(key.last_used_at)) : "Never used";
  // Where from, on a line of its own: an IPv6 address is long.
  const where = key.last_used_at && key.last_used_address
    ? el("span", { class: "last-address", text: `from ${key.last_used_address}` })
    : document.createTextNode("");
  const total = key.requests_30_days || 0;
  const label = `${countFormat.format(total)} request${total === 1 ? "" : "s"} in 30 days`;
  return cell("Last used", document.createTextNode(last), where,
    el("button", { class: "link usage-toggle", type: "button", "data-action": "usage",
      "data-id": key.id, "aria-expanded": "false", "aria-controls": `usage-${key.id}`,
      "aria-label": `${label}: show the daily chart for key ${key.name}`, text: label }));
}

async function toggleUsage(key, button) {
  const open = document.getElementById(`usage-${key.id}`);
  if (open) {
    open.remove();
    button.setAttribute("aria-expanded", "false");
    return;
  }
  let data;
  let seen;
  try {
    const id = encodeURIComponent(key.id);
    [data, seen] = await Promise.all([call("GET", `/keys/${id}/usage?granularity=day`),
      call("GET", `/keys/${id}/networks`)]);
  } catch (error) {
    reportFailure("The usage could not be loaded", error);
    return;
  }
  const owner = button.closest("tr");
  const room = owner.getBoundingClientRect().width - 32;  // the row, less the cell's padding
  const row = el("tr", { id: `usage-${key.id}`, class: "usage-row" },
    el("td", { colspan: "8" }, usageFigure(key, data.buckets, room), networksList(seen.networks)));
  owner.after(row);
  button.setAttribute("aria-expanded", "true");
}

// Where the key was used from in 30 days (recorded when the new-network notice is on).
function networksList(networks) {
  if (!networks.length) return document.createTextNode("");
  const count = networks.length;
  const list = el("ul", { class: "networks" });
  for (const n of networks) {
    const first = dayFormat.format(new Date(n.first_seen_at));
    const last = dayFormat.format(new Date(n.last_seen_at));
    list.append(el("li", {}, el("code", { text: n.network }),
      el("span", { class: "seen", text: first === last ? ` on ${first}` : ` ${first} – ${last}` })));
  }
  return el("div", { class: "networks-used" },
    el("p", { class: "usage-note", text: `Used from ${count} network${count === 1 ? "" : "s"} in 30 days:` }),
    list);
}

function refused(bucket) {
  return bucket.rejected + bucket.denied + bucket.rate_limited + bucket.credits_exhausted;
}

// Daily allowed and refused requests as stacked bars, drawn here (no chart library),
// with the same numbers in a table for screen readers.
function usageFigure(key, buckets, available) {
  // As wide as the space it has (a phone's card too), so that its labels are drawn
  // at their own size rather than scaled down with the picture.
  const width = Math.round(Math.min(720, Math.max(280, available))), height = 160;
  const left = 44, bottom = 22, top = 8;
  const peak = Math.max(1, ...buckets.map((b) => b.allowed + refused(b)));
  const scale = (height - bottom - top) / peak;
  const slot = (width - left) / buckets.length;
  const svg = document.createElementNS(SVG, "svg");
  for (const [name, value] of Object.entries({ viewBox: `0 0 ${width} ${height}`, class: "usage-chart",
    role: "img", "aria-hidden": "true", focusable: "false" })) svg.setAttribute(name, value);
  const add = (tag, attrs, text) => {
    const node = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
    if (text !== undefined) node.textContent = text;
    svg.append(node);
    return node;
  };
  const base = height - bottom;
  add("line", { x1: left, x2: width, y1: base, y2: base, class: "axis" });
  add("text", { x: left - 6, y: top + 10, class: "tick", "text-anchor": "end" }, countFormat.format(peak));
  add("text", { x: left - 6, y: base, class: "tick", "text-anchor": "end" }, "0");
  buckets.forEach((bucket, i) => {
    const x = left + i * slot + slot * 0.15, w = slot * 0.7;
    const ok = bucket.allowed * scale, no = refused(bucket) * scale;
    if (ok) add("rect", { x, y: base - ok, width: w, height: ok, class: "bar-allowed" });
    if (no) add("rect", { x, y: base - ok - no, width: w, height: no, class: "bar-refused" });
  });
  const last = buckets.length - 1;
  for (const [i, anchor] of [[0, "start"], [Math.floor(last / 2), "middle"], [last, "end"]]) {
    const x = anchor === "start" ? left + i * slot : anchor === "end" ? width : left + (i + 0.5) * slot;
    add("text", { x, y: height - 6, class: "tick", "text-anchor": anchor },
      dayFormat.format(new Date(buckets[i].start)));
  }
  const allowed = buckets.reduce((n, b) => n + b.allowed, 0);
  const refusedTotal = buckets.reduce((n, b) => n + refused(b), 0);
  const caption = `Requests per day with key ${key.name}, last ${buckets.length} days (UTC): ` +
    `${countFormat.format(allowed)} allowed, ${countFormat.format(refusedTotal)} refused.`;
  // In a clipping box: a table ignores `overflow`, and the cards' rules reach its cells.
  const table = el("table", {}, el("caption", { text: caption }),
    el("thead", {}, el("tr", {}, el("th", { scope: "col", text: "Day" }),
      el("th", { scope: "col", text: "Allowed" }), el("th", { scope: "col", text: "Refused" }))),
    el("tbody", {}, ...buckets.map((b) => el("tr", {},
      el("th", { scope: "row", text: dayFormat.format(new Date(b.start)) }),
      el("td", { text: String(b.allowed) }), el("td", { text: String(refused(b)) })))));
  const legend = el("p", { class: "usage-legend", "aria-hidden": "true" },
    el("span", { class: "swatch swatch-allowed" }), `Allowed ${countFormat.format(allowed)}`,
    el("span", { class: "swatch swatch-refused" }), `Refused ${countFormat.format(refusedTotal)}`,
    el("span", { class: "usage-note", text: "· per UTC day" }));
  return el("figure", { class: "usage", "aria-label": caption }, svg, legend,
    el("div", { class: "visually-hidden" }, table));
}

function statusCell(key) {
  const status = shownStatus(key);
  if (status === "blocked") {
    const limit = state.expiry && state.expiry.policy_max;
    return cell("Status", el("span", { class: "status status-blocked", text: "blocked" }),
      el("span", { class: "grace", text: limit
        ? `over the ${limit}-day key policy: create a new key` : "over the key policy" }));
  }
  if (status !== "rotating") {
    return cell("Status", el("span", { class: `status status-${status}`, text: status }));
  }
  const until = dateTimeFormat.format(new Date(key.grace_ends_at));
  return cell("Status", el("span", { class: "status status-rotating", text: "Replaced" }),
    el("span", { class: "grace", text: `works until ${until}` }));
}

function rowActions(key) {
  const actions = el("div", { class: "row-actions" });
  const button = (action, verb, extra = "") => el("button", {
    class: `button small ${extra}`.trim(), type: "button", "data-action": action, "data-id": key.id,
    "aria-label": `${verb} key ${key.name}`, text: verb });
  if (key.status === "active") {
    actions.append(button("toggle", key.enabled ? "Disable" : "Enable"), button("rotate", "Rotate"));
  }
  // A replaced key in its grace, or one the key policy blocks, can still be deleted.
  if (key.status === "active" || key.status === "rotating" || key.status === "blocked") {
    actions.append(button("delete", "Delete", "danger-text"));
  }
  return cell("Actions", actions);
}

function keyRow(key) {
  const nameCell = cell("Name", el("span", { class: "key-name", text: key.name }));
  if (key.description) nameCell.append(el("span", { class: "key-description", text: key.description }));
  const scopes = el("ul", { class: "chips" });
  for (const scope of key.scopes) scopes.append(el("li", { class: "chip", text: scope }));
  return el("tr", { "data-key-id": key.id, class: key.status === "rotating" ? "replaced" : "" },
    nameCell,
    cell("Key", el("code", { class: "prefix", text: `${key.display_prefix}…` })),
    cell("Scopes", scopes),
    cell("Created", document.createTextNode(formatDate(key.created_at))),
    usageCell(key),
    expiresCell(key),
    statusCell(key),
    rowActions(key));
}

function renderKeys() {
  const body = document.querySelector("#keys tbody");
  body.replaceChildren();
  // Keys replaced by a rotation, still in their grace, are listed apart from the keys
  // that replaced them (same name): after them, under a heading of their own.
  const current = state.keys.filter((k) => k.status !== "rotating");
  const replaced = state.keys.filter((k) => k.status === "rotating");
  for (const key of current) body.append(keyRow(key));
  if (replaced.length) {
    body.append(el("tr", { class: "group-row" }, el("th", { colspan: "8", scope: "colgroup",
      text: "Replaced by a rotation — working until their grace period ends" })));
    for (const key of replaced) body.append(keyRow(key));
  }
  const empty = $("empty");
  empty.textContent = state.view === "active"
    ? "You have no active keys. Create one to connect Figma or another platform."
    : "No expired or deleted keys.";
  empty.hidden = state.keys.length > 0;
  $("keys").hidden = state.keys.length === 0;
}

function selectTab(view, focus) {
  state.view = view;
  for (const [id, name] of [["tab-active", "active"], ["tab-inactive", "inactive"]]) {
    const tab = $(id);
    const selected = name === view;
    tab.setAttribute("aria-selected", String(selected));
    tab.tabIndex = selected ? 0 : -1;
    if (selected) {
      $("keys-panel").setAttribute("aria-labelledby", id);
      if (focus) tab.focus();
    }
  }
  loadKeys();
}

function onTabKey(event) {
  if (!["ArrowLeft", "ArrowRight", "Home", "End"].includes(event.key)) return;
  event.preventDefault();
  selectTab(state.view === "active" ? "inactive" : "active", true);
}

// ---- rotate and delete --------------------------------------------------------

function confirmDialog({ title, text, ok, grace }) {
  const dialog = $("confirm");
  $("confirm-title").textContent = title;
  $("confirm-text").textContent = text;
  $("confirm-ok").textContent = ok;
  $("grace-field").hidden = !grace;
  $("grace").value = "0";
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.returnValue = "cancel";
    dialog.showModal();
    // Destructive: Enter must not confirm before a choice was made.
    $("confirm-cancel").focus();
  });
}

async function onRowAction(event) {
  const button = event.target.closest("button[data-action]");
  if (!button) return;
  const key = state.keys.find((k) => k.id === button.dataset.id);
  if (!key) return;
  showAlert("");
  if (button.dataset.action === "usage") await toggleUsage(key, button);
  else if (button.dataset.action === "delete") await deleteKey(key, button);
  else if (button.dataset.action === "toggle") await toggleKey(key, button);
  else await rotateKey(key, button);
}

async function deleteKey(key, button) {
  const confirmed = await confirmDialog({
    title: `Delete “${key.name}”?`,
    text: `Anything using the key ${key.display_prefix}… stops working within a second. This cannot be undone.`,
    ok: `Delete ${key.name}`,
  });
  if (!confirmed) return button.focus();
  try {
    await call("DELETE", `/keys/${key.id}`);
    announce(`Key “${key.name}” deleted.`);
    await loadKeys();
    $("new-key").focus();
  } catch (error) {
    reportFailure("The key was not deleted", error);
  }
}

async function toggleKey(key, button) {
  if (key.enabled) {
    const confirmed = await confirmDialog({
      title: `Disable “${key.name}”?`,
      text: `Anything using the key ${key.display_prefix}… stops working within a second, until you enable it again.`,
      ok: `Disable ${key.name}`,
    });
    if (!confirmed) return button.focus();
  }
  try {
    await call("PATCH", `/keys/${key.id}`, { enabled: !key.enabled });
    announce(`Key “${key.name}” ${key.enabled ? "disabled" : "enabled"}.`);
    await loadKeys();
    const again = document.querySelector(`button[data-action="toggle"][data-id="${key.id}"]`);
    if (again) again.focus();
  } catch (error) {
    reportFailure(`The key was not ${key.enabled ? "disabled" : "enabled"}`, error);
  }
}

async function rotateKey(key, button) {
  const confirmed = await confirmDialog({
    title: `Rotate “${key.name}”?`,
    text: `A new key with the same name, scopes and expiry (${key.expires_at ? formatDate(key.expires_at) : "never"}) is created and shown once. The old key ${key.display_prefix}… stops working after the grace period you choose.`,
    ok: `Rotate ${key.name}`,
    grace: true,
  });
  if (!confirmed) return button.focus();
  try {
    const created = await call("POST", `/keys/${key.id}/rotate`, { grace_seconds: Number($("grace").value) });
    reveal(created, `Key “${key.name}” rotated.`);
    await loadKeys();
  } catch (error) {
    reportFailure("The key was not rotated", error);
  }
}

// ---- wiring -------------------------------------------------------------------

$("new-key").addEventListener("click", () => ($("create-panel").hidden ? openForm() : closeForm()));
$("cancel").addEventListener("click", () => { closeForm(); $("new-key").focus(); });
$("create-panel").addEventListener("submit", submitCreate);
$("create-panel").addEventListener("keydown", (event) => {
  if (event.key === "Escape" && !$("confirm").open) {
    closeForm();
    $("new-key").focus();
  }
});
$("copy").addEventListener("click", copyKey);
$("done").addEventListener("click", dismissReveal);
$("tab-active").addEventListener("click", () => selectTab("active", false));
$("tab-inactive").addEventListener("click", () => selectTab("inactive", false));
for (const id of ["tab-active", "tab-inactive"]) $(id).addEventListener("keydown", onTabKey);
document.querySelector("#keys tbody").addEventListener("click", onRowAction);
start();
