// medrelay staff web client. The page owns the WebSocket and IndexedDB and draws the screens;
// every key, session, encryption and protocol decision is the Rust SDK's, compiled to
// WebAssembly (medrelay_web.js). No innerHTML anywhere: the page runs under Trusted Types.
import init, { WebEngine } from "/medrelay_web.js";

const $ = (id) => document.getElementById(id);
const SCREENS = ["screen-enrol", "screen-totp", "screen-login", "screen-inbox", "screen-admin"];
const PING_MS = 60000;

let engine = null;          // the WebEngine, only while unlocked
let ws = null;
let me = null;              // {handle, role, user_id}
let currentConversation = null;
let loggedOffNotice = null;
let pingTimer = null;
let reconnectDelay = 500;
let manualClose = false;
let authWaiter = null;      // resolves on the next authenticated/auth_failed event
const waiters = new Map();  // op -> {resolve, reject}
let chain = Promise.resolve();

// ---------- small DOM helper (no HTML strings)
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === false || v === null || v === undefined) continue;
    if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function show(screen) {
  for (const id of SCREENS) $(id).hidden = id !== screen;
  $("loading").hidden = true;
  const first = $(screen).querySelector("input, textarea, button");
  if (first && screen !== "screen-inbox") first.focus();
}

function setNotice(text) {
  $("notice").textContent = text || "";
  $("notice").hidden = !text;
}

function errorText(e) {
  const m = String(e && e.message ? e.message : e);
  const bar = m.indexOf("|");
  return bar > 0 ? m.slice(bar + 1) : m;
}
function errorCode(e) {
  const m = String(e && e.message ? e.message : e);
  const bar = m.indexOf("|");
  return bar > 0 ? m.slice(0, bar) : (e && e.code) || "";
}

function time(ms) {
  if (!ms) return "";
  return new Date(ms).toLocaleString([], { dateStyle: "short", timeStyle: "short" });
}

