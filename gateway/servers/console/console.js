// The gateway's admin console: one page speaking the admin websocket API (SPEC.md 13).
//
// Theory of operation: one Connection sends JSON requests and hands back each reply as a
// Promise keyed by the request id; audit records pushed by a subscription go to the audit
// view instead. `state` holds what the server last said (status, tokens, the audit
// subscription); render functions turn it into DOM, always through textContent, never
// innerHTML. Every action reports success in a notice or the server's error message where it
// was asked (the dialog, or a notice for one-click actions). The session token lives in
// sessionStorage so a reload logs in again; the page never stores a password.
//
// The Content-Security-Policy forbids inline scripts and styles: everything visual is a
// class in console.css, toggled from here.

const TOKEN_KEY = "gateway.session";
const REQUEST_TIMEOUT_MS = 60000; // Argon2id on a busy gateway can take seconds, not minutes
const REFRESH_GAP_MS = 500; // at most one `status` per this interval from live events
const POLL_MS = 15000; // background status refresh (sessions, disk) while the page is visible
const MAX_AUDIT_ROWS = 1000; // the newest this many matching records stay in the table
// While the history replays, records are buffered and drawn this often, newest only: 16,000
// records then cost 16,000 JSON parses and at most MAX_AUDIT_ROWS rows per batch, not a DOM
// update each.
const AUDIT_BATCH_MS = 150;
const MINUTES = 1440; // the traffic chart: one day of one-minute buckets (SPEC.md 13.3)
const NOTICE_MS = 6000;
const ERROR_NOTICE_MS = 12000;

// Audit events that change a mailbox's row or the traffic chart: they trigger a (debounced)
// status refresh.
const REFRESH_EVENTS = new Set([
  "MessageAccepted",
  "MailboxCreated",
  "MailboxUpdated",
  "MailboxDeleted",
  "MailboxKeyReset",
  "MailboxKeyRewrapped",
  "MessagesExpunged",
  "MailboxAlarmRaised",
  "MailboxAlarmCleared",
  "Pop3SessionEnded",
  "Pop3SessionProgress",
  "Pop3ProxySessionEnded",
  "SmtpProxySessionEnded",
]);

// The choices of the audit view's event filter; a group filters on several types at once.
const EVENT_GROUPS = [
  ["Mail flow", ["MessageAccepted", "DeliveryRefused", "SmtpSessionEnded"]],
  ["Retrieval and proxies", ["Pop3Login", "Pop3SessionEnded", "Pop3ProxySessionEnded",
    "SmtpLogin", "SmtpProxySessionEnded"]],
  ["Mailbox changes", ["MailboxCreated", "MailboxUpdated", "MailboxDeleted", "MailboxKeyReset",
    "MailboxKeyRewrapped", "MessagesExpunged"]],
  ["Admin activity", ["AdminLogin", "AdminRequestFailed", "AdminPasswordChanged",
    "AdminAccountCreated", "ApiTokenCreated", "ApiTokenRevoked", "AdminSessionStarted",
    "AdminSessionEnded", "AdminCredentialsMigrated"]],
  ["Backlog alarms and free space", ["MailboxAlarmRaised", "MailboxAlarmCleared",
    "StoreSpaceLow", "StoreSpaceRestored"]],
  ["Gateway and storage", ["GatewayStarted", "GatewayStopped", "LogCompacted",
    "LogTailTruncated"]],
];

// -- small helpers ---------------------------------------------------------------------------

function $(testid, root = document) {
  return root.querySelector(`[data-testid="${testid}"]`);
}

// el("td", {className: "num", title: "..."}, "text", childElement, ...): text is always text.
function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null) continue;
    if (key === "dataset") Object.assign(node.dataset, value);
    else if (key === "testid") node.dataset.testid = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key in node) node[key] = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function show(node, visible) {
  node.hidden = !visible;
}

// Python's isoformat carries microseconds; Date wants at most milliseconds everywhere.
function parseTime(text) {
  if (!text) return null;
  const date = new Date(String(text).replace(/(\.\d{3})\d+/, "$1"));
  return Number.isNaN(date.getTime()) ? null : date;
}

function pad(number) {
  return String(number).padStart(2, "0");
}

// The one format of every point in time on the page (SPEC.md 13.5): "2025-03-14 08:26:53 UTC",
// the CLI's UTC with seconds, the same in every browser and time zone; its tooltip has the
// full RFC 3339 time (timeNode).
function formatTime(date) {
  if (!date) return "";
  return `${date.getUTCFullYear()}-${pad(date.getUTCMonth() + 1)}-${pad(date.getUTCDate())} `
    + `${pad(date.getUTCHours())}:${pad(date.getUTCMinutes())}:${pad(date.getUTCSeconds())} UTC`;
}

// The full RFC 3339 UTC form of a server time: its own text (microseconds and all) when it is
// UTC already, else the browser's (milliseconds).
function rfc3339(text, date) {
  const value = String(text ?? "");
  if (/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|\+00:00)$/.test(value)) {
    return value.replace(/\+00:00$/, "Z");
  }
  return date ? date.toISOString() : "";
}

// A <time> element: `label` (the formatted time unless given), RFC 3339 in its tooltip.
function timeNode(text, { label, testid } = {}) {
  const date = parseTime(text);
  if (!date) return el("span", { testid }, label ?? "");
  const exact = rfc3339(text, date);
  return el("time", { dateTime: exact, title: exact, testid }, label ?? formatTime(date));
}

// An age: how long ago, as a duration ("3 h 5 min ago"); timeNode puts the time in its tooltip.
function formatAgo(date) {
  if (!date) return "never";
  const seconds = (Date.now() - date.getTime()) / 1000;
  if (seconds < 45) return "just now";
  return `${formatDuration(seconds)} ago`;
}

function formatDuration(seconds) {
  const s = Math.max(0, Math.floor(seconds || 0));
  const days = Math.floor(s / 86400);
  const hours = Math.floor((s % 86400) / 3600);
  const minutes = Math.floor((s % 3600) / 60);
  if (days > 0) return `${days} d ${hours} h`;
  if (hours > 0) return `${hours} h ${minutes} min`;
  if (minutes > 0) return `${minutes} min ${s % 60} s`;
  return `${s} s`;
}

const BYTE_UNITS = ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB"];

function formatBytes(count) {
  let value = Number(count) || 0;
  let unit = 0;
  while (value >= 1024 && unit < BYTE_UNITS.length - 1) {
    value /= 1024;
    unit += 1;
  }
  const digits = unit === 0 || value >= 100 ? 0 : 1;
  return `${value.toFixed(digits)} ${BYTE_UNITS[unit]}`;
}

function plural(count, word, many = `${word}s`) {
  return `${count.toLocaleString()} ${count === 1 ? word : many}`;
}

// "the session has ended; log in again" -> "The session has ended; log in again."
function sentence(text) {
  const trimmed = String(text).trim();
  const capital = trimmed.charAt(0).toUpperCase() + trimmed.slice(1);
  return /[.!?]$/.test(capital) ? capital : `${capital}.`;
}

function shortId(id) {
  return id ? id.slice(0, 8) : "";
}

// -- the connection --------------------------------------------------------------------------

class ApiError extends Error {
  constructor(code, message, retryAfter = null) {
    super(message);
    this.code = code;
    this.retryAfter = retryAfter;
  }
}

const DISCONNECTED = "disconnected"; // our code for a request cut off by a closed connection
const CLOSE_LOGGED_OUT = 4001; // the gateway ended this connection's session

class Connection {
  constructor({ onPush, onClose }) {
    this.onPush = onPush;
    this.onClose = onClose;
    this.socket = null;
    this.nextId = 1;
    this.pending = new Map();
    this.closing = false;
  }

