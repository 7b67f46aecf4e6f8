// Herald's browser page: sign-in, chat and CSV uploads over one EventSource.
// Contract: API.md (HTTP, SSE and event names). No build step, no dependencies.
"use strict";

const $ = (id) => document.getElementById(id);
// The server's vocabularies (core/eventkinds.py, core/statuses.py), written out because
// the page has no build step; tests/test_vocabulary.py checks they match exactly.
const EVENT_TYPES = ["chat.chunk", "chat.done", "chat.error", "upload.status",
  "upload.progress", "upload.done", "upload.error", "resync", "token_expired"];
const UPLOAD_STATUS = {
  QUEUED: "queued", VALIDATING: "validating", PROCESSING: "processing",
  COMPLETED: "completed", FAILED: "failed", CANCELLED: "cancelled",
};
const MESSAGE_STATUS = {
  QUEUED: "queued", ANSWERED: "answered", BLOCKED: "blocked", FLAGGED: "flagged",
  COMPLETED: "completed", FAILED: "failed",
};
const TERMINAL = new Set([UPLOAD_STATUS.COMPLETED, UPLOAD_STATUS.FAILED, UPLOAD_STATUS.CANCELLED]);
const CHAT_ERRORS = {
  message_blocked: "This message was blocked by the safety check: it looks like an attempt " +
    "to override the assistant's instructions. Please rephrase it.",
  llm_unavailable: "The assistant is temporarily unavailable after repeated failures. " +
    "Please try again in a minute.",
  llm_timeout: "The assistant took too long to answer. Please try again.",
  llm_error: "The assistant failed to answer. Please try again.",
  message_too_large: "That message is too long. Please shorten it.",
};

const state = {
  token: sessionStorage.getItem("herald_token") || "",
  lastEventId: sessionStorage.getItem("herald_last_event_id") || "",
  conversationId: sessionStorage.getItem("herald_conversation") || "",
  source: null, // the EventSource
  reconnects: 0,
  retryTimer: null,
  seen: new Set(), // event ids already applied (belt and braces over Last-Event-ID)
  sending: false, // a chat POST is in flight
  pendingReply: null, // the assistant bubble waiting for its first chunk
  replies: new Map(), // message_id -> {el, next: index of the next chunk}
  uploads: new Map(), // upload_id -> row element
};

// ---- HTTP -----------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, code, message, retryAfter) {
    super(message);
    Object.assign(this, { status, code, retryAfter });
  }
}

