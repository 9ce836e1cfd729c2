"use strict";
// roomcast's built-in browser client. Plain JavaScript, no build step, no dependencies, and
// nothing inline: the daemon serves this page under a strict Content-Security-Policy.
//
// Sections, top to bottom:
//   1. helpers          DOM building, names, bodies, times
//   2. error wording    error codes and close codes in plain words
//   3. connection       the socket, the auth frame, reconnect with backoff, a liveness watchdog
//   4. requests         `ref` correlation: every request gets a promise that never rejects
//   5. room state       events applied idempotently by seq, resume with `since`, history paging
//   6. sending          the outbox: queued, in flight, unconfirmed after a drop, failed
//   7. rendering        room list, room panels, messages, presence, typing, notices
//   8. UI wiring        forms, composer, typing throttle, message actions, scroll paging
//   9. boot             token and rooms from the URL
(() => {

// ---------------------------------------------------------------------------------------------
// 1. helpers

/** Builds an element. Text is always set as text, never parsed as HTML. */
function h(tag, props, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value == null || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "text") el.textContent = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child == null || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

const $ = (selector, root = document) => root.querySelector(selector);

const USER_RE = /^[A-Za-z0-9_.@+-]{1,128}$/;
const ROOM_RE = /^[A-Za-z0-9_.:@+-]{1,128}$/;
const QUICK_EMOJI = ["👍", "❤️", "😂", "🎉", "👀"];
const HISTORY_PAGE = 50;
const TOKEN_KEY = "roomcast.token";

/** The claims of a JWT, decoded without checking anything: only for display hints. */
function decodeClaims(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const bytes = Uint8Array.from(atob(part.padEnd(Math.ceil(part.length / 4) * 4, "=")), (c) => c.charCodeAt(0));
    const claims = JSON.parse(new TextDecoder().decode(bytes));
    return claims && typeof claims === "object" ? claims : {};
  } catch {
    return {};
  }
}

/** `dm:<a>:<b>` with the ids in byte order (ids are ASCII, so string order is byte order). */
function dmRoomName(a, b) {
  return a <= b ? `dm:${a}:${b}` : `dm:${b}:${a}`;
}

/** The other participant of a dm room, or null for a group room. */
function dmPeer(room) {
  const m = /^dm:([^:]+):([^:]+)$/.exec(room);
  if (!m) return null;
  return m[1] === conn.user ? m[2] : m[1];
}

/** Display names learned from `name` on messages: the token's `name` claim of each sender. */
const names = new Map();
let namesChanged = false;

function learnName(user, name) {
  if (typeof name !== "string" || !name || names.get(user) === name) return;
  names.set(user, name);
  namesChanged = true;
  queueMicrotask(() => {
    // Names show up in presence lists, typing lines and dm titles too; refresh them once.
    if (!namesChanged) return;
    namesChanged = false;
    renderRoomList();
    for (const room of rooms.values()) {
      renderRoomHeader(room);
      renderPresence(room);
      renderTyping(room);
    }
  });
}

function displayName(user) {
  if (user === conn.user && typeof conn.claims.name === "string") return conn.claims.name;
  return names.get(user) || user;
}

/** Bodies are any JSON. This page sends `{"text": …}` and shows other shapes as JSON. */
function bodyText(body) {
  if (typeof body === "string") return { text: body, json: false };
  if (body && typeof body === "object" && typeof body.text === "string") return { text: body.text, json: false };
  return { text: JSON.stringify(body), json: true };
}

function sameBody(a, b) {
  return JSON.stringify(a) === JSON.stringify(b);
}

function formatTime(ts) {
  const d = new Date(ts);
  const today = new Date().toDateString() === d.toDateString();
  const time = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  return today ? time : `${d.toLocaleDateString([], { month: "short", day: "numeric" })} ${time}`;
}

function listNames(users) {
  const shown = users.map(displayName);
  if (shown.length <= 1) return shown.join("");
  return `${shown.slice(0, -1).join(", ")} and ${shown[shown.length - 1]}`;
}

// ---------------------------------------------------------------------------------------------
// 2. error wording

/** `error.code` → a sentence a person can act on. The server's own message is shown as detail. */
const ERROR_TEXT = {
  bad_json: "The server could not read a request from this page.",
  unknown_type: "The server did not understand a request from this page.",
  bad_request: "That request was not valid.",
  unauthenticated: "Your token was not accepted.",
  forbidden: "You are not allowed to do that in this room.",
  not_in_room: "You need to join this room first.",
  not_found: "That message no longer exists.",
  too_large: "That message is too long.",
  rate_limited: "You are sending too fast. Wait a moment and try again.",
  overloaded: "The server is busy. Try again in a moment.",
  internal: "Something went wrong on the server. Try again.",
};

function errorSentence(err) {
  return ERROR_TEXT[err.code] || `The server refused it (${err.code}).`;
}

/** Close codes → words; see docs/protocol.md §8. */
const CLOSE_TEXT = {
  1000: "closed normally",
  1001: "the server is restarting or went quiet",
  1002: "protocol error",
  1003: "unsupported data",
  1006: "connection lost",
  1007: "invalid data",
  1008: "closed by server policy",
  1009: "message too big",
  1011: "server error",
  1013: "server overloaded",
};

function closeText(close) {
  if (!close) return "";
  const words = CLOSE_TEXT[close.code] || "closed";
  return `${close.code} ${close.reason || words}`;
}

// ---------------------------------------------------------------------------------------------
// 3. connection

const BACKOFF_BASE_MS = 500;
const BACKOFF_MAX_MS = 30000;
/** A connection that stayed up this long resets the backoff; a flapping one keeps backing off. */
const STABLE_MS = 5000;
/** Reconnecting cannot help after these: they point at a client bug or a policy decision (1008:
 * auth timeout, rate-limit abuse, kicked). The person reconnects by hand once the cause is fixed. */
const NO_RETRY = new Set([1002, 1003, 1007, 1008, 1009]);

const conn = {
  ws: null,
  state: "idle", // idle | connecting | open | reconnecting | closed
  token: "",
  claims: {},
  user: null,
  session: null,
  wanted: false, // whether the person wants to be connected (drives reconnects)
  attempt: 0,
  retryTimer: 0,
  retryAt: 0,
  countdown: 0,
  stableTimer: 0,
  heartbeatMs: 30000,
  watchdog: 0,
  awaitingReply: false,
  lastClose: null,
  note: "", // why the connection stopped, when it was not a close code (e.g. token refused)
};

function connect(token) {
  conn.token = token;
  conn.claims = decodeClaims(token);
  conn.wanted = true;
  conn.attempt = 0;
  conn.note = "";
  conn.lastClose = null;
  if (conn.ws) detachSocket(null);
  openSocket();
}

function disconnect() {
  conn.wanted = false;
  clearTimeout(conn.retryTimer);
  if (conn.ws && conn.ws.readyState === WebSocket.OPEN) {
    // The server echoes our 1000; its close event finishes the bookkeeping.
    conn.ws.close(1000, "bye");
  } else {
    socketGone(null);
  }
}

/** Opens a socket to this page's own origin. The token goes in the first frame rather than in
 * the URL: a refused upgrade is invisible to scripts (1006), a refused `auth` frame says why. */
function openSocket() {
  clearTimeout(conn.retryTimer);
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(`${scheme}//${location.host}/ws`);
  conn.ws = ws;
  conn.session = null;
  setState("connecting");
  ws.onopen = () => {
    if (ws !== conn.ws) return;
    request({ type: "auth", token: conn.token }, { what: "sign in", quiet: true }).then(onAuthReply);
  };
  ws.onmessage = (event) => {
    if (ws !== conn.ws) return;
    conn.awaitingReply = false;
    let frame;
    try {
      frame = JSON.parse(event.data);
    } catch {
      return; // the server only sends JSON; nothing sensible to do with anything else
    }
    onFrame(frame);
  };
  // Errors carry no detail in browsers; the close event that follows has the code.
  ws.onerror = () => {};
  ws.onclose = (event) => {
    if (ws !== conn.ws) return;
    socketGone({ code: event.code, reason: event.reason });
  };
}

function onAuthReply(res) {
  if (res.ok) {
    conn.user = res.reply.user;
    conn.session = res.reply.session || conn.session;
    setState("open");
    // Reset the backoff only once this connection has proved stable.
    clearTimeout(conn.stableTimer);
    conn.stableTimer = setTimeout(() => { conn.attempt = 0; }, STABLE_MS);
    startWatchdog();
    for (const room of rooms.values()) joinRoom(room);
    renderAll();
  } else if (res.error.code === "unauthenticated") {
    // A bad token stays bad: stop, say why, and let the person paste another one.
    conn.wanted = false;
    conn.note = `Token refused: ${res.error.message}`;
    socketGone(null);
  } else if (res.error.code !== "disconnected") {
    reportError(res.error, { what: "sign in" });
  }
}

/** A socket is gone (or given up on): bookkeeping, then a scheduled reconnect or a stop. */
function socketGone(close) {
  detachSocket(close);
  if (conn.wanted) scheduleReconnect();
  else setState("closed");
  renderAll();
}

/** Forgets the current socket without waiting for a close handshake that may never complete;
 * its late events are ignored because it is no longer `conn.ws`. */
function detachSocket(close) {
  const ws = conn.ws;
  conn.ws = null;
  if (ws && ws.readyState === WebSocket.OPEN) ws.close(1000, "client gave up");
  // Closing a socket still connecting makes the browser log an error; close it once open.
  else if (ws && ws.readyState === WebSocket.CONNECTING) ws.onopen = () => ws.close(1000, "client gave up");
  if (close) conn.lastClose = close;
  if (close && NO_RETRY.has(close.code)) conn.wanted = false;
  clearTimeout(conn.stableTimer);
  clearInterval(conn.watchdog);
  failPending();
  for (const room of rooms.values()) roomOffline(room);
}

/** Exponential backoff with "equal jitter": half the ceiling fixed, half random, so a daemon
 * restart does not get every tab back in the same millisecond, and no retry is ever instant. */
function scheduleReconnect() {
  const ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2 ** conn.attempt);
  const delay = ceiling / 2 + Math.random() * (ceiling / 2);
  conn.attempt += 1;
  conn.retryAt = Date.now() + delay;
  clearTimeout(conn.retryTimer);
  conn.retryTimer = setTimeout(openSocket, delay);
  setState("reconnecting");
}