  get isOpen() {
    return this.socket !== null && this.socket.readyState === WebSocket.OPEN;
  }

  open() {
    const scheme = location.protocol === "http:" ? "ws:" : "wss:";
    return new Promise((resolve, reject) => {
      const socket = new WebSocket(`${scheme}//${location.host}/api`);
      this.socket = socket;
      let opened = false;
      socket.addEventListener("open", () => {
        opened = true;
        resolve();
      });
      socket.addEventListener("message", (event) => this.receive(event.data));
      socket.addEventListener("close", (event) => {
        for (const waiter of this.pending.values()) {
          clearTimeout(waiter.timer);
          waiter.reject(new ApiError(DISCONNECTED, "the connection to the gateway closed"));
        }
        this.pending.clear();
        if (!opened) {
          reject(new ApiError(DISCONNECTED, "cannot reach the gateway's admin API"));
        } else if (!this.closing) {
          this.onClose(event.code, event.reason);
        }
      });
    });
  }

  // One request; resolves with the reply, rejects with ApiError (the server's code and message).
  request(op, fields = {}) {
    if (!this.isOpen) {
      return Promise.reject(new ApiError(DISCONNECTED, "not connected to the gateway"));
    }
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new ApiError("timeout", `the gateway did not answer ${op} in time`));
      }, REQUEST_TIMEOUT_MS);
      this.pending.set(id, { resolve, reject, timer });
      this.socket.send(JSON.stringify({ ...fields, op, id }));
    });
  }

  receive(data) {
    let message;
    try {
      message = JSON.parse(data);
    } catch {
      return;
    }
    if (message.type === "audit" || message.type === "audit.caught-up") {
      this.onPush(message);
      return;
    }
    const waiter = this.pending.get(message.id);
    if (!waiter) return;
    this.pending.delete(message.id);
    clearTimeout(waiter.timer);
    if (message.type === "error") {
      waiter.reject(new ApiError(message.code, message.message, message.retry_after ?? null));
    } else {
      waiter.resolve(message);
    }
  }

  close(reason) {
    this.closing = true;
    if (this.socket !== null) this.socket.close(1000, reason);
  }
}

// -- state -----------------------------------------------------------------------------------

const state = {
  connection: null,
  actor: null,
  status: null,
  statusReceived: 0, // Date.now() when `status` arrived, for the ticking uptime
  mailboxIndex: new Map(), // mailbox_id -> view, rebuilt with the list (1,000 audit rows look up)
  tokens: [],
  audit: {
    generation: 0, // bumped by every (re)subscription; stale replies are dropped
    subscription: null,
    waiting: false, // a subscribe request is in flight
    early: [], // pushes that overtook the `subscribed` reply
    caughtUp: false,
    lastSeq: null,
    rows: 0, // rows in the table
    pending: [], // received, not drawn yet (the newest 2 × MAX_AUDIT_ROWS at most)
    matched: 0, // records this subscription delivered
    dropped: false, // some matching records are not in the table (older than its rows)
    flushTimer: null,
    startedAt: 0, // performance.now() of the subscribe request
  },
};

function mailboxById(id) {
  return state.mailboxIndex.get(id) ?? null;
}

function setMailboxes(mailboxes) {
  state.status.mailboxes = mailboxes;
  state.mailboxIndex = new Map(mailboxes.map((m) => [m.mailbox_id, m]));
  renderMailboxes();
}

function upsertMailbox(view) {
  if (!state.status) return;
  const others = state.status.mailboxes.filter((m) => m.mailbox_id !== view.mailbox_id);
  setMailboxes([...others, view]);
}

function dropMailbox(id) {
  if (!state.status) return;
  setMailboxes(state.status.mailboxes.filter((m) => m.mailbox_id !== id));
}

// -- notices ---------------------------------------------------------------------------------

function notify(text, kind = "ok") {
  const close = el("button", { type: "button", className: "notice-close", title: "Dismiss" }, "×");
  const notice = el("div", { className: `notice ${kind}`, testid: "notice", role: "status" },
    el("span", {}, text), close);
  const remove = () => notice.remove();
  close.addEventListener("click", remove);
  $("notices").prepend(notice);
  setTimeout(remove, kind === "error" ? ERROR_NOTICE_MS : NOTICE_MS);
}

function describeError(error) {
  if (error instanceof ApiError) {
    if (error.code === "throttled" && error.retryAfter) {
      return `${error.message} (try again in ${Math.ceil(error.retryAfter)} s)`;
    }
    return error.message;
  }
  return `unexpected error: ${error?.message ?? error}`;
}

// Reports an error of a background or one-click action; a session that ended sends the page
// back to the login form instead.
function reportError(error, what) {
  if (sessionEnded(error)) return;
  if (error instanceof ApiError && error.code === DISCONNECTED) return; // the banner says it
  notify(what ? `${what}: ${describeError(error)}` : describeError(error), "error");
}

// -- views -----------------------------------------------------------------------------------

function showView(name) {
  for (const node of document.querySelectorAll("[data-when]")) {
    show(node, node.dataset.when === name);
  }
}

function showLogin(message = "", kind = "error") {
  closeAllDialogs();
  state.actor = null;
  showView("login");
  const error = $("login-error");
  error.textContent = message;
  error.className = kind === "error" ? "error" : "info";
  show(error, Boolean(message));
  const password = $("login-password");
  password.value = "";
  password.focus();
}

function setLinkState(online) {
  const node = $("link-state");
  node.classList.toggle("online", online);
  node.textContent = online ? "connected" : "offline";
}

// -- dashboard -------------------------------------------------------------------------------

function renderDashboard() {
  const status = state.status;
  if (!status) return;
  document.title = `${status.hostname} · Mail archiving gateway`;
  $("header-hostname").textContent = status.hostname;
  renderUptime();
  $("stat-version").replaceChildren(`version ${status.version} · started `,
    timeNode(status.started_at));
  $("stat-sessions").textContent = status.sessions.toLocaleString();
  $("stat-admin").textContent = `mail sessions open now · ${plural(status.admin_connections, "admin connection")}`;
  $("stat-storage").textContent = formatBytes(status.storage_bytes);
  $("stat-free").textContent = `${formatBytes(status.disk_free_bytes)} free on the disk`;
  const total = status.storage_bytes + status.disk_free_bytes;
  const used = total > 0 ? status.storage_bytes / total : 0;
  const meter = $("stat-meter");
  // Tenths of the bar, as classes: the CSP forbids setting a width from here.
  meter.className = `meter-fill w${Math.min(10, Math.round(used * 10))}`;
  meter.parentElement.title = `${(used * 100).toFixed(1)} % of the space the archive could use`;
  renderCertificate(status.certificate);
  renderTraffic(status);
  renderListeners(status.listeners);
}

function renderUptime() {
  const status = state.status;
  if (!status) return;
  const seconds = status.uptime_seconds + (Date.now() - state.statusReceived) / 1000;
  $("stat-uptime").textContent = formatDuration(seconds);
}

function renderCertificate(certificate) {
  const subject = $("stat-cert");
  const expiry = $("stat-cert-expiry");
  show($("stat-cert-fingerprint-row"), Boolean(certificate));
  if (!certificate) {
    subject.textContent = "none";
    expiry.textContent = "";
    return;
  }
  subject.textContent = certificate.subject;
  // What `gateway status` prints and `--fingerprint` takes: compare it before trusting.
  $("stat-cert-sha256").textContent = certificate.sha256;
  const expires = parseTime(certificate.expires_at);
  const days = expires ? Math.floor((expires.getTime() - Date.now()) / 86400000) : 0;
  expiry.replaceChildren(days < 0 ? "expired on " : "expires ", timeNode(certificate.expires_at),
    days < 0 ? "" : ` (in ${plural(days, "day")})`);
  expiry.classList.toggle("alert", days < 14);
}