// ---------- IndexedDB: one record, the sealed key store (already encrypted by the engine)
function idb() {
  return new Promise((resolve, reject) => {
    const req = indexedDB.open("medrelay", 1);
    req.onupgradeneeded = () => req.result.createObjectStore("device");
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}
async function idbGet() {
  const db = await idb();
  return new Promise((resolve, reject) => {
    const tx = db.transaction("device", "readonly");
    const req = tx.objectStore("device").get("keystore");
    req.onsuccess = () => resolve(req.result || null);
    req.onerror = () => reject(req.error);
  });
}
async function idbPut(record) {
  const db = await idb();
  return new Promise((resolve, reject) => {
    const tx = db.transaction("device", "readwrite", { durability: "strict" });
    tx.objectStore("device").put(record, "keystore");
    tx.oncomplete = () => resolve();
    tx.onerror = () => reject(tx.error);
    tx.onabort = () => reject(tx.error);
  });
}
async function idbClear() {
  const db = await idb();
  return new Promise((resolve, reject) => {
    const tx = db.transaction("device", "readwrite");
    tx.objectStore("device").delete("keystore");
    tx.oncomplete = () => resolve();
    tx.onerror = () => reject(tx.error);
  });
}

// ---------- one tab at a time: two tabs holding the key store would each advance their own
// copy of the sessions, and the later write would make the next send reuse a message key.
let releaseTabLock = null;
function acquireTabLock() {
  if (releaseTabLock || !navigator.locks) return Promise.resolve(true);
  return new Promise((resolve) => {
    navigator.locks.request("medrelay-keystore", { ifAvailable: true }, (held) => {
      if (!held) { resolve(false); return undefined; }
      resolve(true);
      return new Promise((release) => { releaseTabLock = release; });
    });
  });
}
function releaseLockOfTab() {
  if (releaseTabLock) { releaseTabLock(); releaseTabLock = null; }
}
async function needTabLock() {
  if (!(await acquireTabLock())) {
    throw new Error("IN_USE|medrelay is already open in another tab of this browser: use that tab, or close it first.");
  }
}

// ---------- the pump: sealed store first, then frames, then events
function pump() {
  chain = chain.then(pumpOnce).catch((e) => fatal(e));
  return chain;
}
async function pumpOnce() {
  if (!engine) return;
  // Taken together: every frame was produced at or before the state these bytes hold.
  const sealed = engine.takeUnsaved();
  const frames = engine.takeOutgoing();
  const events = JSON.parse(engine.takeEvents());
  if (sealed) {
    const who = JSON.parse(engine.whoami());
    await idbPut({ sealed, handle: who ? who.handle : null, origin: location.origin });
  }
  for (const f of frames) {
    if (ws && ws.readyState === WebSocket.OPEN) ws.send(f);
  }
  for (const e of events) onEvent(e);
}

function run(start) {
  let op;
  try {
    op = start();
  } catch (e) {
    return Promise.reject(e);
  }
  const p = new Promise((resolve, reject) => waiters.set(op, { resolve, reject }));
  pump();
  return p;
}

function onEvent(e) {
  switch (e.type) {
    case "result": {
      const w = waiters.get(e.op);
      if (!w) return;
      waiters.delete(e.op);
      if (e.ok) w.resolve(e.value);
      else w.reject(Object.assign(new Error(e.message), { code: e.code }));
      return;
    }
    case "authenticated":
    case "auth_failed":
      if (authWaiter) { const w = authWaiter; authWaiter = null; w(e); }
      return;
    case "logged_off":
      loggedOff(e.message);
      return;
    case "message":
      if (!e.known_conversation) refreshInbox();
      else renderInbox();
      if (currentConversation === e.conversation_id) openConversation(e.conversation_id, false);
      return;
    case "history":
      if (currentConversation === e.conversation_id) renderConversation();
      renderInbox();
      return;
    case "archive_key_changed":
      showArchiveNotice(e.fingerprint);
      return;
    case "refresh_connection":
      // The server wants the org archive's key on sends: a new connection's auth_ok carries
      // it, and the engine repeats the send there (same client message id).
      if (ws) ws.close(1000, "refresh");
      return;
    case "undecryptable":
      setNotice("A message could not be decrypted and was discarded. Ask the sender to send it again.");
      return;
    default:
      return;
  }
}

// The org archive key changed: nothing is sent until the staff member compares the new key's
// fingerprint with the privacy officer's and accepts it (as the SDK's archive-key accept).
let archiveFingerprint = null;
function showArchiveNotice(fingerprint) {
  archiveFingerprint = fingerprint;
  $("archive-notice-text").textContent = `Your clinic's message archive key changed. Nothing is sent until you compare its fingerprint ` +
    `${fingerprint} with the one your privacy officer gives you, and accept it only if they are the same.`;
  $("archive-notice").hidden = false;
}
function hideArchiveNotice() {
  archiveFingerprint = null;
  $("archive-notice").hidden = true;
}
function acceptArchiveKey() {
  if (!engine || !archiveFingerprint) return;
  try {
    engine.acceptArchiveKey(archiveFingerprint);
    pump();
    hideArchiveNotice();
    setNotice("The new archive key is accepted; send your message again.");
  } catch (e) {
    setNotice(errorText(e));
  }
}

function fatal(e) {
  console.warn("medrelay:", errorText(e));
}

// ---------- the connection
// Each handler acts only while its socket is the current one: a connection closed earlier (at
// an automatic logoff, the server ends it a moment later) must not fail the login that opened
// the next one, nor tell the new session that it closed.
function connect() {
  manualClose = false;
  return new Promise((resolve) => {
    authWaiter = resolve;
    const socket = new WebSocket(`wss://${location.host}/v1/ws`);
    ws = socket;
    socket.binaryType = "arraybuffer";
    socket.onmessage = (msg) => {
      if (ws !== socket || !engine) return;
      try {
        engine.receive(new Uint8Array(msg.data));
      } catch (err) {
        fatal(err);
      }
      pump();
    };
    socket.onclose = () => {
      if (ws !== socket) return;
      ws = null;
      clearInterval(pingTimer);
      if (engine) engine.connectionClosed();
      pump();
      if (authWaiter) { const w = authWaiter; authWaiter = null; w({ type: "auth_failed", code: "DISCONNECTED", message: "The server could not be reached." }); }
      if (engine && !manualClose && !loggedOffNotice) {
        setTimeout(reconnect, reconnectDelay);
        reconnectDelay = Math.min(reconnectDelay * 2, 30000);
      }
    };
    socket.onopen = () => {
      if (ws !== socket) return;
      reconnectDelay = 500;
      clearInterval(pingTimer);
      pingTimer = setInterval(() => { if (engine) { engine.ping(); pump(); } }, PING_MS);
    };
  });
}

async function reconnect() {
  if (!engine || loggedOffNotice) return;
  const auth = await connect();
  if (auth.type !== "authenticated") return;
  if (auth.login_required || auth.credentials_required) {
    loggedOff("Your session ended.");
    return;
  }
  refreshInbox();
}

function closeConnection() {
  manualClose = true;
  clearInterval(pingTimer);
  const socket = ws;
  ws = null;
  if (socket) { try { socket.close(1000, "bye"); } catch (_) { /* closed already */ } }
  // Its handlers now ignore it; a login still waiting on it hears that it closed.
  if (authWaiter) { const w = authWaiter; authWaiter = null; w({ type: "auth_failed", code: "DISCONNECTED", message: "The connection was closed." }); }
}

// Forgets everything decrypted: the engine (keys, sessions, history in memory) and the screens.
function lock() {
  closeConnection();
  for (const [, w] of waiters) w.reject(new Error("LOGGED_OFF|logged off"));
  waiters.clear();
  if (engine) { engine.free(); engine = null; }
  releaseLockOfTab();
  me = null;
  currentConversation = null;
  $("inbox").replaceChildren();
  $("messages").replaceChildren();
  $("conv-safety-list").replaceChildren();
  $("admin-panels").replaceChildren();
  $("admin-tabs").replaceChildren();
  $("conversation").hidden = true;
  hideArchiveNotice();
  // An invite code shown before the logoff is not left on screen either.
  $("patient-invite-result").replaceChildren();
  $("patient-invite-error").textContent = "";
  $("nav").hidden = true;
  $("who").textContent = "";
  for (const f of document.querySelectorAll("form")) f.reset();
}

function loggedOff(message) {
  const reason = (message || "your session ended").replace(/[.]$/, "");
  loggedOffNotice = `Logged off to protect patient information: ${reason}.`;
  lock();
  startLogin();
}

// ---------- enrolment, credentials, login
async function startLogin() {
  const record = await idbGet();
  if (!record) {
    show("screen-enrol");
    setNotice(loggedOffNotice);
    return;
  }
  $("login-who").textContent = record.handle ? `This browser is set up for ${record.handle}.` : "";
  show("screen-login");
  setNotice(loggedOffNotice);
}

async function enrol(ev) {
  ev.preventDefault();
  const code = $("enrol-code").value.trim();
  const pw = $("enrol-password").value;
  const err = $("enrol-error");
  err.textContent = "";
  if (!code) { err.textContent = "Enter your invite code."; return; }
  if ([...pw].length < 12) { err.textContent = "The password must be at least 12 characters."; return; }
  if (pw !== $("enrol-password2").value) { err.textContent = "The two passwords differ."; return; }
  const button = ev.submitter || $("enrol-form").querySelector("button");
  button.disabled = true;
  err.textContent = "Generating this browser's keys…";
  try {
    await needTabLock();
    await new Promise((r) => setTimeout(r, 30)); // let the status paint before the KDF runs
    engine = WebEngine.enroll(location.origin, code, pw);
    const auth = await connect();
    if (auth.type !== "authenticated") throw new Error(`${auth.code}|${auth.message}`);
    await pump();
    if (auth.role === "PATIENT") throw new Error("FORBIDDEN|This client is for clinic staff.");
    const setup = await run(() => engine.setupCredentials(pw));
    err.textContent = "";
    $("totp-qr").src = setup.qr_svg ? `data:image/svg+xml;base64,${btoa(setup.qr_svg)}` : "";
    $("totp-secret").textContent = setup.totp_secret;
    $("totp-recovery").replaceChildren(...setup.recovery_codes.map((c) => h("li", { text: c })));
    pendingPassword = pw;
    show("screen-totp");
  } catch (e) {
    err.textContent = errorText(e);
    lock();
  } finally {
    button.disabled = false;
  }
}

let pendingPassword = null;
async function finishTotp(ev) {
  ev.preventDefault();
  const err = $("totp-error");
  err.textContent = "";
  try {
    await login(pendingPassword, $("totp-code").value);
    pendingPassword = null;
  } catch (e) {
    err.textContent = errorText(e);
  }
}

async function login(pw, code) {
  const session = await run(() => engine.login(pw, code.trim()));
  loggedOffNotice = null;
  setNotice(null);
  await enterApp(session);
}

async function unlockAndLogin(ev) {
  ev.preventDefault();
  const err = $("login-error");
  err.textContent = "";
  const pw = $("login-password").value;
  const code = $("login-code").value;
  if (!pw || !code) { err.textContent = "Enter your password and your authenticator code."; return; }
  const button = ev.submitter || $("login-form").querySelector("button");
  button.disabled = true;
  err.textContent = "Unlocking…";
  try {
    const record = await idbGet();
    if (!record) throw new Error("LOCAL|This browser holds no keys; set it up with an invite.");
    await needTabLock();
    await new Promise((r) => setTimeout(r, 30));
    try {
      engine = WebEngine.unlock(record.sealed, pw);
    } catch (e) {
      if (errorCode(e) === "WRONG_PASSWORD") throw new Error("AUTH_FAILED|Wrong password.");
      throw e;
    }
    const auth = await connect();
    if (auth.type !== "authenticated") throw new Error(`${auth.code}|${auth.message}`);
    await pump();
    err.textContent = "";
    if (auth.login_required || auth.credentials_required) await login(pw, code);
    else await enterApp(null);
  } catch (e) {
    err.textContent = errorText(e);
    lock();
  } finally {
    button.disabled = false;
  }
}

async function enterApp() {
  me = JSON.parse(engine.whoami());
  $("who").textContent = `${me.handle} · ${me.role.toLowerCase()}`;
  $("nav").hidden = false;
  $("nav-admin").hidden = me.role !== "ADMIN";
  $("nav-inbox").hidden = me.role === "ADMIN";
  if (me.role === "ADMIN") {
    openAdmin();
  } else {
    show("screen-inbox");
    await refreshInbox();
    $("main").focus();
  }
}

async function logout() {
  if (engine) {
    try { await run(() => engine.logout()); } catch (_) { /* logging off anyway */ }
  }
  loggedOffNotice = null;
  lock();
  setNotice("You logged out.");
  startLogin();
}

// ---------- inbox and conversation
async function refreshInbox() {
  if (!engine) return;
  try {
    await run(() => engine.listConversations());
  } catch (e) {
    if (errorCode(e) !== "LOGGED_OFF") setNotice(errorText(e));
  }
  renderInbox();
}

function consentLabel(c) {
  switch (c) {
    case "ACCEPTED": return null;
    case "PENDING": return "consent pending";
    case "WITHDRAWN": return "consent withdrawn";
    default: return null;
  }
}

function renderInbox() {
  if (!engine) return;
  const rows = JSON.parse(engine.inbox());
  $("inbox-empty").hidden = rows.length > 0;
  $("inbox").replaceChildren(...rows.map((c) => {
    const consent = consentLabel(c.consent);
    const label = `${c.title}${c.unread ? `, ${c.unread} unread` : ""}${consent ? `, ${consent}` : ""}`;
    return h("li", {},
      h("button", {
        type: "button", "aria-label": label, "data-conversation": c.conversation_id,
        "aria-current": currentConversation === c.conversation_id ? "true" : "false",
        onclick: () => openConversation(c.conversation_id, true),
      },
      h("span", { class: "title" }, c.title || "(no one else)",
        c.unread ? h("span", { class: "badge", "aria-hidden": "true", text: String(c.unread) }) : null,
        consent ? h("span", { class: "tag warn", text: consent }) : null),
      h("span", { class: "preview", text: c.last_text || "No messages yet" })));
  }));
}

function openConversation(id, focus) {
  if (!engine) return;
  currentConversation = id;
  engine.markRead(id);
  pump();
  $("conv-safety-panel").hidden = true;
  $("conversation").hidden = false;
  $("screen-inbox").classList.add("in-conversation");
  renderConversation();
  renderInbox();
  if (focus) $("compose-text").focus();
}

function stateText(m) {
  if (!m.outgoing) return null;
  if (m.state === "sending") return "Sending…";
  if (m.state === "failed") return "Not sent";
  return `Delivered to the server for ${m.devices} device${m.devices === 1 ? "" : "s"}`;
}

function renderConversation() {
  if (!engine || !currentConversation) return;
  let conv;
  try { conv = JSON.parse(engine.conversation(currentConversation)); } catch (_) { return; }
  $("conv-title").textContent = conv.title || "Conversation";
  const consent = $("conv-consent");
  const blocked = conv.consent && conv.consent !== "ACCEPTED";
  if (conv.consent === "ACCEPTED") {
    consent.className = "consent";
    consent.textContent = `Consent: ${conv.title} accepted the clinic's messaging consent.`;
  } else if (conv.consent === "PENDING") {
    consent.className = "consent warn";
    consent.textContent = `Consent: ${conv.title} has not accepted the messaging consent yet; you cannot message them until they do.`;
  } else if (conv.consent === "WITHDRAWN") {
    consent.className = "consent warn";
    consent.textContent = `Consent: ${conv.title} withdrew their messaging consent; do not message them here.`;
  } else {
    consent.className = "consent";
    consent.textContent = "";
  }
  $("compose-send").disabled = !!blocked;
  const list = $("messages");
  list.replaceChildren(...conv.messages.map((m) => {
    const st = stateText(m);
    return h("li", { class: `msg ${m.outgoing ? "out" : "in"}` },
      h("div", { class: "meta" }, `${m.outgoing ? "You" : (m.from || "Unknown sender")} · ${time(m.server_time_ms || m.sent_at_ms)}`),
      h("div", { class: "text", text: m.text }),
      st ? h("div", { class: `meta state-${m.state}`, text: st }) : null);
  }));
  list.scrollTop = list.scrollHeight;
}

async function send(ev) {
  ev.preventDefault();
  const text = $("compose-text").value;
  const err = $("compose-error");
  err.textContent = "";
  if (!text.trim() || !currentConversation) return;
  const promise = run(() => engine.sendText(currentConversation, text));
  $("compose-text").value = "";
  try {
    await promise;
  } catch (e) {
    err.textContent = errorText(e);
    $("compose-text").value = text;
  }
}

async function safetyNumbers() {
  const panel = $("conv-safety-panel");
  if (!panel.hidden) { panel.hidden = true; return; }
  const conv = JSON.parse(engine.conversation(currentConversation));
  const items = [];
  for (const m of conv.members) {
    try {
      const numbers = await run(() => engine.safetyNumbers(m.user_id));
      for (const n of numbers) {
        items.push(h("li", {}, h("strong", { text: `${m.handle} (device ${n.device_id.slice(0, 8)})` }),
          h("br"), h("code", { text: n.groups.join(" ") })));
      }
      if (numbers.length === 0) items.push(h("li", { text: `${m.handle}: no other devices.` }));
    } catch (e) {
      items.push(h("li", { text: `${m.handle}: ${errorText(e)}` }));
    }
  }
  $("conv-safety-list").replaceChildren(...items);
  panel.hidden = false;
}

async function invitePatient(ev) {
  ev.preventDefault();
  const err = $("patient-invite-error");
  const out = $("patient-invite-result");
  err.textContent = "";
  out.textContent = "";
  try {
    const handle = $("patient-handle").value;
    const invite = await run(() => engine.console("create_invite", JSON.stringify({ role: "patient", handle })));
    out.replaceChildren("Invite code (give it to the patient, valid until ", time(invite.expires_at_ms), "): ",
      h("code", { id: "patient-invite-code", text: invite.code }));
  } catch (e) {
    err.textContent = errorText(e);
  }
}

// ---------- admin console
// Each panel is one entry: add a panel by adding one here.
const ADMIN_PANELS = [
  { id: "people", label: "People and invites", render: renderPeople },
  { id: "teams", label: "Care teams", render: renderTeams },
  { id: "access", label: "Sessions and networks", render: renderAccess },
  { id: "breakglass", label: "Break-glass", render: renderBreakGlass },
  { id: "retention", label: "Retention and legal hold", render: renderRetention },
  { id: "accesslog", label: "Access log", render: renderAccessLog },
];

function openAdmin() {
  show("screen-admin");
  const tabs = $("admin-tabs");
  if (!tabs.childElementCount) {
    tabs.replaceChildren(...ADMIN_PANELS.map((p, i) => h("button", {
      type: "button", role: "tab", id: `tab-${p.id}`, "aria-controls": `panel-${p.id}`,
      "aria-selected": "false", tabindex: i === 0 ? "0" : "-1",
      onclick: () => selectPanel(p.id),
      onkeydown: (e) => {
        const idx = ADMIN_PANELS.findIndex((x) => x.id === p.id);
        const next = e.key === "ArrowRight" ? idx + 1 : e.key === "ArrowLeft" ? idx - 1 : null;
        if (next === null) return;
        const target = ADMIN_PANELS[(next + ADMIN_PANELS.length) % ADMIN_PANELS.length];
        selectPanel(target.id);
        $(`tab-${target.id}`).focus();
      },
    }, p.label)));
  }
  selectPanel("people");
}

async function selectPanel(id) {
  for (const p of ADMIN_PANELS) {
    const tab = $(`tab-${p.id}`);
    tab.setAttribute("aria-selected", p.id === id ? "true" : "false");
    tab.tabIndex = p.id === id ? 0 : -1;
  }
  const spec = ADMIN_PANELS.find((p) => p.id === id);
  const panel = h("div", { class: "panel", role: "tabpanel", id: `panel-${id}`, "aria-labelledby": `tab-${id}` });
  $("admin-panels").replaceChildren(panel);
  try {
    await spec.render(panel);
  } catch (e) {
    panel.append(h("p", { class: "error", role: "alert", text: errorText(e) }));
  }
}

const call = (kind, args = {}) => run(() => engine.console(kind, JSON.stringify(args)));

function formRow(label, input) {
  const id = input.id || `f-${Math.random().toString(36).slice(2)}`;
  input.id = id;
  return [h("label", { for: id, text: label }), input];
}

function actionForm(title, fields, submitLabel, action) {
  const error = h("p", { class: "error", role: "alert" });
  const result = h("p", { class: "result", role: "status" });
  const form = h("form", { novalidate: true }, ...fields, h("button", { type: "submit", text: submitLabel }), error, result);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    error.textContent = "";
    result.textContent = "";
    try {
      const out = await action(form);
      if (out instanceof Node) result.replaceChildren(out);
      else result.textContent = out || "Done.";
    } catch (e) {
      error.textContent = errorText(e);
    }
  });
  return h("section", {}, h("h2", { text: title }), form);
}