/** "Reconnect now": skips the rest of a backoff, or after a stop (a kick, a policy close)
 * reconnects with the same token once the person decides to. */
function retryNow() {
  if (conn.state === "reconnecting") openSocket();
  else if (conn.state === "closed" && conn.token && !conn.note) connect(conn.token);
}

/** A dead peer behind a silent network is never noticed by the socket itself. Ping at the
 * server's heartbeat interval; if nothing at all arrived since the previous ping, give up on
 * the socket and reconnect. */
function startWatchdog() {
  clearInterval(conn.watchdog);
  conn.awaitingReply = false;
  conn.watchdog = setInterval(() => {
    if (conn.awaitingReply) {
      socketGone({ code: 1006, reason: "no reply from the server" });
      return;
    }
    conn.awaitingReply = true;
    sendFrame({ type: "ping" });
  }, conn.heartbeatMs);
}

function setState(state) {
  conn.state = state;
  clearInterval(conn.countdown);
  if (state === "reconnecting") conn.countdown = setInterval(renderConn, 1000);
  renderConn();
}

// ---------------------------------------------------------------------------------------------
// 4. requests

let refCounter = 0;
/** ref → { ctx, resolve }. Replies may come out of order, so everything is matched on ref. */
const pending = new Map();

/**
 * Sends a frame with a fresh `ref`. The promise resolves with `{ok: true, reply}` or
 * `{ok: false, error}` and never rejects. Errors are shown to the person here, worded after
 * `ctx.what`, unless `ctx.quiet` says the caller shows them itself. A dropped connection
 * resolves every request in flight with the code `disconnected`: the server may or may not
 * have done it, and the resume replay will tell.
 */
function request(frame, ctx = {}) {
  return new Promise((resolve) => {
    if (!conn.ws || conn.ws.readyState !== WebSocket.OPEN) {
      resolve({ ok: false, error: { code: "disconnected", message: "not connected" } });
      return;
    }
    const ref = `r${++refCounter}`;
    pending.set(ref, { ctx, resolve });
    conn.ws.send(JSON.stringify({ ...frame, ref }));
  });
}

/** Frames nobody answers (typing, the watchdog's ping). */
function sendFrame(frame) {
  if (conn.ws && conn.ws.readyState === WebSocket.OPEN) conn.ws.send(JSON.stringify(frame));
}