// -- traffic chart ---------------------------------------------------------------------------

const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attributes = {}) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, String(value));
  return node;
}

// The server's clock now, from the status reply (the chart's right edge is its minute).
function serverNow(status) {
  const started = parseTime(status.started_at);
  const base = started ? started.getTime() + status.uptime_seconds * 1000 : state.statusReceived;
  return base + (Date.now() - state.statusReceived);
}

// 1, 2, 5, 10, 20, 50, ...: the smallest at or above `value`.
function niceCeiling(value) {
  const magnitude = 10 ** Math.floor(Math.log10(Math.max(1, value)));
  return [1, 2, 5, 10].map((step) => step * magnitude).find((top) => top >= value);
}

// Step path of one series over a 1440 × 100 box, scaled so that `top` reaches the top.
function stepPath(series, top, closed) {
  const y = (count) => (100 - (count / top) * 100).toFixed(2);
  const parts = [closed ? "M0 100" : `M0 ${y(series[0])}`];
  for (let i = 0; i < series.length; i += 1) parts.push(`L${i} ${y(series[i])}H${i + 1}`);
  if (closed) parts.push(`L${series.length} 100Z`);
  return parts.join("");
}

function renderTraffic(status) {
  const end = Math.floor(serverNow(status) / 60000);
  const first = end - MINUTES + 1;
  const accepted = new Array(MINUTES).fill(0);
  const retrieved = new Array(MINUTES).fill(0);
  for (const count of status.messages_per_minute ?? []) {
    const at = parseTime(count.minute);
    const index = at ? Math.floor(at.getTime() / 60000) - first : -1;
    if (index < 0 || index >= MINUTES) continue;
    accepted[index] = count.accepted;
    retrieved[index] = count.retrieved;
  }
  const sum = (series) => series.reduce((total, n) => total + n, 0);
  const top = niceCeiling(Math.max(1, ...accepted, ...retrieved));
  state.traffic = { first, accepted, retrieved };
  $("traffic-in-total").textContent = sum(accepted).toLocaleString();
  $("traffic-out-total").textContent = sum(retrieved).toLocaleString();
  $("traffic-peak").textContent = `${top.toLocaleString()}/min`;
  const chart = svg("svg", {
    viewBox: `0 0 ${MINUTES} 100`, preserveAspectRatio: "none", role: "img",
    "aria-label": `Messages per minute over the last 24 hours: ${sum(accepted)} in, ${sum(retrieved)} out`,
    "data-testid": "traffic-svg", "data-in": sum(accepted), "data-out": sum(retrieved), "data-top": top,
  });
  for (const level of [25, 50, 75]) {
    chart.append(svg("line", { class: "gridline", x1: 0, x2: MINUTES, y1: level, y2: level }));
  }
  chart.append(
    svg("path", { class: "series-in", d: stepPath(accepted, top, true), "data-testid": "traffic-in" }),
    svg("path", { class: "series-out", d: stepPath(retrieved, top, false), "data-testid": "traffic-out" }),
  );
  $("traffic-chart").replaceChildren(chart);
}

function setupTraffic() {
  const plot = $("traffic-chart");
  plot.addEventListener("pointermove", (event) => {
    const traffic = state.traffic;
    if (!traffic) return;
    // A pixel may span several minutes (1440 in a few hundred pixels): all of them.
    const box = plot.getBoundingClientRect();
    const at = (x) => Math.min(MINUTES, Math.max(0,
      Math.floor(((x - box.left) / Math.max(1, box.width)) * MINUTES)));
    const from = Math.min(MINUTES - 1, at(event.clientX));
    const to = Math.max(from + 1, at(event.clientX + 1));
    const sum = (series) => series.slice(from, to).reduce((total, n) => total + n, 0);
    const start = new Date((traffic.first + from) * 60000);
    $("traffic-readout").textContent = `${formatTime(start)}`
      + `${to - from > 1 ? ` and the ${to - from - 1} minutes after` : ""}: `
      + `${plural(sum(traffic.accepted), "message")} in, ${sum(traffic.retrieved).toLocaleString()} out`;
  });
}

function renderListeners(listeners) {
  const rows = listeners.map((listener) => el("tr", {},
    el("td", {}, listener.name),
    el("td", {}, listener.protocol),
    el("td", { className: "mono" }, `${listener.address}:${listener.port}`),
    el("td", { testid: "listener-tls" }, listener.tls)));
  $("listeners").tBodies[0].replaceChildren(...rows);
}

// -- mailboxes -------------------------------------------------------------------------------

function renderMailboxes() {
  const mailboxes = [...(state.status?.mailboxes ?? [])].sort((a, b) =>
    a.name.localeCompare(b.name) || a.mailbox_id.localeCompare(b.mailbox_id));
  // Rebuilding the rows loses focus; put it back on the same button of the same mailbox.
  const focused = document.activeElement;
  const focusRow = focused?.closest?.("[data-testid=mailbox-row]");
  const focusKey = focusRow ? [focusRow.dataset.mailboxId, focused.dataset.testid] : null;

  $("mailbox-rows").replaceChildren(...mailboxes.map(mailboxRow));
  $("mailbox-count").textContent = mailboxes.length ? `(${mailboxes.length})` : "";
  show($("mailbox-empty"), mailboxes.length === 0);
  renderMailboxFilter(mailboxes);

  if (focusKey) {
    const row = document.querySelector(`[data-testid=mailbox-row][data-mailbox-id="${focusKey[0]}"]`);
    const again = row && focusKey[1] ? $(focusKey[1], row) : null;
    if (again) again.focus();
  }
}

