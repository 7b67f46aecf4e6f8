// Herald's browser page: sign-in, chat and CSV uploads over one EventSource.
// Contract: API.md (HTTP, SSE and event names). No build step, no dependencies.
"use strict";

const $ = (id) => document.getElementById(id);
// The server's vocabularies (core/eventkinds.py, core/statuses.py), written out because
// the page has no build step; tests/test_vocabulary.py checks they match exactly.
const EVENT_TYPES = ["chat.chunk", "chat.done", "chat.error", "chat.restart", "upload.status",
  "upload.progress", "upload.done", "upload.error", "resync", "token_expired", "heartbeat"];
const UPLOAD_STATUS = {
  QUEUED: "queued", VALIDATING: "validating", PROCESSING: "processing",
  COMPLETED: "completed", FAILED: "failed", CANCELLED: "cancelled",
};
const MESSAGE_STATUS = {
  QUEUED: "queued", ANSWERED: "answered", BLOCKED: "blocked", FLAGGED: "flagged",
  COMPLETED: "completed", FAILED: "failed", CANCELLED: "cancelled", STREAMING: "streaming",
};
const TERMINAL = new Set([UPLOAD_STATUS.COMPLETED, UPLOAD_STATUS.FAILED, UPLOAD_STATUS.CANCELLED]);
// A stream that sends nothing for two heartbeat periods (plus this) is presumed dead.
const HEARTBEAT_GRACE_MS = 1000;
const CHAT_ERRORS = {
  message_blocked: "This message was blocked by the safety check: it looks like an attempt " +
    "to override the assistant's instructions. Please rephrase it.",
  llm_unavailable: "The assistant is temporarily unavailable after repeated failures. " +
    "Please try again in a minute.",
  llm_timeout: "The assistant took too long to answer. Please try again.",
  llm_error: "The assistant failed to answer. Please try again.",
  internal_error: "Something went wrong on our side. Please try again.",
  message_too_large: "That message is too long. Please shorten it.",
};

const state = {
  token: sessionStorage.getItem("herald_token") || "",
  lastEventId: sessionStorage.getItem("herald_last_event_id") || "",
  conversationId: sessionStorage.getItem("herald_conversation") || "",
  source: null, // the EventSource
  reconnects: 0,
  retryTimer: null,
  heartbeatMs: 15000, // replaced by the server's own figure (its first heartbeat event)
  watchdog: null, // fires when the stream has been silent too long
  seen: new Set(), // event ids already applied (belt and braces over Last-Event-ID)
  sending: false, // a chat POST is in flight
  pendingReply: null, // the assistant bubble waiting for its first chunk
  // user message_id -> {el, base: text of chunks 0..from-1, from, parts: index -> text,
  // done}; chat.* events name the user's message, history rows name it in reply_to.
  replies: new Map(),
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
  // An old token left in the box would have a new one pasted after it.
  $("token-input").value = "";
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
  // Messages about an earlier, refused token no longer apply.
  for (const id of ["signin-note", "chat-error", "upload-error"]) $(id).textContent = "";
  // A new EventSource must be told where the old one stopped: pass the id explicitly.
  connect();
  refresh();
  $("chat-input").focus();
}

async function offerDevToken() {
  // Answered {"available": false} outside dev mode (never a 404 in the console).
  const response = await fetch("/dev/token").catch(() => null);
  const body = response && response.ok ? await response.json().catch(() => null) : null;
  $("dev-token").hidden = !(body && body.available === true);
}

// ---- The event stream -------------------------------------------------------------------

function setConn(kind, text) {
  $("conn").dataset.state = kind;
  $("conn-text").textContent = text;
}

function connect() {
  disconnect();
  // heartbeat=event: named heartbeats the page can see (comments never reach listeners).
  const params = new URLSearchParams({ token: state.token, heartbeat: "event" });
  if (state.lastEventId) params.set("last_event_id", state.lastEventId);
  const source = new EventSource(`/events?${params}`);
  state.source = source;
  setConn("retry", state.reconnects ? `Reconnecting (${state.reconnects})…` : "Connecting…");
  note(`connect last_event_id=${state.lastEventId || "-"}`);
  watch();
  source.onopen = () => {
    note("open");
    watch();
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
    clearTimeout(state.watchdog);
    if (tokenExpired(state.token)) return askForToken("Your token has expired; paste a new one.");
    const delay = Math.min(30, 2 ** Math.min(state.reconnects, 5));
    setConn("down", `Disconnected; retrying in ${delay} s`);
    state.retryTimer = setTimeout(connect, delay * 1000);
  };
  for (const type of EVENT_TYPES) source.addEventListener(type, onEvent);
}