/** Hands a reply to its request; false when the ref is not one of ours. */
function settle(frame) {
  const entry = pending.get(frame.ref);
  if (!entry) return false;
  pending.delete(frame.ref);
  if (frame.type === "error") {
    if (!entry.ctx.quiet) reportError(frame, entry.ctx);
    entry.resolve({ ok: false, error: frame });
  } else {
    entry.resolve({ ok: true, reply: frame });
  }
  return true;
}

function failPending() {
  const entries = [...pending.values()];
  pending.clear();
  for (const entry of entries) entry.resolve({ ok: false, error: { code: "disconnected", message: "connection lost" } });
}

/** Everything the server sends that is not a reply to one of our requests. */
function onFrame(frame) {
  if (typeof frame.ref === "string" && settle(frame)) return;
  switch (frame.type) {
    case "welcome":
      conn.session = frame.session;
      if (frame.heartbeat_ms > 0) conn.heartbeatMs = frame.heartbeat_ms;
      renderConn();
      break;
    case "message":
    case "edited":
    case "deleted":
    case "reaction":
      onStoredEvent(frame);
      break;
    case "presence":
      onPresence(frame);
      break;
    case "typing":
      onTyping(frame);
      break;
    case "notification":
      notice(null, "info", `Notification: ${JSON.stringify(frame.data)}`);
      break;
    case "error":
      reportError(frame, {});
      break;
    default:
      break; // pong, and frame types newer than this page
  }
}

/** Shown in the room the request was about while that room is open, else at the top. */
function reportError(err, ctx) {
  const room = ctx.room && rooms.get(ctx.room.name) === ctx.room ? ctx.room : null;
  const lead = ctx.what ? `Couldn't ${ctx.what}: ` : "";
  notice(room, "error", `${lead}${errorSentence(err)}`, err.message);
}

// ---------------------------------------------------------------------------------------------
// 5. room state

/** name → Room, in the order the rooms were opened. */
const rooms = new Map();
let activeRoom = null;
let roomCounter = 0;

function newRoom(name) {
  return {
    name,
    id: `room-${++roomCounter}`, // for DOM ids; room names may hold `:` `.` `@` `+`
    peer: conn.user ? dmPeer(name) : null, // the other user of a dm room (known once signed in)
    status: "offline", // offline | joining | joined
    members: 0,
    messages: new Map(), // seq → message, folded: current body, edited, deleted, reactions
    seen: new Set(), // seqs of every stored event applied, so replays apply nothing twice
    resumeSeq: null, // highest seq up to which nothing is missing: the next join's `since`
    since: null, // the `since` of the join in flight
    joinedSeq: 0, // `seq` of the last `joined`: the replay ends there
    replayDone: false,
    orphans: new Map(), // target seq → edits/deletes/reactions for messages not loaded yet
    moreOlder: false,
    loadingOlder: false,
    historyLoaded: false,
    truncated: false,
    presence: new Set(),
    presenceLog: null, // presence events that raced a `presence` request in flight
    typing: new Map(), // user → expiry timer
    typingOut: { active: false, lastSent: 0, idle: 0 },
    outbox: [],
    unread: 0,
    editing: null, // seq of the message being edited here
    editDraft: "",
    confirmDelete: null,
    stick: true, // keep the list scrolled to the newest message
    el: null,
  };
}

/** Opens (and joins) a room, or just shows it when it is already open. */
function openRoom(name, { activate = true } = {}) {
  let room = rooms.get(name);
  if (!room) {
    room = newRoom(name);
    rooms.set(name, room);
    buildRoomPanel(room);
    if (conn.state === "open") joinRoom(room);
  }
  if (activate || !activeRoom) setActive(room);
  renderRoomList();
  return room;
}

function closeRoom(room) {
  rooms.delete(room.name);
  for (const timer of room.typing.values()) clearTimeout(timer);
  clearTimeout(room.typingOut.idle);
  room.el.panel.remove();
  if (activeRoom === room) setActive(rooms.values().next().value || null);
  renderRoomList();
}

function leaveRoom(room) {
  stopTyping(room);
  if (room.status !== "offline") {
    // `not_in_room` here only means the server already forgot us: nothing to tell the person.
    request({ type: "leave", room: room.name }, { what: `leave ${room.name}`, quiet: true });
  }
  closeRoom(room);
}

/** Joins, or re-joins after a reconnect with `since` = the last seq we have everything up to. */
function joinRoom(room) {
  room.status = "joining";
  room.replayDone = false;
  room.peer = dmPeer(room.name);
  const frame = { type: "join", room: room.name };
  if (room.resumeSeq != null) frame.since = room.resumeSeq;
  room.since = frame.since ?? null;
  renderRoomHeader(room);
  request(frame, { what: `join ${room.name}`, quiet: true }).then((res) => {
    if (rooms.get(room.name) !== room) return;
    if (res.ok) {
      onJoined(room, res.reply);
    } else if (res.error.code !== "disconnected") {
      // The room never opened: remove its tab and say why at the top of the page.
      closeRoom(room);
      reportError(res.error, { what: `join ${room.name}` });
    }
  });
}

function onJoined(room, joined) {
  room.status = "joined";
  room.members = joined.members;
  room.joinedSeq = joined.seq;
  if (room.resumeSeq == null || !room.historyLoaded) {
    // First join (or a reconnect before its first history page came): live events start after `seq`; what came before is loaded with `history`,
    // asked only now so that its snapshot is at least as new as the join.
    room.resumeSeq = Math.max(room.resumeSeq ?? 0, joined.seq);
    loadNewest(room);
  } else if (joined.truncated) {
    // The replay is only the newest part of what we missed: our copy is stale. Start over from
    // the newest history page (edits, deletes and reactions already folded in) and say so.
    room.truncated = true;
    room.messages.clear();
    room.orphans.clear();
    room.el.list.replaceChildren();
    room.resumeSeq = Math.max(room.resumeSeq, joined.seq);
    room.moreOlder = false;
    loadNewest(room);
  }
  checkReplayDone(room);
  requestPresence(room);
  renderRoom(room);
  renderRoomList();
}

/** Marks a stored event applied and advances the resume point while there is no gap. */
function markSeen(room, seq) {
  room.seen.add(seq);
  if (room.resumeSeq == null) return;
  while (room.seen.has(room.resumeSeq + 1)) room.resumeSeq += 1;
}

/** The replay after a `joined` ends with the event whose seq the `joined` named. Until it is
 * in, a message we sent before a drop may still show up in it; after, it surely was lost. */