function mailboxRow(mailbox) {
  const suspended = mailbox.status === "suspended";
  const lastDelivery = parseTime(mailbox.last_delivery);
  const lastRetrieval = parseTime(mailbox.last_retrieval);
  const oldest = parseTime(mailbox.oldest_waiting_at);
  const alarms = mailbox.alarms ?? [];
  const unreadable = mailbox.unreadable_messages ?? 0;
  const statusCell = el("td", { className: "status-cell", dataset: { label: "Status" } },
    el("span", { className: `badge ${mailbox.status}`, testid: "cell-status" }, mailbox.status));
  if (mailbox.damaged) {
    statusCell.append(" ", el("span", { className: "badge damaged", title: mailbox.damaged }, "damaged"));
  }
  const alarmText = {
    age: "its oldest message has waited too long: is the archive still fetching?",
    size: "too many bytes are waiting: is the archive still fetching?",
    quiet: "no mail for too long: is the journal rule still sending?",
  };
  for (const alarm of alarms) {
    statusCell.append(" ", el("span", {
      className: "badge alarm", testid: "badge-alarm", title: alarmText[alarm] ?? alarm,
    }, `alarm: ${alarm}`));
  }
  const action = (testid, label, handler, extra = {}) => el("button", {
    type: "button", className: "small", testid, onclick: () => handler(mailbox), ...extra,
  }, label);

  return el("tr", {
    testid: "mailbox-row",
    dataset: { mailboxId: mailbox.mailbox_id, address: mailbox.address, status: mailbox.status },
    className: suspended ? "suspended" : "",
  },
  // Named as the CLI names it: "name [1a2b3c4d]" (names need not be unique).
  el("td", { className: "name-cell", dataset: { label: "Name" } },
    el("div", { className: "name" },
      el("span", { testid: "cell-name" }, mailbox.name),
      el("span", { className: "short-id mono muted", title: mailbox.mailbox_id, testid: "cell-id" },
        `[${shortId(mailbox.mailbox_id)}]`)),
    mailbox.description
      ? el("div", { className: "muted small clip", title: mailbox.description }, mailbox.description)
      : null),
  el("td", { className: "address-col", dataset: { label: "Address" } }, el("div", { className: "address-cell" },
    el("span", { className: "mono address", title: mailbox.address, testid: "cell-address" },
      mailbox.address),
    el("button", {
      type: "button", className: "tiny", title: "Copy the address", testid: "copy-address",
      onclick: () => copyText(mailbox.address, "Address copied"),
    }, "Copy"))),
  statusCell,
  el("td", { className: `num${alarms.includes("size") ? " alarm-text" : ""}`, dataset: { label: "Waiting" } },
    el("span", { testid: "cell-messages" }, mailbox.messages.toLocaleString()),
    unreadable
      ? el("div", {
        className: "badge unreadable", testid: "cell-unreadable",
        title: `${unreadable.toLocaleString()} messages (${mailbox.unreadable_bytes.toLocaleString()} bytes) `
          + "sealed to a key a password reset retired: nobody can read them",
      }, `+${unreadable.toLocaleString()} unreadable`)
      : null),
  el("td", {
    className: `num${alarms.includes("size") ? " alarm-text" : ""}`,
    title: `${mailbox.bytes.toLocaleString()} bytes`, testid: "cell-bytes", dataset: { label: "Size" },
  }, formatBytes(mailbox.bytes)),
  el("td", {
    className: `num${alarms.includes("age") ? " alarm-text" : ""}`, testid: "cell-oldest",
    dataset: { label: "Oldest waiting", alarm: alarms.includes("age") ? "age" : "" },
  }, oldest
    ? timeNode(mailbox.oldest_waiting_at, { label: formatDuration((Date.now() - oldest.getTime()) / 1000) })
    : "–"),
  el("td", { testid: "cell-delivery", dataset: { label: "Delivered" } },
    timeNode(mailbox.last_delivery, { label: formatAgo(lastDelivery) })),
  el("td", { testid: "cell-retrieval", dataset: { label: "Retrieved" } },
    timeNode(mailbox.last_retrieval, { label: formatAgo(lastRetrieval) })),
  el("td", { className: "actions" },
    action("action-edit", "Edit", openEditMailbox),
    suspended
      ? action("action-activate", "Activate", (m) => setMailboxStatus(m, "activate"))
      : action("action-suspend", "Suspend", (m) => setMailboxStatus(m, "suspend")),
    action("action-passwd", "Password", openMailboxPasswd, { title: "Change the password (the old one is needed)" }),
    action("action-reset", "Reset", openMailboxReset, { title: "Reset the password: stored messages become unreadable" }),
    unreadable
      ? action("action-purge-unreadable", "Purge unreadable", purgeUnreadable,
        { title: "Delete the messages a reset made unreadable", className: "small danger-text" })
      : null,
    action("action-delete", "Delete", openMailboxDelete, { className: "small danger-text" })));
}

async function setMailboxStatus(mailbox, op) {
  const row = document.querySelector(`[data-testid=mailbox-row][data-mailbox-id="${mailbox.mailbox_id}"]`);
  const button = row && $(`action-${op}`, row);
  if (button) button.disabled = true;
  try {
    const reply = await state.connection.request(`mailbox.${op}`, { mailbox: mailbox.mailbox_id });
    upsertMailbox(reply.mailbox);
    notify(op === "suspend"
      ? `Suspended “${mailbox.name}”: it takes no new mail until activated`
      : `Activated “${mailbox.name}”`);
  } catch (error) {
    if (button) button.disabled = false;
    reportError(error, `Cannot ${op} “${mailbox.name}”`);
  }
}

async function copyText(text, done = "Copied") {
  try {
    await navigator.clipboard.writeText(text);
    notify(done);
  } catch {
    notify(`The browser refused the clipboard; the text is: ${text}`, "error");
  }
}

// -- dialogs ---------------------------------------------------------------------------------

// Each form dialog: a submit runs `submit(context, form)`; success closes the dialog and calls
// `after(result, context)`; an error stays in the dialog, in its words from the server.
const dialogs = new Map();

function setupDialog(testid, { submit, after = () => {}, canSubmit = () => true }) {
  const dialog = $(testid);
  const form = dialog.querySelector("form");
  const entry = {
    dialog, form, context: null, busy: false,
    error: $("dialog-error", dialog),
    button: form.querySelector("[type=submit]"),
    sync: () => { entry.button.disabled = entry.busy || !canSubmit(form); },
  };
  form.addEventListener("input", entry.sync);
  form.addEventListener("change", entry.sync);
  for (const cancel of form.querySelectorAll("[data-action=cancel]")) {
    cancel.addEventListener("click", () => dialog.close());
  }
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (entry.busy) return;
    setDialogError(entry, "");
    entry.busy = true;
    entry.sync();
    form.classList.add("busy");
    try {
      const result = await submit(entry.context, form);
      dialog.close();
      after(result, entry.context);
    } catch (error) {
      if (!sessionEnded(error)) setDialogError(entry, describeError(error));
    } finally {
      entry.busy = false;
      form.classList.remove("busy");
      entry.sync();
    }
  });
  dialogs.set(testid, entry);
}

function openDialog(testid, context, prepare) {
  const entry = dialogs.get(testid);
  entry.context = context;
  entry.form.reset();
  setDialogError(entry, "");
  if (prepare) prepare(entry.dialog, context);
  entry.sync();
  entry.dialog.showModal();
}

function setDialogError(entry, message) {
  entry.error.textContent = message;
  show(entry.error, Boolean(message));
}

function closeAllDialogs() {
  for (const entry of dialogs.values()) {
    if (entry.dialog.open) entry.dialog.close();
  }
}

function field(form, name) {
  return form.elements.namedItem(name).value;
}

function optional(value) {
  return value === "" ? undefined : value;
}

function role(dialog, name) {
  return dialog.querySelectorAll(`[data-role="${name}"]`);
}

function setRole(dialog, name, text) {
  for (const node of role(dialog, name)) node.textContent = text;
}

function describeMailbox(mailbox) {
  return `${mailbox.name} · ${mailbox.address}`;
}

// -- the one-time secret dialog ---------------------------------------------------------------

// Shows a password or token once. It cannot be dismissed until "I have stored it" is ticked;
// the returned promise resolves when it closes. Secrets queue if several arrive at once.
let secretQueue = Promise.resolve();

function showSecret(options) {
  secretQueue = secretQueue.then(() => new Promise((resolve) => openSecret(options, resolve)));
  return secretQueue;
}

const secret = { confirmed: true, resolve: null };

function openSecret({ title, intro, value, warning = "" }, resolve) {
  const dialog = $("dialog-secret");
  setRole(dialog, "title", title);
  $("secret-intro").textContent = intro;
  $("secret-warning").textContent = warning;
  show($("secret-warning"), Boolean(warning));
  $("secret-value").value = value;
  $("secret-copy-state").textContent = "";
  $("secret-stored").checked = false;
  $("secret-close").disabled = true;
  secret.confirmed = false;
  secret.resolve = resolve;
  dialog.showModal();
  $("secret-value").select();
}

function setupSecretDialog() {
  const dialog = $("dialog-secret");
  const stored = $("secret-stored");
  stored.addEventListener("change", () => { $("secret-close").disabled = !stored.checked; });
  $("secret-copy").addEventListener("click", copySecret);
  $("secret-form").addEventListener("submit", (event) => {
    event.preventDefault();
    if (!stored.checked) return;
    secret.confirmed = true;
    dialog.close();
  });
  dialog.addEventListener("cancel", (event) => {
    if (secret.confirmed) return;
    event.preventDefault();
    $("secret-copy-state").textContent = "Store it first, then tick “I have stored it”.";
  });
  dialog.addEventListener("close", () => {
    if (!secret.confirmed) {
      dialog.showModal(); // a browser may close it anyway (repeated Escape): not before it is stored
      return;
    }
    $("secret-value").value = "";
    const resolve = secret.resolve;
    secret.resolve = null;
    if (resolve) resolve();
  });
}