function roleSelect(id) {
  return h("select", { id }, h("option", { value: "staff", text: "Staff" }),
    h("option", { value: "patient", text: "Patient" }), h("option", { value: "admin", text: "Admin" }));
}

async function renderPeople(panel) {
  const users = await call("list_users");
  const devicesOut = h("div", { id: "devices-out", "aria-live": "polite" });
  const table = h("table", {},
    h("thead", {}, h("tr", {}, ...["Handle", "Role", "Status", "Consent", "Permissions", "Actions"].map((t) => h("th", { scope: "col", text: t })))),
    h("tbody", {}, ...users.map((u) => h("tr", {},
      h("td", { text: u.handle }), h("td", { text: u.role.toLowerCase() }),
      h("td", { text: u.active ? "active" : "deactivated" }),
      h("td", { text: u.consent === "NOT_APPLICABLE" ? "—" : u.consent.toLowerCase() }),
      h("td", { text: u.permissions.join(", ") }),
      h("td", {}, h("div", { class: "row-actions" },
        h("button", { type: "button", "aria-label": `Devices of ${u.handle}`, onclick: () => showDevices(u, devicesOut), text: "Devices" }),
        u.active && u.user_id !== me.user_id ? h("button", {
          type: "button", class: "danger", "aria-label": `Deactivate ${u.handle}`, text: "Deactivate",
          onclick: async () => {
            if (!confirm(`Deactivate ${u.handle}? Every device is revoked at once.`)) return;
            await call("deactivate_user", { user_id: u.user_id });
            selectPanel("people");
          },
        }) : null))))));
  panel.append(h("section", {}, h("h2", { text: "People" }), h("div", { class: "table-wrap" }, table), devicesOut));
  panel.append(actionForm("Invite someone", [
    ...formRow("Role", roleSelect("invite-role")),
    ...formRow("Handle (a-z, 0-9, . - _)", h("input", { id: "invite-handle", autocomplete: "off", spellcheck: "false" })),
  ], "Create invite", async () => {
    const out = await call("create_invite", { role: $("invite-role").value, handle: $("invite-handle").value });
    return h("span", {}, `Invite code for ${$("invite-handle").value}, valid until ${time(out.expires_at_ms)}: `, h("code", { text: out.code }));
  }));
}