function checkReplayDone(room) {
  if (room.replayDone || room.status !== "joined") return;
  if (room.since == null || room.since >= room.joinedSeq || room.seen.has(room.joinedSeq)) {
    room.replayDone = true;
    flushOutbox(room);
  }
}

function roomOffline(room) {
  room.status = "offline";
  room.presence.clear();
  room.presenceLog = null;
  for (const timer of room.typing.values()) clearTimeout(timer);
  room.typing.clear();
  room.typingOut.active = false;
  clearTimeout(room.typingOut.idle);
  for (const item of room.outbox) if (item.state === "sending") item.state = "unconfirmed";
}

/** message / edited / deleted / reaction, live or replayed. */
function onStoredEvent(ev) {
  let room = rooms.get(ev.room);
  if (!room) {
    // dm rooms deliver to both users whether or not they joined: a new conversation opens.
    if (ev.type !== "message" || !ev.room.startsWith("dm:")) return;
    room = openRoom(ev.room, { activate: false });
  }
  applyStored(room, ev, { live: true });
}

function applyStored(room, ev, { live }) {
  if (room.seen.has(ev.seq)) return; // a replay of something we already have
  markSeen(room, ev.seq);
  if (ev.type === "message") {
    addMessage(room, messageFromEvent(ev), { live });
    clearTyping(room, ev.from);
  } else {
    const msg = room.messages.get(ev.target);
    if (msg) {
      applyOp(msg, ev);
      renderMessage(room, msg);
    } else {
      // Not loaded yet (older than the history we have, or its page is still on its way).
      if (!room.orphans.has(ev.target)) room.orphans.set(ev.target, []);
      room.orphans.get(ev.target).push(ev);
    }
  }
  checkReplayDone(room);
}

function messageFromEvent(ev) {
  learnName(ev.from, ev.name);
  return {
    seq: ev.seq,
    from: ev.from,
    body: ev.body,
    ts: ev.ts,
    replyTo: ev.reply_to ?? null,
    editedTs: null,
    deleted: false,
    reactions: new Map(),
  };
}

function messageFromHistory(entry) {
  const msg = messageFromEvent(entry);
  msg.editedTs = entry.edited_ts ?? null;
  msg.deleted = entry.deleted === true;
  for (const [emoji, users] of Object.entries(entry.reactions || {})) {
    if (users.length) msg.reactions.set(emoji, new Set(users));
  }
  return msg;
}

/** Edits set the body, reactions set one (emoji, user) pair, a delete is final. Re-applying a
 * run of them in seq order over any older snapshot therefore ends in the same state, which is
 * what makes orphans and the history/live race safe. */
function applyOp(msg, ev) {
  if (msg.deleted) return;
  if (ev.type === "edited") {
    msg.body = ev.body;
    msg.editedTs = ev.ts;
  } else if (ev.type === "deleted") {
    msg.deleted = true;
    msg.body = null;
    msg.reactions.clear();
  } else if (ev.type === "reaction") {
    const users = msg.reactions.get(ev.emoji) || new Set();
    if (ev.op === "remove") users.delete(ev.from);
    else users.add(ev.from);
    if (users.size) msg.reactions.set(ev.emoji, users);
    else msg.reactions.delete(ev.emoji);
  }
}

function addMessage(room, msg, { live }) {
  if (room.messages.has(msg.seq)) return;
  if (live && msg.from === conn.user) settleFromReplay(room, msg);
  room.messages.set(msg.seq, msg);
  const orphans = room.orphans.get(msg.seq);
  if (orphans) {
    room.orphans.delete(msg.seq);
    for (const ev of orphans) applyOp(msg, ev);
  }
  renderMessage(room, msg);
  if (room.messages.size === 1) renderHistoryTop(room); // "No messages yet" goes
  if (live && msg.from !== conn.user && room !== activeRoom) {
    room.unread += 1;
    renderRoomList();
  }
}

function loadNewest(room) {
  request({ type: "history", room: room.name, limit: HISTORY_PAGE }, { what: `load messages of ${room.name}`, room })
    .then((res) => {
      if (!res.ok || rooms.get(room.name) !== room) return;
      applyHistory(room, res.reply, { older: false });
    });
}

function loadOlder(room) {
  if (room.loadingOlder || !room.moreOlder || conn.state !== "open") return;
  const oldest = Math.min(...room.messages.keys());
  if (!Number.isFinite(oldest)) return;
  room.loadingOlder = true;
  renderHistoryTop(room);
  request({ type: "history", room: room.name, before: oldest, limit: HISTORY_PAGE },
    { what: `load older messages of ${room.name}`, room })
    .then((res) => {
      room.loadingOlder = false;
      if (rooms.get(room.name) !== room) return;
      if (res.ok) applyHistory(room, res.reply, { older: true });
      else renderHistoryTop(room);
    });
}

function applyHistory(room, reply, { older }) {
  const scroller = room.el.scroller;
  const fromBottom = scroller.scrollHeight - scroller.scrollTop;
  for (const entry of reply.messages) {
    room.seen.add(entry.seq);
    addMessage(room, messageFromHistory(entry), { live: false });
  }
  // `more` of the newest page and of `before` pages both speak of older messages.
  room.moreOlder = reply.more;
  room.historyLoaded = true;
  renderHistoryTop(room);
  if (older) scroller.scrollTop = scroller.scrollHeight - fromBottom; // keep what was on screen
  else if (room.stick) scrollToBottom(room);
}

function requestPresence(room) {
  room.presenceLog = [];
  request({ type: "presence", room: room.name }, { what: `list who is in ${room.name}`, room })
    .then((res) => {
      if (!res.ok || rooms.get(room.name) !== room) return;
      // The list and the events can cross: replay the events seen meanwhile over the list.
      const log = room.presenceLog || [];
      room.presenceLog = null;
      room.presence = new Set(res.reply.users);
      for (const ev of log) applyPresence(room, ev);
      if (conn.user) room.presence.add(conn.user);
      renderPresence(room);
    });
}

function onPresence(ev) {
  const room = rooms.get(ev.room);
  if (!room) return;
  if (room.presenceLog) room.presenceLog.push(ev);
  applyPresence(room, ev);
  if (ev.event === "leave") clearTyping(room, ev.user);
  renderPresence(room);
}

function applyPresence(room, ev) {
  if (ev.event === "join") room.presence.add(ev.user);
  else if (ev.event === "leave") room.presence.delete(ev.user);
}