async function copySecret() {
  const input = $("secret-value");
  const note = $("secret-copy-state");
  try {
    await navigator.clipboard.writeText(input.value);
    note.textContent = "Copied to the clipboard.";
  } catch {
    input.focus();
    input.select();
    let copied = false;
    try {
      copied = document.execCommand("copy");
    } catch {
      copied = false;
    }
    note.textContent = copied
      ? "Copied to the clipboard."
      : "The browser blocked the clipboard: the text is selected, press Ctrl+C (⌘C) to copy it.";
  }
}

// -- mailbox dialogs --------------------------------------------------------------------------

function openNewMailbox() {
  openDialog("dialog-mailbox", null, (dialog) => {
    setRole(dialog, "title", "New mailbox");
    show(role(dialog, "password-field")[0], true);
    $("mailbox-submit").textContent = "Create mailbox";
  });
}

function openEditMailbox(mailbox) {
  openDialog("dialog-mailbox", mailbox, (dialog) => {
    setRole(dialog, "title", `Edit ${mailbox.name}`);
    show(role(dialog, "password-field")[0], false);
    $("mailbox-name").value = mailbox.name;
    $("mailbox-description").value = mailbox.description;
    $("mailbox-submit").textContent = "Save";
  });
}

async function submitMailbox(mailbox, form) {
  const name = field(form, "name").trim();
  const description = field(form, "description").trim();
  if (mailbox === null) {
    return state.connection.request("mailbox.create", {
      name, description, password: optional(field(form, "password")),
    });
  }
  return state.connection.request("mailbox.update", {
    mailbox: mailbox.mailbox_id, name, description,
  });
}

function afterMailbox(reply, mailbox) {
  upsertMailbox(reply.mailbox);
  if (reply.type !== "mailbox.created") {
    notify(`Saved “${reply.mailbox.name}”`);
    return;
  }
  notify(`Created mailbox “${reply.mailbox.name}”`);
  showSecret({
    title: "The new mailbox's password",
    intro: `Mailbox “${reply.mailbox.name}” (${reply.mailbox.address}). The archive logs in `
      + "to POP3 with this password; it is also the only key to the mailbox's messages.",
    value: reply.password,
  });
}

function openMailboxPasswd(mailbox) {
  openDialog("dialog-passwd", mailbox, (dialog) => setRole(dialog, "subject", describeMailbox(mailbox)));
}

function submitMailboxPasswd(mailbox, form) {
  return state.connection.request("mailbox.passwd", {
    mailbox: mailbox.mailbox_id,
    old_password: field(form, "old_password"),
    new_password: optional(field(form, "new_password")),
  });
}

function afterMailboxPasswd(reply) {
  upsertMailbox(reply.mailbox);
  notify(`Changed the password of “${reply.mailbox.name}”`);
  showSecret({
    title: "The mailbox's new password",
    intro: `Mailbox “${reply.mailbox.name}” (${reply.mailbox.address}). Every stored message `
      + "stays readable with this password; the old one no longer works.",
    value: reply.password,
  });
}

function openMailboxReset(mailbox) {
  openDialog("dialog-reset", mailbox, (dialog) => {
    setRole(dialog, "subject", describeMailbox(mailbox));
    setRole(dialog, "count", `${plural(mailbox.messages, "message")} (${formatBytes(mailbox.bytes)})`);
  });
}

function submitMailboxReset(mailbox, form) {
  return state.connection.request("mailbox.reset", {
    mailbox: mailbox.mailbox_id,
    confirm: true,
    new_password: optional(field(form, "new_password")),
  });
}

function afterMailboxReset(reply) {
  upsertMailbox(reply.mailbox);
  notify(`Reset the password of “${reply.mailbox.name}”`);
  showSecret({
    title: "The mailbox's new password",
    intro: `Mailbox “${reply.mailbox.name}” (${reply.mailbox.address}) has a new key and this `
      + "new password. New mail is sealed to the new key.",
    value: reply.password,
    warning: reply.warning,
  });
}

function openMailboxDelete(mailbox) {
  openDialog("dialog-delete", mailbox, (dialog) => {
    setRole(dialog, "subject", describeMailbox(mailbox));
    const unreadable = mailbox.unreadable_messages ?? 0;
    const count = mailbox.messages + unreadable;
    const bytes = mailbox.bytes + (mailbox.unreadable_bytes ?? 0);
    setRole(dialog, "purge-label", `Also purge the ${plural(count, "stored message")} `
      + `(${formatBytes(bytes)}${unreadable ? `, ${unreadable.toLocaleString()} of them unreadable` : ""}); `
      + "without it, a mailbox with messages is not deleted");
    show($("delete-active-note"), mailbox.status !== "suspended");
  });
}

function submitMailboxDelete(mailbox, form) {
  return state.connection.request("mailbox.delete", {
    mailbox: mailbox.mailbox_id, purge: form.elements.namedItem("purge").checked,
  });
}

function afterMailboxDelete(reply, mailbox) {
  dropMailbox(reply.mailbox_id);
  const purged = reply.purged_messages ? `, purged ${plural(reply.purged_messages, "message")}` : "";
  notify(`Deleted mailbox “${mailbox.name}”${purged}`);
}

function purgeUnreadable(mailbox) {
  const count = plural(mailbox.unreadable_messages, "unreadable message");
  confirmAction({
    title: "Purge unreadable messages",
    text: `Delete the ${count} (${formatBytes(mailbox.unreadable_bytes)}) of “${mailbox.name}”: `
      + "they were sealed to a key a password reset retired, so nobody can ever read them. "
      + "Readable messages are not touched.",
    button: "Purge unreadable messages",
    run: async () => {
      const reply = await state.connection.request("mailbox.purge-unreadable", { mailbox: mailbox.mailbox_id });
      upsertMailbox(reply.mailbox);
      notify(`Purged ${plural(reply.purged_messages, "unreadable message")} `
        + `(${formatBytes(reply.purged_bytes)}) from “${reply.mailbox.name}”`);
    },
  });
}

// -- settings --------------------------------------------------------------------------------

async function loadTokens() {
  try {
    const reply = await state.connection.request("token.list");
    state.tokens = reply.tokens;
    renderTokens();
  } catch (error) {
    reportError(error, "Cannot list the API tokens");
  }
}

function renderTokens() {
  const rows = state.tokens.map((token) => el("tr", { testid: "token-row", dataset: { tokenId: token.token_id } },
    el("td", {}, token.name),
    el("td", { className: "mono" }, token.token_id),
    el("td", {}, timeNode(token.created_at)),
    el("td", {}, token.expires_at ? timeNode(token.expires_at) : "never"),
    el("td", { className: "actions" }, el("button", {
      type: "button", className: "small danger-text", testid: "token-revoke",
      onclick: () => confirmAction({
        title: "Revoke API token",
        text: `Scripts using “${token.name}” (${token.token_id}) will be refused from now on.`,
        button: "Revoke token",
        run: async () => {
          await state.connection.request("token.revoke", { token_id: token.token_id });
          notify(`Revoked token “${token.name}”`);
          loadTokens();
        },
      }),
    }, "Revoke"))));
  $("token-rows").replaceChildren(...rows);
  show($("token-empty"), rows.length === 0);
}