async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${state.token}` };
  if (body !== undefined && !(body instanceof FormData)) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(body);
  }
  const response = await fetch(path, { method, headers, body });
  const data = await response.json().catch(() => null);
  if (!response.ok) {
    const error = (data && data.error) || {};
    const retry = Number(response.headers.get("Retry-After")) || 0;
    if (response.status === 401) askForToken("Your token was refused; please sign in again.");
    throw new ApiError(response.status, error.code || "http_error",
      error.message || `The server answered ${response.status}.`, retry);
  }
  return data;
}

function describe(error) {
  if (error.code === "rate_limited") return `Too many requests. You can try again in ${wait(error.retryAfter)}.`;
  if (error instanceof TypeError) return "The server cannot be reached. Check your connection.";
  return CHAT_ERRORS[error.code] || error.message;
}

function wait(seconds) {
  if (!seconds) return "a little while";
  if (seconds < 90) return `${seconds} seconds`;
  return `${Math.ceil(seconds / 60)} minutes`;
}

// ---- Sign-in ----------------------------------------------------------------------------

function setToken(token) {
  state.token = token;
  sessionStorage.setItem("herald_token", token);
  // The cookie lets plain links (the error-report download) authenticate too.
  const secure = location.protocol === "https:" ? "; Secure" : "";
  document.cookie = `herald_token=${encodeURIComponent(token)}; Path=/; SameSite=Strict${secure}`;
}

function clearToken() {
  state.token = "";
  sessionStorage.removeItem("herald_token");
  document.cookie = "herald_token=; Path=/; Max-Age=0; SameSite=Strict";
}

function tokenExpired(token) {
  try {
    const payload = JSON.parse(atob(token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/")));
    return typeof payload.exp === "number" && payload.exp * 1000 <= Date.now();
  } catch {
    return false; // not ours to judge: the server will say
  }
}

function askForToken(note) {
  disconnect();
  clearToken();
  $("signin-note").textContent = note || "";
  $("signin").hidden = false;
  $("workspace").hidden = true;
  $("sign-out").hidden = true;
  setConn("off", "Not connected");
  $("token-input").focus();
}

function signIn(token) {
  setToken(token.trim());
  $("signin").hidden = true;
  $("workspace").hidden = false;
  $("sign-out").hidden = false;
  $("signin-note").textContent = "";
  // A new EventSource must be told where the old one stopped: pass the id explicitly.
  connect();
  refresh();
  $("chat-input").focus();
}

async function offerDevToken() {
  const response = await fetch("/dev/token").catch(() => null);
  $("dev-token").hidden = !(response && response.ok);
}

// ---- The event stream -------------------------------------------------------------------

function setConn(kind, text) {
  $("conn").dataset.state = kind;
  $("conn-text").textContent = text;
}

function connect() {
  disconnect();
  const params = new URLSearchParams({ token: state.token });
  if (state.lastEventId) params.set("last_event_id", state.lastEventId);
  const source = new EventSource(`/events?${params}`);
  state.source = source;
  setConn("retry", state.reconnects ? `Reconnecting (${state.reconnects})…` : "Connecting…");
  note(`connect last_event_id=${state.lastEventId || "-"}`);
  source.onopen = () => {
    note("open");
    setConn("live", state.reconnects ? `Live · reconnected ${state.reconnects}×` : "Live");
  };
  source.onerror = () => {
    state.reconnects += 1;
    note(`error readyState=${source.readyState}`);
    if (source.readyState === EventSource.CONNECTING) {
      // The browser retries by itself and sends Last-Event-ID (WHATWG HTML 9.2).
      setConn("retry", `Reconnecting (${state.reconnects})…`);
      return;
    }
    // CLOSED: the server refused (401, 429...); the browser will not retry on its own.
    if (tokenExpired(state.token)) return askForToken("Your token has expired; paste a new one.");
    const delay = Math.min(30, 2 ** Math.min(state.reconnects, 5));
    setConn("down", `Disconnected; retrying in ${delay} s`);
    state.retryTimer = setTimeout(connect, delay * 1000);
  };
  for (const type of EVENT_TYPES) source.addEventListener(type, onEvent);
}

function disconnect() {
  clearTimeout(state.retryTimer);
  if (state.source) state.source.close();
  state.source = null;
}

// The last few stream happenings, for debugging in the console and in browser tests.
const heraldLog = (window.heraldLog = []);
function note(line) {
  heraldLog.push(`${new Date().toISOString()} ${line}`);
  if (heraldLog.length > 100) heraldLog.shift();
}

function onEvent(event) {
  const id = event.lastEventId;
  note(`${event.type} ${id}`);
  const control = event.type === "resync" || event.type === "token_expired";
  if (id && control) {
    state.lastEventId = id; // where the server says "now" is, even if it went back
  } else if (id) {
    if (state.seen.has(id) || (state.lastEventId && compareIds(id, state.lastEventId) <= 0)) {
      return; // already applied: a doubled delivery after a reconnect
    }
    state.seen.add(id);
    if (state.seen.size > 2000) state.seen = new Set([...state.seen].slice(-1000));
    state.lastEventId = id;
  }
  if (id) sessionStorage.setItem("herald_last_event_id", state.lastEventId);
  const data = JSON.parse(event.data);
  const handler = HANDLERS[event.type];
  if (handler) handler(data);
}

function compareIds(a, b) {
  // Redis stream ids: "<ms>-<seq>", ordered by both parts (Redis docs: Streams).
  const [am, as] = a.split("-").map(Number);
  const [bm, bs] = b.split("-").map(Number);
  return am - bm || (as || 0) - (bs || 0);
}

const HANDLERS = {
  "chat.chunk": (d) => {
    if (!ownsConversation(d.conversation_id)) return;
    const reply = replyFor(d.message_id);
    if (d.index < reply.next) return; // a chunk already shown
    reply.el.querySelector(".text").textContent += d.text;
    reply.next = d.index + 1;
    setTyping(true);
    scrollChat();
  },
  "chat.done": (d) => {
    if (!ownsConversation(d.conversation_id)) return;
    const reply = replyFor(d.message_id);
    reply.el.querySelector(".text").textContent = d.text; // the whole reply wins
    reply.el.classList.remove("streaming");
    addMeta(reply.el, d.model ? `answered by ${d.model}` : "");
    setTyping(false);
    scrollChat();
  },
  "chat.error": (d) => {
    if (!ownsConversation(d.conversation_id)) return;
    const reply = replyFor(d.message_id);
    reply.el.classList.remove("streaming");
    reply.el.classList.add("failed");
    reply.el.querySelector(".text").textContent = CHAT_ERRORS[d.code] || d.message;
    setTyping(false);
  },
  "upload.status": (d) => updateUpload(d.upload_id, { status: d.status }),
  "upload.progress": (d) => updateUpload(d.upload_id, { progress: d }),
  "upload.done": (d) => updateUpload(d.upload_id, {
    status: UPLOAD_STATUS.COMPLETED, progress: { percent: 100 }, result: d.result,
  }),
  "upload.error": (d) => updateUpload(d.upload_id, { status: UPLOAD_STATUS.FAILED, error: d }),
  resync: () => refresh(),
  token_expired: () => askForToken("Your token has expired; paste a new one to continue."),
};

// Refetch everything over REST: after sign-in, and when history was too old to replay.
async function refresh() {
  try {
    const list = await api("GET", "/uploads");
    const items = Array.isArray(list) ? list : list.uploads || list.items || [];
    for (const upload of items.slice().reverse()) updateUpload(upload.upload_id, upload);
  } catch (error) {
    $("upload-error").textContent = describe(error);
  }
  if (state.conversationId) await loadConversation(state.conversationId);
}

// ---- Chat ---------------------------------------------------------------------------

function bubble(role, text) {
  const li = document.createElement("li");
  li.className = `msg ${role}`;
  const span = document.createElement("span");
  span.className = "text";
  span.textContent = text;
  li.append(span);
  $("chat-log").append(li);
  scrollChat();
  return li;
}

function addMeta(el, text) {
  if (!text || el.querySelector(".meta")) return;
  const meta = document.createElement("span");
  meta.className = "meta";
  meta.textContent = text;
  el.append(meta);
}

function replyFor(messageId) {
  let reply = state.replies.get(messageId);
  if (!reply) {
    // The first event of a reply takes over the placeholder shown since the POST.
    const el = state.pendingReply || bubble("assistant", "");
    state.pendingReply = null;
    el.classList.add("streaming");
    reply = { el, next: 0 };
    state.replies.set(messageId, reply);
  }
  return reply;
}

function ownsConversation(conversationId) {
  if (conversationId === state.conversationId) return true;
  // A reply may start streaming before the POST that started a new conversation returns.
  if (state.sending && !state.conversationId) {
    state.conversationId = conversationId;
    return true;
  }
  return false;
}

function setTyping(on) {
  $("typing").hidden = !on;
  // aria-busy holds screen-reader announcements until the reply is complete.
  $("chat-log").setAttribute("aria-busy", String(on));
}

function scrollChat() {
  const log = $("chat-log");
  log.scrollTop = log.scrollHeight;
}

async function loadConversation(conversationId) {
  try {
    const data = await api("GET", `/chat/conversations/${encodeURIComponent(conversationId)}/messages`);
    const messages = Array.isArray(data) ? data : data.messages || data.items || [];
    $("chat-log").replaceChildren();
    state.replies.clear();
    state.pendingReply = null;
    for (const m of messages) {
      const el = bubble(m.role === "user" ? "user" : "assistant", m.text || "");
      if (m.role === "user") continue;
      // Chunks are not replayed into a reply loaded here (its text would double);
      // chat.done brings the whole text of a reply still streaming.
      state.replies.set(m.message_id || m.id, { el, next: Infinity });
      if (m.status === MESSAGE_STATUS.FAILED) el.classList.add("failed");
      else if (m.status !== MESSAGE_STATUS.COMPLETED) el.classList.add("streaming");
    }
  } catch (error) {
    if (error.status === 404) newConversation();
    else $("chat-error").textContent = describe(error);
  }
}

function newConversation() {
  state.conversationId = "";
  sessionStorage.removeItem("herald_conversation");
  state.replies.clear();
  state.pendingReply = null;
  $("chat-log").replaceChildren();
  setTyping(false);
}

async function sendMessage(event) {
  event.preventDefault();
  const input = $("chat-input");
  const message = input.value.trim();
  if (!message) return;
  $("chat-error").textContent = "";
  $("chat-send").disabled = true;
  // Shown before the POST returns: the reply's first events may arrive before it does.
  const mine = bubble("user", message);
  const placeholder = bubble("assistant", "");
  placeholder.classList.add("streaming");
  state.pendingReply = placeholder;
  state.sending = true;
  setTyping(true);
  try {
    const body = { message };
    if (state.conversationId) body.conversation_id = state.conversationId;
    const accepted = await api("POST", "/chat/messages", body);
    state.conversationId = accepted.conversation_id;
    sessionStorage.setItem("herald_conversation", accepted.conversation_id);
    input.value = "";
  } catch (error) {
    mine.remove();
    if (state.pendingReply === placeholder) state.pendingReply = null;
    placeholder.remove();
    setTyping(false);
    $("chat-error").textContent = describe(error);
  } finally {
    state.sending = false;
    $("chat-send").disabled = false;
    input.focus();
  }
}

// ---- Uploads ------------------------------------------------------------------------

function uploadRow(uploadId, filename) {
  let row = state.uploads.get(uploadId);
  if (!row) {
    row = $("upload-tpl").content.firstElementChild.cloneNode(true);
    row.dataset.uploadId = uploadId;
    row.querySelector(".u-cancel").addEventListener("click", () => cancelUpload(uploadId));
    state.uploads.set(uploadId, row);
    $("uploads").prepend(row);
  }
  if (filename) row.querySelector(".u-name").textContent = filename;
  return row;
}

function updateUpload(uploadId, info) {
  const row = uploadRow(uploadId, info.filename);
  if (!row.querySelector(".u-name").textContent) row.querySelector(".u-name").textContent = uploadId;
  const current = row.dataset.status;
  // Once final, a late or replayed non-final status must not move it back.
  if (info.status && !(TERMINAL.has(current) && !TERMINAL.has(info.status))) {
    row.dataset.status = info.status;
    const badge = row.querySelector(".u-status");
    badge.textContent = info.status;
    badge.dataset.status = info.status;
  }
  if (info.progress && typeof info.progress.percent === "number") {
    const bar = row.querySelector(".u-bar");
    const percent = Math.max(Number(bar.value), info.progress.percent);
    bar.value = percent;
    bar.setAttribute("aria-label", `${row.querySelector(".u-name").textContent}: ${percent}%`);
    const rows = info.progress.rows_processed;
    row.querySelector(".u-progress").textContent =
      `${percent}%` + (typeof rows === "number" ? ` · ${rows.toLocaleString()} rows` : "");
  }
  if (info.error) row.querySelector(".u-error").textContent = describe(info.error);
  if (info.result) showResult(row, uploadId, info.result);
  row.querySelector(".u-cancel").hidden = TERMINAL.has(row.dataset.status);
}

function showResult(row, uploadId, result) {
  const box = row.querySelector(".u-result");
  const dl = document.createElement("dl");
  const facts = [["Rows", result.rows_total], ["Valid", result.rows_valid],
    ["Invalid", result.rows_invalid], ["Quality score", `${result.data_quality_score} / 100`]];
  for (const [name, value] of facts) {
    dl.append(el("dt", name), el("dd", value === undefined ? "–" : String(value)));
  }
  const table = el("table");
  table.append(el("caption", "Column profiles"));
  const head = el("tr");
  for (const h of ["Column", "Type", "Nulls", "Invalid", "Distinct", "Summary"]) {
    head.append(el("th", h, { scope: "col" }));
  }
  table.append(el("thead", head));
  const body = el("tbody");
  for (const c of result.columns || []) {
    const tr = el("tr");
    for (const v of [c.name, c.type, c.nulls, c.invalid, c.distinct, columnSummary(c)]) {
      tr.append(el("td", v === undefined || v === null ? "–" : String(v)));
    }
    body.append(tr);
  }
  table.append(body);
  const wrap = el("div", table, { class: "table-wrap" });
  // How the file was read that a person should check (two-digit years, a short header...).
  const notes = el("ul", undefined, { class: "u-warnings", "aria-label": "Warnings" });
  for (const w of result.warnings || []) notes.append(el("li", w && w.message ? w.message : String(w)));
  box.replaceChildren(dl, ...(notes.children.length ? [notes] : []), wrap);
  const link = row.querySelector(".u-errors");
  link.href = `/uploads/${encodeURIComponent(uploadId)}/errors`;
  link.setAttribute("download", "");
  link.hidden = !result.rows_invalid;
}

function columnSummary(c) {
  const parts = [];
  for (const key of ["min", "max", "mean"]) {
    if (c[key] !== undefined && c[key] !== null) parts.push(`${key} ${c[key]}`);
  }
  if (Array.isArray(c.top) && c.top.length) {
    parts.push("top " + c.top.slice(0, 3).map((t) => (t && t.value !== undefined ? t.value : t)).join(", "));
  }
  return parts.join(" · ");
}

function el(tag, content, attrs = {}) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (content instanceof Node) node.append(content);
  else if (content !== undefined) node.textContent = content;
  return node;
}

async function uploadFiles(files) {
  $("upload-error").textContent = "";
  for (const file of files) {
    const form = new FormData();
    form.append("file", file, file.name);
    try {
      const accepted = await api("POST", "/uploads", form);
      updateUpload(accepted.upload_id, { filename: file.name, status: accepted.status });
    } catch (error) {
      $("upload-error").textContent = `${file.name}: ${describe(error)}`;
    }
  }
}

async function cancelUpload(uploadId) {
  try {
    const data = await api("POST", `/uploads/${encodeURIComponent(uploadId)}/cancel`);
    updateUpload(uploadId, { status: (data && data.status) || UPLOAD_STATUS.CANCELLED });
  } catch (error) {
    uploadRow(uploadId).querySelector(".u-error").textContent = describe(error);
  }
}

// ---- Wiring ---------------------------------------------------------------------------

function wire() {
  $("token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const token = $("token-input").value.trim();
    if (token) signIn(token);
  });
  $("dev-token").addEventListener("click", async () => {
    try {
      const response = await fetch("/dev/token", { method: "POST" });
      if (!response.ok) throw new Error(`The server answered ${response.status}.`);
      signIn((await response.json()).token);
    } catch (error) {
      $("signin-note").textContent = `No local token: ${error.message}`;
    }
  });
  $("sign-out").addEventListener("click", () => {
    state.lastEventId = "";
    state.seen.clear();
    sessionStorage.removeItem("herald_last_event_id");
    newConversation();
    $("uploads").replaceChildren();
    state.uploads.clear();
    askForToken("Signed out.");
  });
  $("chat-form").addEventListener("submit", sendMessage);
  $("chat-input").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) {
      e.preventDefault(); // Enter sends, Shift+Enter starts a new line
      $("chat-form").requestSubmit();
    }
  });
  $("new-chat").addEventListener("click", newConversation);
  $("upload-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const input = $("file-input");
    if (input.files.length) uploadFiles([...input.files]).then(() => { input.value = ""; });
  });
  const zone = $("dropzone");
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    uploadFiles([...e.dataTransfer.files]);
  });
}

wire();
offerDevToken();
if (state.token && !tokenExpired(state.token)) signIn(state.token);
else askForToken(state.token ? "Your token has expired; paste a new one." : "");