/** Others' typing: shown until `active:false`, or expired when updates stop coming. */
const TYPING_EXPIRE_MS = 6000;

function onTyping(ev) {
  const room = rooms.get(ev.room);
  if (!room || ev.user === conn.user) return;
  clearTimeout(room.typing.get(ev.user));
  if (ev.active) room.typing.set(ev.user, setTimeout(() => clearTyping(room, ev.user), TYPING_EXPIRE_MS));
  else room.typing.delete(ev.user);
  renderTyping(room);
}

function clearTyping(room, user) {
  if (!room.typing.has(user)) return;
  clearTimeout(room.typing.get(user));
  room.typing.delete(user);
  renderTyping(room);
}

// ---------------------------------------------------------------------------------------------
// 6. sending

let localCounter = 0;

/** Every message the person sends goes through the outbox, so that nothing typed is lost to a
 * dropped connection and nothing is sent twice: an item sent before a drop without an ack is
 * "unconfirmed" until the resume replay either contains it or ends without it. */
function queueMessage(room, text) {
  const item = { id: ++localCounter, body: { text }, state: "queued", error: "" };
  room.outbox.push(item);
  room.stick = true;
  if (room.status === "joined" && room.replayDone) sendItem(room, item);
  renderOutbox(room);
  scrollToBottom(room);
}

function sendItem(room, item) {
  item.state = "sending";
  item.error = "";
  // In a dm room the page sends `direct`, the frame made for it; elsewhere `send`.
  const frame = room.peer
    ? { type: "direct", to: room.peer, body: item.body }
    : { type: "send", room: room.name, body: item.body };
  request(frame, { what: "send your message", quiet: true }).then((res) => {
    if (rooms.get(room.name) !== room || !room.outbox.includes(item)) return;
    if (res.ok) {
      room.outbox.splice(room.outbox.indexOf(item), 1);
      const ack = res.reply;
      markSeen(room, ack.seq);
      addMessage(room, { seq: ack.seq, from: conn.user, body: item.body, ts: ack.ts, replyTo: null,
        editedTs: null, deleted: false, reactions: new Map() }, { live: false });
      checkReplayDone(room);
    } else if (res.error.code === "disconnected") {
      item.state = "unconfirmed";
    } else {
      item.state = "failed";
      item.error = `${errorSentence(res.error)} (${res.error.message})`;
    }
    renderOutbox(room);
    if (room.stick) scrollToBottom(room);
  });
  renderOutbox(room);
}

/** After a resume replay: everything still waiting goes out, in the order it was typed. */
function flushOutbox(room) {
  for (const item of room.outbox) {
    if (item.state === "queued" || item.state === "unconfirmed") sendItem(room, item);
  }
}

/** A replayed message of ours that matches an unconfirmed one: it was stored after all. */
function settleFromReplay(room, msg) {
  const i = room.outbox.findIndex((item) => item.state === "unconfirmed" && sameBody(item.body, msg.body));
  if (i >= 0) {
    room.outbox.splice(i, 1);
    renderOutbox(room);
  }
}

/** edit / delete / react / unreact: the ack is our only copy of the event, so apply it from
 * the ack (the server sends the event to everyone but us). */
function messageAction(room, frame, what, toEvent) {
  request({ ...frame, room: room.name }, { what, room }).then((res) => {
    if (!res.ok || rooms.get(room.name) !== room) return;
    const ev = { ...toEvent(res.reply), seq: res.reply.seq, ts: res.reply.ts, from: conn.user, target: frame.target };
    applyStored(room, ev, { live: false });
  });
}

function editMessage(room, seq, text) {
  const body = { text };
  messageAction(room, { type: "edit", target: seq, body }, `edit message #${seq}`, () => ({ type: "edited", body }));
}

function deleteMessage(room, seq) {
  messageAction(room, { type: "delete", target: seq }, `delete message #${seq}`, () => ({ type: "deleted" }));
}

function toggleReaction(room, seq, emoji) {
  const msg = room.messages.get(seq);
  if (!msg) return;
  const mine = msg.reactions.get(emoji)?.has(conn.user);
  const type = mine ? "unreact" : "react";
  const what = mine ? `remove your ${emoji} from message #${seq}` : `react ${emoji} to message #${seq}`;
  messageAction(room, { type, target: seq, emoji }, what, () => ({ type: "reaction", emoji, op: mine ? "remove" : "add" }));
}

/** Our typing: `active:true` at most every few seconds while keys come, `active:false` after a
 * pause, on send, and when the composer empties. */
const TYPING_RESEND_MS = 3000;
const TYPING_IDLE_MS = 2500;

function composerInput(room, text) {
  const t = room.typingOut;
  if (room.status !== "joined") return;
  if (!text.trim()) {
    stopTyping(room);
    return;
  }
  const now = Date.now();
  if (!t.active || now - t.lastSent > TYPING_RESEND_MS) {
    t.active = true;
    t.lastSent = now;
    sendFrame({ type: "typing", room: room.name, active: true });
  }
  clearTimeout(t.idle);
  t.idle = setTimeout(() => stopTyping(room), TYPING_IDLE_MS);
}

function stopTyping(room) {
  const t = room.typingOut;
  clearTimeout(t.idle);
  if (!t.active) return;
  t.active = false;
  if (room.status === "joined") sendFrame({ type: "typing", room: room.name, active: false });
}

// ---------------------------------------------------------------------------------------------
// 7. rendering

const ui = {
  conn: $("#conn"),
  connText: $("#conn-text"),
  connDetail: $("#conn-detail"),
  me: $("#me"),
  session: $("#session"),
  retry: $("#retry-btn"),
  disconnect: $("#disconnect-btn"),
  tokenForm: $("#token-form"),
  tokenInput: $("#token-input"),
  notices: $("#global-notices"),
  roomList: $("#room-list"),
  noRooms: $("#no-rooms"),
  rooms: $("#rooms"),
  empty: $("#empty-state"),
};

function renderAll() {
  renderConn();
  renderRoomList();
  for (const room of rooms.values()) renderRoom(room);
}