function confirmAction(options) {
  openDialog("dialog-confirm", options, (dialog) => {
    setRole(dialog, "title", options.title);
    setRole(dialog, "text", options.text);
    $("confirm-submit").textContent = options.button;
  });
}

async function submitAdminPasswd(_context, form) {
  const newPassword = field(form, "new_password");
  if (newPassword !== field(form, "again")) {
    throw new ApiError("mismatch", "The two new passwords differ.");
  }
  return state.connection.request("admin.passwd", {
    old_password: field(form, "old_password"), new_password: newPassword,
  });
}

function afterAdminPasswd() {
  // The gateway ends every session, this one too: sign in again with the new password.
  endSession("The admin password was changed. Sign in with the new password.", "info");
}

async function submitToken(_context, form) {
  const days = field(form, "days");
  return state.connection.request("token.create", {
    name: field(form, "name").trim(),
    expires_in_days: days === "" ? undefined : Number(days),
  });
}

function afterToken(reply) {
  notify(`Created API token “${reply.info.name}”`);
  loadTokens();
  showSecret({
    title: "The new API token",
    intro: `Token “${reply.info.name}” (${reply.info.token_id}). A script logs in with `
      + "{\"op\": \"login\", \"token\": …}. The gateway keeps only a hash of it.",
    value: reply.token,
  });
}

// -- audit -----------------------------------------------------------------------------------

function setupAuditFilters() {
  const types = $("audit-types");
  types.append(el("option", { value: "" }, "All events"));
  const groups = el("optgroup", { label: "Groups" });
  const singles = el("optgroup", { label: "One type" });
  const all = [];
  for (const [label, members] of EVENT_GROUPS) {
    groups.append(el("option", { value: members.join(",") }, label));
    all.push(...members);
  }
  for (const type of all.sort()) singles.append(el("option", { value: type }, type));
  types.append(groups, singles);
  $("audit-filters").addEventListener("change", () => subscribeAudit());
  $("audit-filters").addEventListener("submit", (event) => event.preventDefault());
}

function renderMailboxFilter(mailboxes) {
  const select = $("audit-mailbox");
  const chosen = select.value;
  // Rebuilding the options closes the list if it is open: only when they changed.
  const key = JSON.stringify(mailboxes.map((m) => [m.mailbox_id, m.name]));
  if (key === select.dataset.key) return;
  select.dataset.key = key;
  const options = mailboxes.map((m) => el("option", { value: m.mailbox_id }, `${m.name} (${shortId(m.mailbox_id)})`));
  // Keep a filter on a mailbox that is gone: its records are still worth seeing.
  if (chosen && !mailboxes.some((m) => m.mailbox_id === chosen)) {
    options.push(el("option", { value: chosen }, `deleted (${shortId(chosen)})`));
  }
  select.replaceChildren(el("option", { value: "" }, "All mailboxes"), ...options);
  select.value = chosen;
}

// (Re)subscribes with the filters of the form. `resume` continues after the last record seen
// (a reconnect) instead of starting over.
async function subscribeAudit({ resume = false } = {}) {
  const audit = state.audit;
  const connection = state.connection;
  if (!connection?.isOpen) {
    // Filters changed while disconnected: the reconnect starts over with them.
    clearAudit();
    return;
  }
  const previous = audit.subscription;
  audit.generation += 1;
  const generation = audit.generation;
  audit.subscription = null;
  audit.caughtUp = false;
  audit.waiting = true;
  audit.early = [];
  if (previous !== null && connection.isOpen) {
    connection.request("audit.unsubscribe", { subscription: previous }).catch(() => {});
  }
  const form = $("audit-filters");
  const mailbox = field(form, "mailbox");
  const types = field(form, "types");
  const lookBack = field(form, "window");
  let since;
  if (resume && audit.lastSeq !== null) {
    since = audit.lastSeq + 1;
  } else {
    clearAudit();
    const next = state.status?.control_seq ?? 0;
    since = lookBack === "all" ? 0 : Math.max(0, next - Number(lookBack));
    if (!mailbox && !types && next - since > MAX_AUDIT_ROWS) {
      // Unfiltered, every record matches: only the newest MAX_AUDIT_ROWS can be shown, so
      // only those are asked for. The gateway sends a record in about 0.3 ms: "Everything"
      // of 16,000 records would otherwise take 5 s to show the same 1,000 rows.
      audit.matched = next - MAX_AUDIT_ROWS - since; // counted, not fetched
      audit.dropped = true;
      since = next - MAX_AUDIT_ROWS;
    }
  }
  setAuditState("replaying history…");
  show($("audit-empty"), false);
  show($("audit-capped"), false);
  audit.startedAt = performance.now();
  try {
    const reply = await connection.request("audit.subscribe", {
      since,
      follow: true,
      mailbox: mailbox || undefined,
      types: types ? types.split(",") : undefined,
    });
    if (generation !== audit.generation) {
      connection.request("audit.unsubscribe", { subscription: reply.subscription }).catch(() => {});
      return;
    }
    audit.subscription = reply.subscription;
    audit.waiting = false;
    const early = audit.early;
    audit.early = [];
    for (const message of early) receiveAudit(message);
  } catch (error) {
    if (generation !== audit.generation) return;
    audit.waiting = false;
    setAuditState("not subscribed");
    reportError(error, "Cannot follow the audit log");
  }
}

function clearAudit() {
  const audit = state.audit;
  $("audit-rows").replaceChildren();
  show($("audit-capped"), false);
  clearTimeout(audit.flushTimer);
  audit.flushTimer = null;
  audit.pending = [];
  audit.rows = 0;
  audit.matched = 0;
  audit.dropped = false;
  audit.lastSeq = null;
}

function setAuditState(text) {
  const node = $("audit-state");
  node.textContent = text;
  node.classList.toggle("live", text === "live");
}

function receiveAudit(message) {
  const audit = state.audit;
  if (audit.subscription === null) {
    if (audit.waiting) audit.early.push(message);
    return;
  }
  if (message.subscription !== audit.subscription) return; // from a filter replaced since
  if (message.type === "audit.caught-up") {
    flushAudit();
    audit.caughtUp = true;
    setAuditState("live");
    showAuditNotes();
    // How long the history took, from the request to its last row drawn (for tests, people).
    $("audit-table").dataset.replayMs = String(Math.round(performance.now() - audit.startedAt));
    return;
  }
  // Buffered, drawn in batches (flushAudit); only the newest MAX_AUDIT_ROWS can ever be shown.
  audit.pending.push(message);
  audit.lastSeq = message.seq;
  audit.matched += 1;
  if (audit.pending.length >= 2 * MAX_AUDIT_ROWS) {
    audit.pending.splice(0, audit.pending.length - MAX_AUDIT_ROWS);
    audit.dropped = true;
  }
  if (audit.flushTimer === null) {
    audit.flushTimer = setTimeout(flushAudit, audit.caughtUp ? 0 : AUDIT_BATCH_MS);
  }
  if (audit.caughtUp && message.event && REFRESH_EVENTS.has(message.event.type)) {
    scheduleRefresh();
  }
}