async function showDevices(user, out) {
  const devices = await call("list_devices", { user_id: user.user_id });
  out.replaceChildren(h("h3", { text: `Devices of ${user.handle}` }), devices.length === 0 ? h("p", { text: "No devices." }) :
    h("div", { class: "table-wrap" }, h("table", {},
      h("thead", {}, h("tr", {}, ...["Device", "Label", "Enrolled", "Last seen", "Status", ""].map((t) => h("th", { scope: "col", text: t })))),
      h("tbody", {}, ...devices.map((d) => h("tr", {},
        h("td", {}, h("code", { text: d.device_id.slice(0, 12) })), h("td", { text: d.label || "—" }),
        h("td", { text: time(d.created_ms) }), h("td", { text: time(d.last_seen_ms) }),
        h("td", { text: d.revoked ? "revoked" : "active" }),
        h("td", {}, d.revoked ? null : h("button", {
          type: "button", class: "danger", "aria-label": `Revoke device ${d.device_id.slice(0, 8)} of ${user.handle}`, text: "Revoke",
          onclick: async () => {
            if (!confirm("Revoke this device? Its connection closes at once.")) return;
            await call("revoke_device", { device_id: d.device_id });
            showDevices(user, out);
          },
        }))))))));
  out.querySelector("h3").scrollIntoView({ block: "nearest" });
}