function renderConn() {
  ui.conn.dataset.state = conn.state;
  let text;
  let detail = "";
  switch (conn.state) {
    case "connecting":
      text = conn.lastClose ? "Reconnecting…" : "Connecting…";
      break;
    case "open":
      text = "Connected";
      break;
    case "reconnecting": {
      const secs = Math.max(0, Math.ceil((conn.retryAt - Date.now()) / 1000));
      text = `Reconnecting in ${secs} s (attempt ${conn.attempt})`;
      detail = conn.lastClose ? `last close: ${closeText(conn.lastClose)}` : "";
      break;
    }
    case "closed":
      text = "Disconnected";
      detail = conn.note || (conn.lastClose ? `close ${closeText(conn.lastClose)}` : "");
      break;
    default:
      text = "Not connected";
  }
  ui.connText.textContent = text;
  ui.connDetail.textContent = detail;
  ui.me.textContent = conn.user && conn.state === "open" ? `as ${displayName(conn.user)}` : "";
  ui.me.title = conn.user || "";
  ui.session.textContent = conn.session ? `session ${conn.session}` : "";
  ui.retry.hidden = !(conn.state === "reconnecting" || (conn.state === "closed" && conn.token && !conn.note));
  ui.disconnect.hidden = !["connecting", "open", "reconnecting"].includes(conn.state);
  ui.tokenForm.hidden = !ui.disconnect.hidden;
  for (const room of rooms.values()) renderComposerState(room);
}

function renderRoomList() {
  ui.roomList.replaceChildren(...[...rooms.values()].map((room) => {
    const label = room.peer || dmPeer(room.name)
      ? `@ ${displayName(room.peer || dmPeer(room.name))}`
      : `# ${room.name}`;
    return h("li", {},
      h("button", {
        type: "button",
        class: `room-tab status-${room.status}`,
        "aria-current": room === activeRoom ? "page" : null,
        "aria-controls": room.id,
        title: room.name,
        dataset: { room: room.name },
        onclick: () => setActive(room),
      },
      h("span", { class: "room-tab-name" }, label),
      room.unread ? h("span", { class: "badge", "aria-label": `${room.unread} unread` }, String(room.unread)) : null));
  }));
  ui.noRooms.hidden = rooms.size > 0;
  ui.empty.hidden = rooms.size > 0;
}

function setActive(room) {
  activeRoom = room;
  for (const r of rooms.values()) r.el.panel.hidden = r !== room;
  if (room) {
    room.unread = 0;
    if (room.stick) scrollToBottom(room);
  }
  renderRoomList();
}

/** A room's panel is built once and kept while the room is open, so switching rooms keeps
 * each one's scroll position and draft. */
function buildRoomPanel(room) {
  const composerId = `${room.id}-composer`;
  const el = {};
  el.title = h("h2", { class: "room-title" });
  el.meta = h("span", { class: "room-meta" });
  el.leave = h("button", { type: "button", class: "leave", onclick: () => leaveRoom(room) }, "Leave");
  el.notices = h("div", { class: "notices", "aria-live": "assertive" });
  el.banner = h("div", { class: "banner", hidden: true });
  el.historyTop = h("div", { class: "history-top" });
  el.list = h("ol", { class: "msg-list", "aria-label": `Messages in ${room.name}` });
  el.outbox = h("ol", { class: "msg-list outbox", "aria-label": "Messages being sent" });
  el.scroller = h("div", { class: "msg-scroll", tabindex: "0", role: "log", "aria-live": "polite",
    "aria-label": `Messages in ${room.name}` }, el.historyTop, el.list, el.outbox);
  el.presenceTitle = h("h3", { class: "presence-title" });
  el.presence = h("ul", { class: "presence-list" });
  el.typing = h("p", { class: "typing", "aria-live": "polite" });
  el.input = h("textarea", { id: composerId, class: "composer-input", rows: "1", maxlength: "4000",
    placeholder: "Write a message…", autocomplete: "off" });
  el.send = h("button", { type: "submit", class: "send" }, "Send");
  el.composer = h("form", { class: "composer" },
    h("label", { for: composerId, class: "sr-only" }, `Message ${room.name}`), el.input, el.send);
  el.panel = h("section", { class: "room-panel", id: room.id, "aria-label": `Room ${room.name}`, hidden: true,
    dataset: { room: room.name } },
  h("header", { class: "room-head" }, el.title, el.meta, el.leave),
  el.notices,
  el.banner,
  el.scroller,
  h("aside", { class: "presence", "aria-label": "People in this room" }, el.presenceTitle, el.presence),
  el.typing,
  el.composer);
  room.el = el;
  wireRoomPanel(room);
  ui.rooms.append(el.panel);
  renderRoom(room);
}

function renderRoom(room) {
  renderRoomHeader(room);
  renderBanner(room);
  renderHistoryTop(room);
  renderPresence(room);
  renderTyping(room);
  renderOutbox(room);
  renderComposerState(room);
  for (const msg of room.messages.values()) renderMessage(room, msg);
}

function renderRoomHeader(room) {
  const peer = room.peer || dmPeer(room.name);
  room.el.title.textContent = peer ? `Direct messages with ${displayName(peer)}` : `# ${room.name}`;
  // `members` is a snapshot taken at join; the presence list keeps it current afterwards.
  const members = room.presence.size || room.members;
  const status = { joining: "joining…", joined: `${members} member${members === 1 ? "" : "s"}`, offline: "offline" }[room.status];
  room.el.meta.textContent = status || "";
}

function renderBanner(room) {
  const b = room.el.banner;
  b.hidden = !room.truncated;
  if (!room.truncated) return;
  b.replaceChildren(
    h("p", {}, h("strong", {}, "Some messages were skipped while you were away. "),
      "The room was reloaded from history; scroll up or use \u201cLoad older messages\u201d to page back."),
    h("button", { type: "button", onclick: () => { room.truncated = false; renderBanner(room); } }, "Dismiss"));
}

function renderHistoryTop(room) {
  const top = room.el.historyTop;
  room.el.scroller.setAttribute("aria-busy", room.loadingOlder ? "true" : "false");
  if (room.loadingOlder) {
    top.replaceChildren(h("p", { class: "hint" }, "Loading older messages…"));
  } else if (room.moreOlder) {
    top.replaceChildren(h("button", { type: "button", class: "load-older", onclick: () => loadOlder(room) }, "Load older messages"));
  } else if (room.historyLoaded) {
    top.replaceChildren(h("p", { class: "hint" }, room.messages.size ? "This is the beginning of the room." : "No messages yet. Say hello!"));
  } else {
    top.replaceChildren();
  }
}