// A path that freezes without a reset (a sleeping laptop's Wi-Fi, a NAT dropping the
// flow) leaves EventSource "open" for ever: reconnect when heartbeats stop coming.
function watch() {
  clearTimeout(state.watchdog);
  state.watchdog = setTimeout(() => {
    note("heartbeat missed; reconnecting");
    state.reconnects += 1;
    connect();
    // Without a position to resume from, what happened meanwhile comes over REST.
    if (!state.lastEventId) refresh();
  }, 2 * state.heartbeatMs + HEARTBEAT_GRACE_MS);
}

function disconnect() {
  clearTimeout(state.watchdog);
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
  watch();
  // A heartbeat has no id of its own (event.lastEventId repeats the last one's).
  if (event.type === "heartbeat") return HANDLERS.heartbeat(JSON.parse(event.data));
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
    // Already shown: finished, part of the text read back over REST, or a double.
    if (reply.done || d.index < reply.from || reply.parts[d.index] !== undefined) return;
    reply.parts[d.index] = d.text;
    render(reply);
    setTyping(true);
    scrollChat();
  },
  "chat.done": (d) => {
    if (!ownsConversation(d.conversation_id)) return;
    const reply = replyFor(d.message_id);
    reply.done = true;
    reply.el.querySelector(".text").textContent = d.text; // the whole reply wins
    reply.el.classList.remove("streaming");
    if (d.cancelled) addMeta(reply.el, "stopped");
    else addMeta(reply.el, d.model ? `answered by ${d.model}` : "");
    endActive(d.message_id);
    setTyping(false);
    scrollChat();
  },
  // The reply starts over (a retry after a crash, a worker shutting down): the text so
  // far goes, and the chunks that follow count from index 0 again (docs/api.md).
  "chat.restart": (d) => {
    if (!ownsConversation(d.conversation_id)) return;
    const reply = replyFor(d.message_id);
    if (reply.done) return;
    Object.assign(reply, { base: "", from: 0, parts: [] });
    render(reply);
  },
  "chat.error": (d) => {
    if (!ownsConversation(d.conversation_id)) return;
    const reply = replyFor(d.message_id);
    reply.done = true;
    reply.el.classList.remove("streaming");
    reply.el.classList.add("failed");
    reply.el.querySelector(".text").textContent = CHAT_ERRORS[d.code] || d.message;
    endActive(d.message_id);
    setTyping(false);
  },
  "upload.status": (d) => updateUpload(d.upload_id, { status: d.status }),
  "upload.progress": (d) => updateUpload(d.upload_id, { progress: d }),
  "upload.done": (d) => updateUpload(d.upload_id, {
    status: UPLOAD_STATUS.COMPLETED,
    progress: { percent: 100, rows_processed: d.result && d.result.rows_total },
    result: d.result,
  }),
  "upload.error": (d) => updateUpload(d.upload_id, { status: UPLOAD_STATUS.FAILED, error: d }),
  resync: () => refresh(),
  heartbeat: (d) => {
    const seconds = Number(d.interval_seconds);
    if (seconds > 0) state.heartbeatMs = seconds * 1000;
  },
  token_expired: () => askForToken("Your token has expired; paste a new one to continue."),
};

// Refetch everything over REST: after sign-in, and when history was too old to replay.
async function refresh() {
  try {
    const list = await api("GET", "/uploads");
    const items = Array.isArray(list) ? list : list.uploads || list.items || [];
    for (const upload of items.slice().reverse()) updateUpload(upload.upload_id, upload);
  } catch (error) {
    // A refused token already brought back the sign-in box, which says so.
    if (error.status !== 401) $("upload-error").textContent = describe(error);
  }
  if (state.conversationId) await loadConversation(state.conversationId);
  note("refreshed");
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
    reply = { el, base: "", from: 0, parts: [], done: false };
    state.replies.set(messageId, reply);
  }
  return reply;
}

function render(reply) {
  // Sparse parts join holes as "": a gap fills in when its chunk arrives.
  reply.el.querySelector(".text").textContent = reply.base + reply.parts.slice(reply.from).join("");
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
    // Events may have arrived while the request was out: keep what they brought.
    const before = state.replies;
    state.replies = new Map();
    state.pendingReply = null;
    $("chat-log").replaceChildren();
    for (const m of messages) {
      if (m.role === "user") {
        bubble("user", m.text || "");
        continue;
      }
      const key = m.reply_to || m.message_id || m.id;
      const seen = before.get(key);
      if (seen && seen.done) {
        $("chat-log").append(seen.el); // chat.done or chat.error already settled it
        state.replies.set(key, seen);
      } else {
        state.replies.set(key, replyFromHistory(m, seen));
      }
    }
    // Replies that started after the history was read.
    for (const [key, reply] of before) {
      if (!state.replies.has(key)) {
        $("chat-log").append(reply.el);
        state.replies.set(key, reply);
      }
    }
    setTyping([...state.replies.values()].some((r) => !r.done));
    scrollChat();
  } catch (error) {
    if (error.status === 404) newConversation();
    else if (error.status !== 401) $("chat-error").textContent = describe(error);
  }
}