function checks(legend, name, items) {
  return h("fieldset", { class: "checks" }, h("legend", { text: legend }),
    ...items.map((i) => h("label", {}, h("input", { type: "checkbox", name, value: i.value }), i.label)));
}
const checked = (form, name) => [...form.querySelectorAll(`input[name="${name}"]:checked`)].map((i) => i.value);

async function renderTeams(panel) {
  const [users, teams] = await Promise.all([call("list_users"), call("list_teams")]);
  const staff = users.filter((u) => u.role === "STAFF" && u.active);
  const patients = users.filter((u) => u.role === "PATIENT" && u.active);
  const handle = (id) => (users.find((u) => u.user_id === id) || {}).handle || id.slice(0, 8);
  panel.append(h("section", {}, h("h2", { text: "Teams" }),
    teams.length === 0 ? h("p", { text: "No teams yet." }) :
      h("ul", {}, ...teams.map((t) => h("li", {}, h("strong", { text: t.name }), `: ${t.staff_user_ids.map(handle).join(", ") || "no members"}`)))));
  panel.append(actionForm("Create a team", formRow("Team name", h("input", { id: "team-name" })), "Create team", async () => {
    await call("create_team", { name: $("team-name").value });
    selectPanel("teams");
  }));
  if (teams.length) {
    panel.append(actionForm("Set a team's members", [
      ...formRow("Team", h("select", { id: "team-pick" }, ...teams.map((t) => h("option", { value: t.team_id, text: t.name })))),
      checks("Staff", "team-staff", staff.map((s) => ({ value: s.user_id, label: s.handle }))),
    ], "Save members", async (form) => {
      await call("set_team_members", { team_id: $("team-pick").value, staff_user_ids: checked(form, "team-staff") });
      return "Members saved.";
    }));
  }
  panel.append(actionForm("Assign a patient's care", [
    ...formRow("Patient", h("select", { id: "care-patient" }, ...patients.map((p) => h("option", { value: p.user_id, text: p.handle })))),
    checks("Staff directly", "care-staff", staff.map((s) => ({ value: s.user_id, label: s.handle }))),
    checks("Teams", "care-teams", teams.map((t) => ({ value: t.team_id, label: t.name }))),
  ], "Assign care", async (form) => {
    await call("assign_care", {
      patient_user_id: $("care-patient").value, staff_user_ids: checked(form, "care-staff"), team_ids: checked(form, "care-teams"),
    });
    return "Care assignment saved: the patient's conversation now has exactly these members.";
  }));
}