function messageEl(room, msg) {
  const own = msg.from === conn.user;
  const mayDelete = own || conn.claims.role === "admin"; // the server has the last word
  const body = bodyText(msg.body);
  const when = new Date(msg.ts);
  const actionsOn = room.status === "joined" && !msg.deleted && room.editing !== msg.seq;
  return h("li", { class: `msg${own ? " own" : ""}${msg.deleted ? " deleted" : ""}`, dataset: { seq: msg.seq, from: msg.from } },
    h("div", { class: "msg-head" },
      h("span", { class: "author", title: msg.from }, displayName(msg.from)),
      h("time", { datetime: when.toISOString(), title: when.toLocaleString() }, formatTime(msg.ts)),
      h("span", { class: "seq", title: "sequence number in this room" }, `#${msg.seq}`),
      msg.replyTo != null ? h("span", { class: "reply-to" }, `reply to #${msg.replyTo}`) : null,
      msg.editedTs && !msg.deleted ? h("span", { class: "edited", title: `edited ${new Date(msg.editedTs).toLocaleString()}` }, "(edited)") : null),
    msg.deleted
      ? h("p", { class: "msg-body placeholder" }, "This message was deleted.")
      : room.editing === msg.seq
        ? editForm(room, msg)
        : h("p", { class: `msg-body${body.json ? " json" : ""}` }, body.text),
    msg.reactions.size ? h("div", { class: "reactions", role: "group", "aria-label": "Reactions" },
      [...msg.reactions].map(([emoji, users]) => {
        const mine = users.has(conn.user);
        const who = listNames([...users]);
        return h("button", { type: "button", class: `reaction${mine ? " mine" : ""}`, "aria-pressed": mine ? "true" : "false",
          title: who, "aria-label": `${emoji} ${users.size}: ${who}`, disabled: !actionsOn,
          dataset: { action: "react", emoji } }, `${emoji} `, h("span", { class: "count" }, String(users.size)));
      })) : null,
    actionsOn ? h("div", { class: "msg-actions", role: "group", "aria-label": `Actions for message ${msg.seq}` },
      QUICK_EMOJI.map((emoji) => h("button", { type: "button", class: "quick-react", title: `React ${emoji}`,
        "aria-label": `React ${emoji}`, dataset: { action: "react", emoji } }, emoji)),
      own ? h("button", { type: "button", class: "edit", dataset: { action: "edit" } }, "Edit") : null,
      mayDelete ? h("button", { type: "button", class: `delete${room.confirmDelete === msg.seq ? " confirm" : ""}`,
        dataset: { action: "delete" } }, room.confirmDelete === msg.seq ? "Really delete?" : "Delete") : null) : null);
}

function editForm(room, msg) {
  const id = `${room.id}-edit-${msg.seq}`;
  const input = h("input", { id, class: "edit-input", value: room.editDraft, autocomplete: "off" });
  input.value = room.editDraft;
  return h("form", { class: "edit-form", dataset: { action: "edit-save" } },
    h("label", { for: id, class: "sr-only" }, `Edit message ${msg.seq}`),
    input,
    h("button", { type: "submit" }, "Save"),
    h("button", { type: "button", dataset: { action: "edit-cancel" } }, "Cancel"));
}

/** Inserts or replaces a message's element, keeping the list in seq order. */
function renderMessage(room, msg) {
  const list = room.el.list;
  const fresh = messageEl(room, msg);
  const old = list.querySelector(`li[data-seq="${msg.seq}"]`);
  const wasAtBottom = isAtBottom(room);
  if (old) {
    const focused = old.contains(document.activeElement) ? document.activeElement : null;
    old.replaceWith(fresh);
    if (focused) restoreFocus(fresh, focused);
  } else {
    let after = list.lastElementChild;
    while (after && Number(after.dataset.seq) > msg.seq) after = after.previousElementSibling;
    if (after) after.after(fresh);
    else list.prepend(fresh);
    if (wasAtBottom && room.stick) scrollToBottom(room);
  }
}

/** Re-rendering a message must not throw the keyboard user out of it. */
function restoreFocus(li, focused) {
  const action = focused.dataset?.action;
  const emoji = focused.dataset?.emoji;
  const match = action ? [...li.querySelectorAll(`[data-action="${action}"]`)].find((b) => b.dataset.emoji === emoji) : null;
  (match || li.querySelector("input, button"))?.focus();
}

function renderOutbox(room) {
  const words = {
    queued: "Waiting for the connection…",
    sending: "Sending…",
    unconfirmed: "Connection lost before the server confirmed it; checking after reconnecting…",
    failed: "Not sent.",
  };
  room.el.outbox.replaceChildren(...room.outbox.map((item) => h("li", { class: `msg own pending ${item.state}`, dataset: { local: item.id } },
    h("div", { class: "msg-head" }, h("span", { class: "author" }, displayName(conn.user || "you")),
      h("span", { class: "pending-state" }, words[item.state])),
    h("p", { class: "msg-body" }, bodyText(item.body).text),
    item.state === "failed" ? h("div", { class: "msg-failed" },
      h("p", { class: "error-text" }, item.error),
      h("button", { type: "button", onclick: () => { if (room.status === "joined") sendItem(room, item); } }, "Retry"),
      h("button", { type: "button", onclick: () => { room.outbox.splice(room.outbox.indexOf(item), 1); renderOutbox(room); } }, "Discard")) : null)));
}

function renderPresence(room) {
  renderRoomHeader(room);
  const users = [...room.presence].sort();
  room.el.presenceTitle.textContent = room.status === "joined" ? `In this room (${users.length})` : "In this room";
  room.el.presence.replaceChildren(...users.map((user) => {
    const me = user === conn.user;
    return h("li", { dataset: { user } },
      h("span", { class: "presence-dot", "aria-hidden": "true" }),
      h("span", { class: "presence-name", title: user }, displayName(user), me ? h("span", { class: "you" }, " (you)") : null),
      !me && !room.peer ? h("button", { type: "button", class: "dm-btn", "aria-label": `Message ${displayName(user)}`,
        onclick: () => openDm(user) }, "Message") : null);
  }));
}

function renderTyping(room) {
  const users = [...room.typing.keys()];
  let text = "";
  if (users.length === 1) text = `${displayName(users[0])} is typing…`;
  else if (users.length <= 3 && users.length) text = `${listNames(users)} are typing…`;
  else if (users.length) text = "Several people are typing…";
  room.el.typing.textContent = text;
}