// Draws the buffered records, newest first on top, and keeps the table to MAX_AUDIT_ROWS.
function flushAudit() {
  const audit = state.audit;
  clearTimeout(audit.flushTimer);
  audit.flushTimer = null;
  let batch = audit.pending;
  audit.pending = [];
  if (batch.length === 0) return;
  if (batch.length > MAX_AUDIT_ROWS) {
    batch = batch.slice(-MAX_AUDIT_ROWS);
    audit.dropped = true;
  }
  const rows = document.createDocumentFragment();
  for (let i = batch.length - 1; i >= 0; i -= 1) rows.append(auditRow(batch[i]));
  const tbody = $("audit-rows");
  if (batch.length === MAX_AUDIT_ROWS) {
    if (audit.rows > 0) audit.dropped = true;
    tbody.replaceChildren(rows);
    audit.rows = MAX_AUDIT_ROWS;
  } else {
    tbody.prepend(rows);
    audit.rows += batch.length;
    if (audit.rows > MAX_AUDIT_ROWS) {
      const extra = document.createRange();
      extra.setStartBefore(tbody.children[MAX_AUDIT_ROWS]);
      extra.setEndAfter(tbody.lastElementChild);
      extra.deleteContents();
      audit.rows = MAX_AUDIT_ROWS;
      audit.dropped = true;
    }
  }
  if (audit.caughtUp) {
    showAuditNotes();
  } else {
    setAuditState(`replaying history… ${plural(audit.matched, "record")}`);
  }
}

// Said only once the history is in, and only when true.
function showAuditNotes() {
  const audit = state.audit;
  show($("audit-empty"), audit.rows === 0);
  $("audit-matched").textContent = audit.matched.toLocaleString();
  show($("audit-capped"), audit.dropped);
}

function auditRow(message) {
  const event = message.event;
  const type = event ? event.type : "unknown";
  const at = parseTime(event?.at);
  return el("tr", {
    testid: "audit-row",
    dataset: { type, seq: String(message.seq) },
    className: auditSeverity(event),
    title: `chain ${message.chain}`,
  },
  el("td", { className: "num mono", dataset: { label: "Seq" } }, message.seq),
  el("td", { className: "mono", dataset: { label: "Time" } }, at ? timeNode(event.at) : ""),
  el("td", { className: "type", dataset: { label: "Event" } }, type),
  el("td", { className: "clip", dataset: { label: "Actor" } }, formatActor(event?.actor)),
  el("td", { className: "clip", dataset: { label: "Mailbox" } }, ...auditMailboxes(event)),
  el("td", { className: "details", testid: "audit-details", dataset: { label: "Details" } }, summarize(event)));
}

function auditSeverity(event) {
  if (!event) return "";
  if (event.type === "AdminRequestFailed" || event.type === "DeliveryRefused"
    || event.type === "LogTailTruncated" || (event.type === "AdminLogin" && !event.success)
    || (event.type === "SmtpProxySessionEnded" && event.unrecorded > 0)) {
    return "bad";
  }
  if ((event.type === "Pop3Login" || event.type === "SmtpLogin") && !event.success) return "warn";
  if (event.type === "MailboxKeyReset" || event.type === "MailboxDeleted"
    || event.type === "MailboxAlarmRaised") return "warn";
  if (event.type === "StoreSpaceLow") return "bad";
  return "";
}

// An alarm's value or threshold: octets for `size`, seconds for `age` and `quiet` (SPEC.md 13.8).
function alarmMeasure(alarm, value) {
  return alarm === "size" ? formatBytes(value) : formatDuration(value);
}

function formatActor(actor) {
  if (!actor) return "";
  const who = actor.name && actor.name !== actor.kind ? `${actor.kind} ${actor.name}` : actor.kind;
  return actor.address ? `${who} · ${actor.address}` : who;
}

function auditMailboxes(event) {
  if (!event) return [];
  let ids = [];
  if (event.mailbox_id) ids = [event.mailbox_id];
  else if (Array.isArray(event.mailbox_ids)) ids = event.mailbox_ids;
  else if (event.log && event.log !== "control") ids = [event.log];
  return ids.flatMap((id, index) => {
    const known = mailboxById(id);
    const label = el("span", { title: id }, known ? known.name : shortId(id));
    return index === 0 ? [label] : [", ", label];
  });
}

function summarize(event) {
  if (!event) return "an event type this console does not know";
  const e = event;
  switch (e.type) {
    case "MessageAccepted":
      return `${formatBytes(e.size)} into ${plural(e.mailbox_ids.length, "mailbox", "mailboxes")} from ${e.client_address}`;
    case "DeliveryRefused":
      return `${e.stage}: ${e.code} ${e.enhanced} from ${e.client_address}`;
    case "SmtpSessionEnded":
      return `${e.listener}: ${plural(e.messages, "message")}, ${formatBytes(e.bytes)}, `
        + `${e.rejected} refused, ${e.outcome || "ended"} after ${Number(e.seconds).toFixed(1)} s`
        + (e.tls ? ` · ${e.tls}` : "");
    case "Pop3Login":
    case "SmtpLogin":
      return (e.success ? "logged in" : `login refused: ${e.reason}`)
        + (e.target ? ` · to ${e.target}` : "") + ` (${e.mechanism}) from ${e.client_address}`;
    case "Pop3SessionEnded":
      return `${e.listener}: ${plural(e.retrieved.length, "message")} retrieved, `
        + `${e.deleted.length} deleted, ${e.outcome || "ended"}`;
    case "Pop3ProxySessionEnded":
      return `${e.remote_user} at ${e.target}: ${plural(e.retrieved, "message")} retrieved, `
        + `${e.stored.length} stored, ${e.outcome || "ended"}`;
    case "SmtpProxySessionEnded":
      return `${e.remote_user} at ${e.target}: ${plural(e.relayed, "message")} relayed, `
        + `${e.stored.length} stored, ${e.refused} refused`
        + (e.unrecorded ? `, ${e.unrecorded} NOT ARCHIVED` : "") + `, ${e.outcome || "ended"}`;
    case "MailboxCreated":
      return `“${e.name}” created`;
    case "MailboxUpdated":
      return `“${e.name}” now ${e.status}`;
    case "MailboxKeyRewrapped":
      return "password changed; messages stay readable";
    case "MailboxKeyReset":
      return `password reset: ${plural(e.unreadable_messages, "message")} `
        + `(${formatBytes(e.unreadable_bytes)}) unreadable for good`;
    case "MailboxDeleted":
      return `deleted, ${plural(e.purged_messages ?? 0, "message")} purged`;
    case "MessagesExpunged":
      return `${plural(e.message_ids.length, "message")} (${formatBytes(e.bytes)}) expunged`;
    case "LogCompacted":
      return `segment ${e.segment} compacted: ${formatBytes(e.bytes_before)} → ${formatBytes(e.bytes_after)}`;
    case "LogTailTruncated":
      return `${e.log} log: ${formatBytes(e.dropped_bytes)} torn tail cut from ${e.segment}`;
    case "GatewayStarted":
      return `version ${e.version}`;
    case "GatewayStopped":
      return e.reason || "stopped";
    case "AdminAccountCreated":
      return `admin password from: ${e.source}`;
    case "AdminLogin":
      return e.success ? `signed in (${e.method})` : `login refused (${e.method}): ${e.reason}`;
    case "AdminPasswordChanged":
      return "admin password changed";
    case "ApiTokenCreated":
      return `token “${e.name}” (${e.token_id})`;
    case "ApiTokenRevoked":
      return `token ${e.token_id} revoked`;
    case "AdminSessionStarted":
      return `session ${e.session_id} until ${formatTime(parseTime(e.expires_at))}`;
    case "AdminSessionEnded":
      return `session ${e.session_id} ended${e.reason ? ` (${e.reason})` : ""}`;
    case "AdminCredentialsMigrated":
      return `admin account taken into the log (${plural(e.tokens.length, "API token")})`;
    case "AdminRequestFailed":
      return `${e.op} refused: ${e.message}`;
    case "MailboxAlarmRaised":
      return `${e.alarm} alarm: ${alarmMeasure(e.alarm, e.value)} over ${alarmMeasure(e.alarm, e.threshold)}`;
    case "MailboxAlarmCleared":
      return `${e.alarm} alarm cleared`;
    case "StoreSpaceLow":
      return `${formatBytes(e.free_bytes)} free, under ${formatBytes(e.min_free_bytes)}: new mail refused`;
    case "StoreSpaceRestored":
      return `${formatBytes(e.free_bytes)} free: mail accepted again`;
    default:
      return Object.entries(e)
        .filter(([key, value]) => !["type", "at", "actor"].includes(key) && typeof value !== "object")
        .map(([key, value]) => `${key}=${value}`)
        .join(" ");
  }
}