async function renderAccess(panel) {
  const policy = await call("get_policy");
  const minutes = (ms) => String(Math.round(ms / 1000));
  panel.append(actionForm("Session timeouts", [
    ...formRow("Idle timeout (seconds, 1 to 86400)", h("input", { id: "idle-seconds", inputmode: "numeric", value: minutes(policy.idle_timeout_ms) })),
    ...formRow("Session lifetime (seconds, up to 7 days)", h("input", { id: "lifetime-seconds", inputmode: "numeric", value: minutes(policy.session_lifetime_ms) })),
  ], "Save timeouts", async () => {
    const idle = Number($("idle-seconds").value) * 1000;
    const life = Number($("lifetime-seconds").value) * 1000;
    if (!Number.isInteger(idle) || !Number.isInteger(life)) throw new Error("INVALID_INPUT|Enter whole seconds.");
    await call("set_session_policy", { idle_timeout_ms: idle, session_lifetime_ms: life });
    return "Timeouts saved.";
  }));
  for (const role of ["staff", "admin", "patient"]) {
    const current = (policy.allow_lists.find((l) => l.role === role.toUpperCase()) || { cidrs: [] }).cidrs;
    panel.append(actionForm(`Allowed networks for ${role}`, [
      ...formRow("One address or range per line (e.g. 10.0.0.0/8); empty allows every address",
        h("textarea", { id: `allow-${role}`, rows: "3", text: current.join("\n") })),
    ], "Save networks", async () => {
      const cidrs = $(`allow-${role}`).value.split(/\s+/).filter(Boolean);
      await call("set_allow_list", { role, cidrs });
      return "Saved.";
    }));
  }
  panel.append(actionForm("Consent text patients accept", [
    ...formRow("Text", h("textarea", { id: "consent-text", rows: "5", text: policy.consent_text || "" })),
  ], "Save consent text", async () => {
    await call("set_consent_text", { text: $("consent-text").value });
    return "Saved. Patients must accept the new text before messaging.";
  }));
}

async function renderBreakGlass(panel) {
  const users = await call("list_users");
  const staff = users.filter((u) => u.role === "STAFF" && u.active);
  const patients = users.filter((u) => u.role === "PATIENT" && u.active);
  panel.append(actionForm("Grant emergency access", [
    h("p", { text: "Gives a staff member access to a patient's conversation outside their care assignment, for a limited time. The grant and its reason go to the access log." }),
    ...formRow("Staff member", h("select", { id: "bg-staff" }, ...staff.map((s) => h("option", { value: s.user_id, text: s.handle })))),
    ...formRow("Patient", h("select", { id: "bg-patient" }, ...patients.map((p) => h("option", { value: p.user_id, text: p.handle })))),
    ...formRow("Reason (one line, up to 500 characters)", h("input", { id: "bg-reason" })),
    ...formRow("Duration (minutes, up to 1440)", h("input", { id: "bg-minutes", inputmode: "numeric", value: "60" })),
  ], "Grant access", async () => {
    const out = await call("grant_break_glass", {
      staff_user_id: $("bg-staff").value, patient_user_id: $("bg-patient").value,
      reason: $("bg-reason").value, duration_ms: Math.round(Number($("bg-minutes").value) * 60000),
    });
    return `Access granted until ${time(out.expires_at_ms)}.`;
  }));
}

// ---------- retention, legal hold, the org archive key, the sweeper
function forbiddenHint(e, permission) {
  return errorCode(e) === "FORBIDDEN" ? new Error(`FORBIDDEN|${errorText(e)} (this needs the ${permission} permission)`) : e;
}