function renderComposerState(room) {
  if (!room.el) return;
  // Typing stays possible while reconnecting: the outbox holds the message until rejoined.
  room.el.send.disabled = false;
  room.el.input.placeholder = room.status === "joined"
    ? `Message ${room.peer ? displayName(room.peer) : `#${room.name}`}`
    : "Offline: messages are sent once reconnected";
}

/** A dismissible line of text; errors stay until dismissed (at most a few are kept). */
function notice(room, kind, text, detail) {
  const area = room ? room.el.notices : ui.notices;
  const item = h("div", { class: `notice ${kind}`, role: kind === "error" ? "alert" : "status" },
    h("p", {}, text, detail ? h("span", { class: "detail" }, ` (${detail})`) : null),
    h("button", { type: "button", class: "dismiss", "aria-label": "Dismiss", onclick: () => item.remove() }, "×"));
  area.append(item);
  while (area.children.length > 3) area.firstElementChild.remove();
  if (kind !== "error") setTimeout(() => item.remove(), 8000);
}

function isAtBottom(room) {
  const s = room.el.scroller;
  return s.scrollHeight - s.scrollTop - s.clientHeight < 40;
}

function scrollToBottom(room) {
  const s = room.el.scroller;
  s.scrollTop = s.scrollHeight;
}

// ---------------------------------------------------------------------------------------------
// 8. UI wiring

function openDm(user) {
  if (!USER_RE.test(user)) {
    notice(null, "error", "That is not a valid user id: letters, digits and _ . @ + - only, at most 128.");
    return;
  }
  if (!conn.user) {
    notice(null, "error", "Connect first: the direct-message room is named after both of you.");
    return;
  }
  const room = openRoom(dmRoomName(conn.user, user));
  room.el.input.focus();
}

function wireRoomPanel(room) {
  const el = room.el;
  el.composer.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = el.input.value.trim();
    if (!text) return;
    el.input.value = "";
    stopTyping(room);
    queueMessage(room, text);
  });
  el.input.addEventListener("keydown", (event) => {
    // Enter sends, Shift+Enter is a new line (and IME composition is left alone).
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      el.composer.requestSubmit();
    }
  });
  el.input.addEventListener("input", () => composerInput(room, el.input.value));
  el.input.addEventListener("blur", () => stopTyping(room));

  el.scroller.addEventListener("scroll", () => {
    room.stick = isAtBottom(room);
    if (el.scroller.scrollTop < 60) loadOlder(room);
  }, { passive: true });

  // Message actions by delegation: the message elements are re-rendered often.
  el.list.addEventListener("click", (event) => {
    const target = event.target.closest("[data-action]");
    const li = event.target.closest("li.msg");
    if (!target || !li || target.tagName === "FORM") return;
    const seq = Number(li.dataset.seq);
    const msg = room.messages.get(seq);
    if (!msg) return;
    switch (target.dataset.action) {
      case "react":
        toggleReaction(room, seq, target.dataset.emoji);
        break;
      case "edit":
        room.editing = seq;
        room.editDraft = bodyText(msg.body).text;
        renderMessage(room, msg);
        room.el.list.querySelector(`li[data-seq="${seq}"] .edit-input`)?.focus();
        break;
      case "edit-cancel":
        endEdit(room, msg);
        break;
      case "delete":
        if (room.confirmDelete === seq) {
          room.confirmDelete = null;
          deleteMessage(room, seq);
        } else {
          // Two clicks, no dialog: a blocking confirm() would stall every socket handler.
          room.confirmDelete = seq;
          setTimeout(() => {
            if (room.confirmDelete !== seq) return;
            room.confirmDelete = null;
            renderMessage(room, msg);
          }, 4000);
        }
        renderMessage(room, msg);
        break;
      default:
        break;
    }
  });
  el.list.addEventListener("submit", (event) => {
    event.preventDefault();
    const li = event.target.closest("li.msg");
    const msg = li && room.messages.get(Number(li.dataset.seq));
    if (!msg) return;
    const text = room.editDraft.trim();
    if (text && text !== bodyText(msg.body).text) editMessage(room, msg.seq, text);
    endEdit(room, msg);
  });
  el.list.addEventListener("input", (event) => {
    if (event.target.classList.contains("edit-input")) room.editDraft = event.target.value;
  });
  el.list.addEventListener("keydown", (event) => {
    if (event.key !== "Escape" || !event.target.classList.contains("edit-input")) return;
    const msg = room.messages.get(room.editing);
    if (msg) endEdit(room, msg);
  });
}

function endEdit(room, msg) {
  room.editing = null;
  room.editDraft = "";
  renderMessage(room, msg);
  room.el.list.querySelector(`li[data-seq="${msg.seq}"] [data-action="edit"]`)?.focus();
}

function wireGlobal() {
  ui.tokenForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const token = ui.tokenInput.value.trim();
    if (!token) return;
    ui.tokenInput.value = "";
    sessionStorage.setItem(TOKEN_KEY, token);
    connect(token);
  });
  ui.retry.addEventListener("click", retryNow);
  ui.disconnect.addEventListener("click", disconnect);
  $("#join-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = $("#join-input");
    const name = input.value.trim();
    if (!ROOM_RE.test(name)) {
      notice(null, "error", "Room names use letters, digits and _ . : @ + - only, at most 128.");
      return;
    }
    input.value = "";
    openRoom(name);
  });
  $("#dm-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = $("#dm-input");
    const user = input.value.trim();
    input.value = "";
    openDm(user);
  });
  // Back online: no reason to sit out the rest of a long backoff.
  window.addEventListener("online", () => {
    if (conn.state === "reconnecting") openSocket();
  });
}

// ---------------------------------------------------------------------------------------------
// 9. boot

function boot() {
  wireGlobal();
  const params = new URLSearchParams(location.search);
  const fromUrl = params.get("token");
  if (fromUrl) {
    // Keep the token out of the address bar and the browser history once read. The tab keeps
    // it in sessionStorage so that a reload reconnects.
    params.delete("token");
    const rest = params.toString();
    history.replaceState(null, "", `${location.pathname}${rest ? `?${rest}` : ""}${location.hash}`);
    sessionStorage.setItem(TOKEN_KEY, fromUrl);
  }
  for (const name of (params.get("rooms") || "").split(",")) {
    if (ROOM_RE.test(name.trim())) openRoom(name.trim(), { activate: false });
  }
  renderAll();
  const token = fromUrl || sessionStorage.getItem(TOKEN_KEY);
  if (token) connect(token);
  else ui.tokenInput.focus();
}

boot();
})();