// -- status refresh --------------------------------------------------------------------------

async function refreshStatus() {
  const status = await state.connection.request("status");
  state.status = status;
  state.statusReceived = Date.now();
  renderDashboard();
  setMailboxes(status.mailboxes);
}

// At most one `status` per REFRESH_GAP_MS, however fast the audit events come.
const refresher = { timer: null, running: false, again: false, last: 0 };

function scheduleRefresh() {
  if (refresher.timer !== null) return;
  if (refresher.running) {
    refresher.again = true;
    return;
  }
  const wait = Math.max(0, refresher.last + REFRESH_GAP_MS - Date.now());
  refresher.timer = setTimeout(runRefresh, wait);
}

async function runRefresh() {
  refresher.timer = null;
  refresher.running = true;
  refresher.last = Date.now();
  try {
    if (state.connection?.isOpen && state.actor) await refreshStatus();
  } catch (error) {
    reportError(error, "Cannot refresh the status");
  } finally {
    refresher.running = false;
    if (refresher.again) {
      refresher.again = false;
      scheduleRefresh();
    }
  }
}

// -- session ---------------------------------------------------------------------------------

function newConnection() {
  return new Connection({ onPush: receiveAudit, onClose: connectionLost });
}

async function connect() {
  if (state.connection?.isOpen) return state.connection;
  const connection = newConnection();
  await connection.open();
  state.connection = connection;
  setLinkState(true);
  return connection;
}

async function signIn(credentials) {
  const connection = await connect();
  const session = await connection.request("login", credentials);
  if (session.token) sessionStorage.setItem(TOKEN_KEY, session.token);
  state.actor = session.actor;
  await enterApp();
}

async function enterApp({ resume = false } = {}) {
  $("header-actor").textContent = state.actor;
  show($("disconnected"), false);
  showView("app");
  try {
    await refreshStatus();
  } catch (error) {
    reportError(error, "Cannot read the gateway's status");
  }
  if (state.actor === null) return; // the session ended meanwhile
  subscribeAudit({ resume });
  loadTokens();
}

// Sends the page back to the login form: the session is over (logout, expiry, password change).
function endSession(message, kind = "error") {
  sessionStorage.removeItem(TOKEN_KEY);
  const connection = state.connection;
  state.connection = null;
  state.audit.subscription = null;
  state.audit.generation += 1;
  // A fresh connection for the next login: subscriptions of this one must not outlive it.
  if (connection) connection.close("signed out");
  show($("disconnected"), false);
  showLogin(message, kind);
}

function sessionEnded(error) {
  if (!(error instanceof ApiError) || error.code !== "unauthenticated") return false;
  endSession(sentence(error.message));
  return true;
}

async function logout() {
  const connection = state.connection;
  try {
    if (connection?.isOpen) await connection.request("logout");
    endSession("Signed out.", "info");
  } catch (error) {
    if (error instanceof ApiError && error.code === DISCONNECTED) {
      endSession("Signed out (the gateway was not reachable to end the session).", "info");
    } else {
      reportError(error, "Cannot sign out");
    }
  }
}

function connectionLost(code, reason) {
  state.connection = null;
  state.audit.subscription = null;
  state.audit.generation += 1;
  setLinkState(false);
  if (!state.actor) {
    // Lost before or while signing in: the login form reconnects on submit.
    return;
  }
  if (code === CLOSE_LOGGED_OUT) {
    endSession(sentence(reason || "signed out by the gateway"), "info");
    return;
  }
  const text = code >= 4000 && code <= 4999
    ? `The gateway closed the connection: ${reason || `code ${code}`}`
    : `The connection to the gateway was lost${reason ? `: ${reason}` : ""} (code ${code}).`;
  $("disconnected-reason").textContent = text;
  show($("disconnected"), true);
  setAuditState("disconnected");
}

async function reconnect() {
  const button = $("reconnect");
  button.disabled = true;
  const token = sessionStorage.getItem(TOKEN_KEY);
  try {
    if (!token) {
      endSession("Sign in again.");
      return;
    }
    const connection = await connect();
    const session = await connection.request("login", { token });
    state.actor = session.actor;
    await enterApp({ resume: true });
    notify("Reconnected");
  } catch (error) {
    if (error instanceof ApiError && error.code === "bad-credentials") {
      // Sessions live in the gateway's memory: a restart ends them all.
      endSession("The session has ended (a gateway restart ends every session): sign in again.", "info");
    } else if (error instanceof ApiError && error.code !== DISCONNECTED && error.code !== "timeout") {
      endSession(`Sign in again: ${describeError(error)}`);
    } else {
      $("disconnected-reason").textContent = `Still cannot reach the gateway: ${describeError(error)}`;
    }
  } finally {
    button.disabled = false;
  }
}

// A reload logs in with the session token kept in sessionStorage.
async function resume() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (!token) {
    showLogin();
    return;
  }
  try {
    const connection = await connect();
    const session = await connection.request("login", { token });
    state.actor = session.actor;
    await enterApp();
  } catch (error) {
    if (error instanceof ApiError && error.code === DISCONNECTED) {
      showLogin(describeError(error));
    } else {
      sessionStorage.removeItem(TOKEN_KEY);
      showLogin("Your session has ended: sign in again.", "info");
    }
  }
}

function setupLogin() {
  const form = $("login-form");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const button = $("login-submit");
    const error = $("login-error");
    button.disabled = true;
    show(error, false);
    try {
      await signIn({ password: $("login-password").value });
      $("login-password").value = "";
    } catch (failure) {
      error.className = "error";
      error.textContent = failure instanceof ApiError && failure.code === "bad-credentials"
        ? "Wrong password."
        : describeError(failure);
      show(error, true);
      $("login-password").select();
    } finally {
      button.disabled = false;
    }
  });
}

// -- start -----------------------------------------------------------------------------------

function start() {
  setupLogin();
  setupSecretDialog();
  setupAuditFilters();
  setupTraffic();
  setupDialog("dialog-mailbox", { submit: submitMailbox, after: afterMailbox });
  setupDialog("dialog-passwd", { submit: submitMailboxPasswd, after: afterMailboxPasswd });
  setupDialog("dialog-reset", {
    submit: submitMailboxReset,
    after: afterMailboxReset,
    canSubmit: (form) => form.elements.namedItem("confirm").checked,
  });
  setupDialog("dialog-delete", { submit: submitMailboxDelete, after: afterMailboxDelete });
  setupDialog("dialog-admin-passwd", { submit: submitAdminPasswd, after: afterAdminPasswd });
  setupDialog("dialog-token", { submit: submitToken, after: afterToken });
  setupDialog("dialog-confirm", { submit: (options) => options.run() });
  $("new-mailbox").addEventListener("click", openNewMailbox);
  $("copy-fingerprint").addEventListener("click",
    () => copyText($("stat-cert-sha256").textContent, "Fingerprint copied"));
  $("admin-passwd").addEventListener("click", () => openDialog("dialog-admin-passwd", null));
  $("new-token").addEventListener("click", () => openDialog("dialog-token", null));
  $("logout").addEventListener("click", logout);
  $("reconnect").addEventListener("click", reconnect);
  setInterval(renderUptime, 1000);
  setInterval(() => {
    if (document.visibilityState === "visible") scheduleRefresh();
  }, POLL_MS);
  resume();
}

start();