async function renderRetention(panel) {
  const r = await call("get_retention");
  panel.append(h("section", {}, h("h2", { text: "Current settings" }),
    h("dl", { class: "facts", id: "retention-current" },
      h("dt", { text: "Undelivered messages kept" }), h("dd", { id: "retention-mail", text: `${r.mail_days} days` }),
      h("dt", { text: "Org archive kept" }), h("dd", { id: "retention-archive", text: `${r.archive_days} days` }),
      h("dt", { text: "Access log kept (server-wide)" }), h("dd", { text: `${r.audit_days} days` }),
      h("dt", { text: "Org-wide legal hold" }), h("dd", { id: "retention-hold", text: r.legal_hold ? "on: nothing of this clinic expires" : "off" }),
      h("dt", { text: "Conversations on hold" }), h("dd", { text: String(r.held_conversations.length) }),
      h("dt", { text: "Org archive" }), h("dd", { id: "archive-status" }, r.archive_key_fingerprint
        ? ["on; key fingerprint ", h("code", { text: r.archive_key_fingerprint })] : "off"))));

  panel.append(actionForm("Retention", [
    h("p", { text: "A record is deleted, and its encryption key destroyed, within a day after its retention ends, unless a legal hold keeps it." }),
    ...formRow("Undelivered messages (days, 1 to 3650)", h("input", { id: "mail-days", inputmode: "numeric", value: String(r.mail_days) })),
    ...formRow("Org archive (days, 1 to 36500)", h("input", { id: "archive-days", inputmode: "numeric", value: String(r.archive_days) })),
  ], "Save retention", async () => {
    const mail = $("mail-days").value.trim();
    const archive = $("archive-days").value.trim();
    await call("set_retention", { mail_days: mail, archive_days: archive });
    $("retention-mail").textContent = `${mail} days`;
    $("retention-archive").textContent = `${archive} days`;
    return `Retention saved: undelivered messages ${mail} days, org archive ${archive} days.`;
  }));

  panel.append(actionForm("Org-wide legal hold", [
    h("p", { text: r.legal_hold
      ? "The whole clinic is on legal hold: nothing expires and no key is destroyed until it is lifted."
      : "Place the whole clinic on legal hold: nothing expires and no key is destroyed until it is lifted." }),
  ], r.legal_hold ? "Lift org-wide hold" : "Place org-wide hold", async () => {
    const held = !r.legal_hold;
    if (!confirm(held ? "Place the whole clinic on legal hold?" : "Lift the org-wide legal hold? Expired records are then deleted by the next sweep.")) return "Nothing changed.";
    await call("set_hold", { conversation_id: "", held });
    selectPanel("retention");
    return held ? "Org-wide hold placed." : "Org-wide hold lifted.";
  }));

  panel.append(h("section", {}, h("h2", { text: "Conversations on legal hold" }),
    r.held_conversations.length === 0 ? h("p", { text: "None." }) :
      h("ul", { id: "held-list" }, ...r.held_conversations.map((c) => h("li", {}, h("code", { text: c }), " ",
        h("button", { type: "button", "aria-label": `Lift the hold on conversation ${c.slice(0, 8)}`, text: "Lift hold",
          onclick: async () => { await call("set_hold", { conversation_id: c, held: false }); selectPanel("retention"); } }))))));
  panel.append(actionForm("Hold a conversation", [
    ...formRow("Conversation id (hex, as the access log names it)", h("input", { id: "hold-conversation", autocomplete: "off", spellcheck: "false" })),
  ], "Place hold", async () => {
    const id = $("hold-conversation").value.trim();
    if (!id) throw new Error("INVALID_INPUT|Enter a conversation id.");
    await call("set_hold", { conversation_id: id, held: true });
    selectPanel("retention");
    return "Hold placed.";
  }));

  panel.append(actionForm("Org archive key", [
    h("p", { text: "When the archive is on, every client seals each message it sends to this public key; only the privacy officer's offline secret key opens the archive. Clients pin the key and refuse a changed one until their user compares its fingerprint with the privacy officer's. Generate the key pair with medrelay archive keygen on the privacy officer's own machine; paste only the public key here." }),
    ...formRow("Archive public key (64 hex characters)", h("input", { id: "archive-key", autocomplete: "off", spellcheck: "false" })),
  ], "Enable archive with this key", async () => {
    const key = $("archive-key").value.trim();
    if (!key) throw new Error("INVALID_INPUT|Paste the archive public key, or use Disable archive.");
    try { await call("set_archive_key", { public_key: key }); } catch (e) { throw forbiddenHint(e, "privacy_officer"); }
    const now = await call("get_retention");
    $("archive-status").replaceChildren("on; key fingerprint ", h("code", { text: now.archive_key_fingerprint }));
    return h("span", {}, "Archive enabled. Key fingerprint: ", h("code", { id: "archive-fingerprint", text: now.archive_key_fingerprint }),
      ". Compare it with the privacy officer's.");
  }));
  panel.append(actionForm("Disable the org archive", [
    h("p", { text: "Clients stop sealing messages to the archive. Items already archived are kept for their retention." }),
  ], "Disable archive", async () => {
    if (!confirm("Disable the org archive?")) return "Nothing changed.";
    try { await call("set_archive_key", { public_key: "" }); } catch (e) { throw forbiddenHint(e, "privacy_officer"); }
    $("archive-status").textContent = "off";
    return "Archive disabled.";
  }));

  panel.append(actionForm("Run the retention sweep now", [
    h("p", { text: "The server sweeps on its own schedule; this runs it at once. The sweep is recorded in the access log." }),
  ], "Run sweep", async () => {
    const s = await call("run_sweep");
    return `Sweep done at ${time(s.at_ms)}: ${s.envelopes_deleted} undelivered messages and ${s.archive_items_deleted} archive items deleted, ` +
      `${s.access_log_entries_deleted} access-log entries trimmed, ${s.keys_shredded} keys destroyed, ${s.kept_by_hold} records kept by a legal hold.`;
  }));
}

// ---------- the access log: filtered view, verify, export (built here from paged export_access_log)
const LOG_VIEW_MAX = 5000;   // entries read for the on-screen view; export reads everything
const LOG_VIEW_ROWS = 500;   // rows drawn, newest first

function localInput(ms) {
  const d = new Date(ms - new Date(ms).getTimezoneOffset() * 60000);
  return d.toISOString().slice(0, 16);
}

function logFilter() {
  const at = (id) => {
    const v = $(id).value;
    if (!v) return "";
    const ms = new Date(v).getTime();
    if (!Number.isFinite(ms)) throw new Error("INVALID_INPUT|Enter a valid date and time.");
    return ms;
  };
  return { since_ms: at("log-since"), until_ms: at("log-until"), action: $("log-action").value.trim(), actor_user_id: $("log-actor").value };
}

// Reads pages from the start of the filter until done (or `max` entries); `onPage` sees each.
async function readLog(filter, max, onPage) {
  let after = 0;
  let count = 0;
  for (;;) {
    const page = await call("export_access_log", { ...filter, after_seq: after });
    onPage(page.entries);
    count += page.entries.length;
    if (page.done) return { complete: true, count };
    if (page.next_after_seq <= after) throw new Error("INTERNAL|The server's access-log pages did not advance; try again later.");
    after = page.next_after_seq;
    if (count >= max) return { complete: false, count };
  }
}