// An assistant message read back over REST. One still streaming holds its first
// `chunks` chunks in `text`; later chunk events add to it (docs/api.md).
function replyFromHistory(m, seen) {
  const streaming = m.status === MESSAGE_STATUS.STREAMING;
  const failed = m.status === MESSAGE_STATUS.FAILED;
  const text = failed ? CHAT_ERRORS[m.error_code] || m.text || CHAT_ERRORS.internal_error : m.text || "";
  const reply = {
    el: bubble("assistant", ""),
    base: text,
    from: streaming ? Number(m.chunks) || 0 : Infinity,
    parts: [],
    done: !streaming,
  };
  if (streaming && seen) {
    if (seen.from > reply.from) Object.assign(reply, { base: seen.base, from: seen.from });
    reply.parts = seen.parts;
  }
  if (streaming) reply.el.classList.add("streaming");
  if (failed) reply.el.classList.add("failed");
  if (m.model && !streaming && !failed) addMeta(reply.el, `answered by ${m.model}`);
  render(reply);
  return reply;
}

function newConversation() {
  state.conversationId = "";
  sessionStorage.removeItem("herald_conversation");
  state.replies.clear();
  state.pendingReply = null;
  $("chat-log").replaceChildren();
  setTyping(false);
}

// The stop button belongs to the reply being written; it goes when that reply ends.
function endActive(messageId) {
  if (state.activeMessage !== messageId) return;
  state.activeMessage = null;
  $("chat-stop").hidden = true;
}

async function stopReply() {
  const messageId = state.activeMessage;
  if (!messageId) return;
  $("chat-stop").disabled = true;
  try {
    await api("POST", `/chat/messages/${encodeURIComponent(messageId)}/cancel`);
  } catch (error) {
    // 409: it ended meanwhile; its chat.done or chat.error says how.
    if (error.status !== 409) $("chat-error").textContent = describe(error);
  } finally {
    $("chat-stop").disabled = false;
  }
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
    state.activeMessage = accepted.message_id;
    $("chat-stop").hidden = false;
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
    // An event without a row count (a replayed status, say) keeps the last one shown.
    const given = info.progress.rows_processed;
    if (typeof given === "number") row.dataset.rows = String(Math.max(given, Number(row.dataset.rows) || 0));
    const rows = row.dataset.rows === undefined ? null : Number(row.dataset.rows);
    row.querySelector(".u-progress").textContent =
      `${percent}%` + (rows === null ? "" : ` · ${rows.toLocaleString()} rows`);
  }
  if (info.error) row.querySelector(".u-error").textContent = describe(info.error);
  if (info.result) showResult(row, uploadId, info.result);
  row.querySelector(".u-cancel").hidden = TERMINAL.has(row.dataset.status);
}

function showResult(row, uploadId, result) {
  const box = row.querySelector(".u-result");
  const dl = document.createElement("dl");
  const facts = [["Rows", result.rows_total], ["Valid", result.rows_valid],
    ["Invalid", result.rows_invalid], ["Quality score", `${round(result.data_quality_score)} / 100`]];
  for (const [name, value] of facts) {
    dl.append(el("dt", name), el("dd", value === undefined ? "–" : round(value)));
  }
  const columns = result.columns || [];
  const table = el("table");
  table.append(el("caption", `Column profiles (${columns.length.toLocaleString()} columns)`));
  const head = el("tr");
  for (const h of ["Column", "Type", "Nulls", "Invalid", "Distinct", "Summary"]) {
    head.append(el("th", h, { scope: "col" }));
  }
  table.append(el("thead", head));
  const body = el("tbody");
  for (const c of columns) {
    const tr = el("tr");
    for (const v of [c.name, c.type, c.nulls, c.invalid, c.distinct, columnSummary(c)]) {
      tr.append(el("td", v === undefined || v === null ? "–" : round(v)));
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
    if (c[key] !== undefined && c[key] !== null) parts.push(`${key} ${round(c[key])}`);
  }
  if (Array.isArray(c.top) && c.top.length) {
    parts.push("top " + c.top.slice(0, 3).map((t) => round(t && t.value !== undefined ? t.value : t)).join(", "));
  }
  return parts.join(" · ");
}

// Profiles are computed in floating point (91.88289835164835): show two decimals, or
// three significant digits below 1, and whole numbers and text exactly as they are.
function round(value) {
  if (typeof value !== "number" || Number.isInteger(value) || !Number.isFinite(value)) {
    return String(value);
  }
  const magnitude = Math.abs(value);
  const decimals = magnitude >= 1 ? 2 : Math.min(10, 2 - Math.floor(Math.log10(magnitude)));
  return String(Number(value.toFixed(decimals)));
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
  $("chat-stop").addEventListener("click", stopReply);
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
    if (!input.files.length) {
      $("upload-error").textContent = "Choose a CSV file first (or drop one on the box above).";
      input.focus();
      return;
    }
    uploadFiles([...input.files]).then(() => { input.value = ""; });
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