function csvField(t) {
  const s = String(t);
  return /[",\n]/.test(s) ? `"${s.replaceAll('"', '""')}"` : s;
}

// The same lines as `medrelay-client admin audit export` writes.
function exportLine(e, format) {
  const row = { seq: e.seq, at_ms: e.at_ms, user: e.user_id || "", device: e.device_id || "", role: e.role || "",
    action: e.action, objects: e.objects, outcome: e.outcome, source: e.source, hash: e.hash };
  if (format === "jsonl") return JSON.stringify(row);
  return [row.seq, row.at_ms, row.user, row.device, row.role, csvField(row.action), csvField(row.objects.join(" ")),
    csvField(row.outcome), csvField(row.source), row.hash].join(",");
}

async function renderAccessLog(panel) {
  const users = await call("list_users");
  const handleOf = new Map(users.map((u) => [u.user_id, u.handle]));
  const status = h("p", { id: "log-status", role: "status" });
  const error = h("p", { class: "error", role: "alert" });
  const body = h("tbody", { id: "log-rows" });
  const table = h("table", { id: "log-table" },
    h("caption", { text: "Access log entries, newest first" }),
    h("thead", {}, h("tr", {}, ...["#", "Time", "Actor", "Role", "Action", "Objects", "Outcome", "Source"].map((t) => h("th", { scope: "col", text: t })))),
    body);
  const form = h("form", { novalidate: true, class: "filters" },
    ...formRow("From", h("input", { id: "log-since", type: "datetime-local", value: localInput(Date.now() - 24 * 3600 * 1000) })),
    ...formRow("To (empty: now)", h("input", { id: "log-until", type: "datetime-local" })),
    ...formRow("Action (e.g. set_retention; empty: all)", h("input", { id: "log-action", autocomplete: "off", spellcheck: "false" })),
    ...formRow("Actor", h("select", { id: "log-actor" }, h("option", { value: "", text: "Anyone" }),
      ...users.map((u) => h("option", { value: u.user_id, text: `${u.handle} (${u.role.toLowerCase()})` })))),
    h("button", { type: "submit", text: "Show entries" }));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    error.textContent = "";
    status.textContent = "Reading the access log…";
    try {
      const entries = [];
      const read = await readLog(logFilter(), LOG_VIEW_MAX, (page) => entries.push(...page));
      entries.reverse();
      body.replaceChildren(...entries.slice(0, LOG_VIEW_ROWS).map((e) => h("tr", {},
        h("td", { text: String(e.seq) }), h("td", { text: new Date(e.at_ms).toLocaleString() }),
        h("td", { text: e.user_id ? (handleOf.get(e.user_id) || e.user_id.slice(0, 8)) : "—" }),
        h("td", { text: e.role ? e.role.toLowerCase() : "—" }),
        h("td", {}, h("code", { text: e.action })),
        h("td", { class: "objects", text: e.objects.map((o) => (o.length > 16 ? o.slice(0, 12) + "…" : o)).join(" ") }),
        h("td", { class: e.outcome === "allowed" ? "" : "warn", text: e.outcome }), h("td", { text: e.source }))));
      const shown = Math.min(entries.length, LOG_VIEW_ROWS);
      status.textContent = entries.length === 0 ? "No entries match." :
        `${entries.length}${read.complete ? "" : "+"} ${entries.length === 1 ? "entry matches" : "entries match"}; showing the ${shown === 1 ? "only one" : `${shown} newest`}.` +
        (read.complete ? "" : " Narrow the time range to see older ones, or export.");
    } catch (e) {
      status.textContent = "";
      error.textContent = errorText(e);
    }
  });
  panel.append(h("section", {}, h("h2", { text: "Access log" }),
    h("p", { text: "Every request and sign-in attempt, allowed or refused, with pseudonymous ids; never message content." }),
    form, error, status, h("div", { class: "table-wrap" }, table)));

  panel.append(actionForm("Verify the log", [
    h("p", { text: "Checks the hash chain and the signed checkpoints on the server now." }),
  ], "Verify now", async () => {
    const v = await call("verify_access_log");
    if (!v.ok) throw new Error(`BROKEN|The access log does NOT verify: entry ${v.broken_entry} is broken (${v.reason}).`);
    return h("span", { id: "log-verified" }, `The access log verifies: ${v.entries} entries, ${v.checkpoints} signed checkpoints, ${v.unsealed} entries since the last checkpoint.`);
  }));

  panel.append(actionForm("Export", [
    h("p", { text: "Every entry matching the filter above, in the same format as medrelay-client admin audit export." }),
    ...formRow("Format", h("select", { id: "log-format" }, h("option", { value: "jsonl", text: "JSON lines" }), h("option", { value: "csv", text: "CSV" }))),
  ], "Download export", async () => {
    const format = $("log-format").value;
    const lines = format === "csv" ? ["seq,at_ms,user,device,role,action,objects,outcome,source,hash"] : [];
    const read = await readLog(logFilter(), Number.MAX_SAFE_INTEGER, (page) => { for (const e of page) lines.push(exportLine(e, format)); });
    const blob = new Blob([lines.join("\n") + "\n"], { type: format === "csv" ? "text/csv" : "application/x-ndjson" });
    const url = URL.createObjectURL(blob);
    const stamp = new Date().toISOString().replace(/[:.]/g, "-").slice(0, 19);
    const a = h("a", { href: url, download: `access-log-${stamp}.${format === "csv" ? "csv" : "jsonl"}` });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
    return `Exported ${read.count} entries.`;
  }));
}

// ---------- start
async function forgetDevice() {
  if (!confirm("Remove this browser's keys? You will need a new invite to use it again.")) return;
  await idbClear();
  lock();
  startLogin();
}

async function main() {
  $("enrol-form").addEventListener("submit", enrol);
  $("totp-form").addEventListener("submit", finishTotp);
  $("login-form").addEventListener("submit", unlockAndLogin);
  $("compose").addEventListener("submit", send);
  $("compose-text").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) $("compose").requestSubmit();
  });
  $("patient-invite-form").addEventListener("submit", invitePatient);
  $("refresh").addEventListener("click", refreshInbox);
  $("conv-safety").addEventListener("click", safetyNumbers);
  $("conv-back").addEventListener("click", () => {
    currentConversation = null;
    $("conversation").hidden = true;
    $("screen-inbox").classList.remove("in-conversation");
    renderInbox();
  });
  $("nav-inbox").addEventListener("click", () => { show("screen-inbox"); refreshInbox(); });
  $("nav-admin").addEventListener("click", openAdmin);
  $("nav-logout").addEventListener("click", logout);
  $("forget-device").addEventListener("click", forgetDevice);
  $("archive-accept").addEventListener("click", acceptArchiveKey);
  await init();
  await startLogin();
}

main().catch((e) => {
  $("loading").textContent = `The secure client could not start: ${errorText(e)}`;
});
