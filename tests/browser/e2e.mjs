#!/usr/bin/env node
// End-to-end test of roomcast's built-in browser client (web/), run by tests/browser.rs.
//
//   node tests/browser/e2e.mjs BASE_URL TOKEN_ALICE TOKEN_BOB [--screenshot FILE]
//
// Two pages of Debian's headless Chromium, one per user, drive the real page served by a real
// daemon. The daemon restart in the middle is done by the Rust side, over a line protocol:
//   stdout  KILL               -> stdin  KILLED       (daemon killed with SIGKILL)
//   stdout  START              -> stdin  STARTED SEQ  (restarted on the same port; before that,
//                                                      while no page could connect, a third
//                                                      user posted into "lobby" as seq SEQ)
//   stdout  ROOM <name> <seq>… what both pages show, for the Rust side to check against history
// Everything else goes to stderr. Exit status 0 means every check passed.
//
// Waits are on DOM conditions with timeouts; the only time that passes unobserved is the
// page's own reconnect backoff, which is what is being exercised.

import { chromium } from "playwright-core";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import readline from "node:readline";

const CHROMIUM = process.env.ROOMCAST_CHROMIUM || "/usr/bin/chromium";
const WAIT_MS = 15000; // any single DOM condition
const RECONNECT_WAIT_MS = 45000; // both pages back after the restart (backoff included)
const TOTAL_MS = 150000; // the whole script

const args = process.argv.slice(2);
const shotAt = args.indexOf("--screenshot");
const screenshot = shotAt >= 0 ? args.splice(shotAt, 2)[1] : null;
const [base, tokenAlice, tokenBob] = args;
if (!base || !tokenAlice || !tokenBob) {
  console.error("usage: node e2e.mjs BASE_URL TOKEN_ALICE TOKEN_BOB [--screenshot FILE]");
  process.exit(2);
}

const log = (...parts) => console.error("[e2e]", ...parts);
const control = (line) => process.stdout.write(`${line}\n`);

class Failure extends Error {}
function check(cond, what) {
  if (!cond) throw new Failure(what);
}

// ---- the control channel from the Rust side ----

const input = readline.createInterface({ input: process.stdin });
const received = [];
let wake = null;
input.on("line", (line) => {
  received.push(line.trim());
  wake?.();
});

async function expectLine(word, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const i = received.findIndex((l) => l.split(" ")[0] === word);
    if (i >= 0) return received.splice(i, 1)[0];
    const left = deadline - Date.now();
    if (left <= 0) throw new Failure(`no ${word} from the test harness within ${timeoutMs} ms`);
    await new Promise((resolve) => {
      const t = setTimeout(resolve, left);
      wake = () => { clearTimeout(t); resolve(); };
    });
  }
}

// ---- console hygiene ----

// The page must log no errors. The one exception is Chromium's own network line for a
// WebSocket that could not connect, which it prints for every retry while the daemon is down.
let daemonDown = false;
const consoleErrors = [];
let tolerated = 0;
function watchConsole(page, who) {
  page.on("console", (msg) => {
    if (msg.type() !== "error" && msg.type() !== "warning") return;
    const text = msg.text();
    if (daemonDown && /^WebSocket connection to 'ws:\/\/[^']+\/ws' failed/.test(text)) {
      tolerated += 1;
      return;
    }
    consoleErrors.push(`${who} console.${msg.type()}: ${text}`);
  });
  page.on("pageerror", (err) => consoleErrors.push(`${who} uncaught: ${err.message}`));
}

// ---- the frames each page exchanges, to check the resume on the wire ----

let phase = "before"; // "after" once the daemon has been killed
function recordFrames(page) {
  const frames = [];
  page.on("websocket", (ws) => {
    const record = (dir) => ({ payload }) => {
      try {
        frames.push({ dir, phase, frame: JSON.parse(payload) });
      } catch {
        // not JSON: the page sends none, the server neither
      }
    };
    ws.on("framesent", record("sent"));
    ws.on("framereceived", record("received"));
  });
  return frames;
}

/** The page re-joined `roomName` with `since` = the last seq it had before the drop, and the
 * replay after `joined` carried `missedSeq`, once. */
function checkResume(frames, who, roomName, missedSeq) {
  const STORED = new Set(["message", "edited", "deleted", "reaction", "ack"]);
  const before = frames.filter((f) => f.phase === "before" && f.dir === "received" && f.frame.room === roomName && STORED.has(f.frame.type));
  check(before.length > 0, `${who} saw no events in ${roomName} before the drop`);
  const lastSeq = Math.max(...before.map((f) => f.frame.seq));
  const after = frames.filter((f) => f.phase === "after");
  const join = after.find((f) => f.dir === "sent" && f.frame.type === "join" && f.frame.room === roomName);
  check(join, `${who} never re-joined ${roomName}`);
  check(join.frame.since === lastSeq, `${who} re-joined ${roomName} with since=${join.frame.since}, but the last seq it had was ${lastSeq}`);
  const joinedAt = after.findIndex((f) => f.dir === "received" && f.frame.type === "joined" && f.frame.ref === join.frame.ref);
  check(joinedAt >= 0, `${who} got no joined for its resume of ${roomName}`);
  check(after[joinedAt].frame.seq >= missedSeq, `${who}'s resume joined at seq ${after[joinedAt].frame.seq}, before ${missedSeq}`);
  const replayed = after.slice(joinedAt).filter((f) => f.dir === "received" && f.frame.type === "message" && f.frame.room === roomName && f.frame.seq === missedSeq);
  check(replayed.length === 1, `${who} received seq ${missedSeq} ${replayed.length} times after re-joining`);
  log(`${who}: re-joined ${roomName} with since=${lastSeq}, replay carried seq ${missedSeq}`);
}

// ---- page helpers ----

const room = (name) => `.room-panel[data-room="${name}"]`;
const messages = (name) => `${room(name)} ol.msg-list:not(.outbox) > li.msg`;

/** The li of the message with this text in that room (on screen, with a seq). */
function messageByText(page, roomName, text) {
  return page.locator(messages(roomName), { hasText: text });
}

async function waitVisible(page, selector, what, timeout = WAIT_MS) {
  try {
    await page.locator(selector).first().waitFor({ state: "visible", timeout });
  } catch {
    throw new Failure(`${what}: ${selector} not visible within ${timeout} ms`);
  }
}

async function waitText(page, selector, pattern, what, timeout = WAIT_MS) {
  try {
    await page.waitForFunction(
      ([sel, src, flags]) => {
        const el = document.querySelector(sel);
        return !!el && new RegExp(src, flags).test(el.textContent);
      },
      [selector, pattern.source, pattern.flags],
      // Poll on a timer: requestAnimationFrame (the default) stalls in the page not in front.
      { timeout, polling: 50 },
    );
  } catch {
    const now = await page.locator(selector).first().textContent().catch(() => "(missing)");
    throw new Failure(`${what}: ${selector} never matched ${pattern} within ${timeout} ms (now: ${JSON.stringify(now)})`);
  }
}

async function waitState(page, state, who, timeout = WAIT_MS) {
  await waitVisible(page, `#conn[data-state="${state}"]`, `${who} connection state ${state}`, timeout);
}

async function joinViaForm(page, name) {
  await page.fill("#join-input", name);
  await page.press("#join-input", "Enter");
}

async function send(page, roomName, text) {
  const box = `${room(roomName)} .composer-input`;
  await page.fill(box, text);
  await page.press(box, "Enter");
}

/** Seq of a message as the page shows it (data-seq and the visible "#n" agree). */
async function seqOf(page, roomName, text) {
  const li = messageByText(page, roomName, text);
  await li.first().waitFor({ state: "visible", timeout: WAIT_MS }).catch(() => {
    throw new Failure(`message ${JSON.stringify(text)} never showed in ${roomName}`);
  });
  check((await li.count()) === 1, `message ${JSON.stringify(text)} shown more than once in ${roomName}`);
  const seq = Number(await li.getAttribute("data-seq"));
  const label = await li.locator(".seq").textContent();
  check(label === `#${seq}`, `seq label ${label} does not match data-seq ${seq}`);
  return seq;
}

/** Hovers a message (its action bar appears on hover) and clicks one of its actions. */
async function messageAction(page, roomName, seq, selector) {
  const li = page.locator(`${messages(roomName)}[data-seq="${seq}"]`);
  await li.hover();
  await li.locator(selector).click();
}

/** The seqs a page shows in a room, with the check that they are unique and in order. */
async function shownSeqs(page, roomName, who) {
  const seqs = await page.locator(messages(roomName)).evaluateAll((lis) => lis.map((li) => Number(li.dataset.seq)));
  for (let i = 1; i < seqs.length; i++) {
    check(seqs[i] > seqs[i - 1], `${who} shows ${roomName} out of order or twice: ${seqs.join(",")}`);
  }
  const pendingCount = await page.locator(`${room(roomName)} ol.outbox > li`).count();
  check(pendingCount === 0, `${who} still has ${pendingCount} unsent message(s) in ${roomName}`);
  return seqs;
}

// ---- the scenario ----

async function scenario(alice, bob) {
  const aliceFrames = recordFrames(alice);
  const bobFrames = recordFrames(bob);
  log("open both pages with ?token=");
  await alice.goto(`${base}/?token=${encodeURIComponent(tokenAlice)}`);
  await bob.goto(`${base}/?token=${encodeURIComponent(tokenBob)}`);
  await waitState(alice, "open", "alice");
  await waitState(bob, "open", "bob");
  check(!alice.url().includes("token="), `the token stayed in the address bar: ${alice.url()}`);
  await waitText(alice, "#session", /^session [0-9a-f]{16}$/, "alice's session id");
  const sessionBefore = await alice.textContent("#session");
  await waitText(alice, "#me", /Alice/, "alice's display name from the token");

  log("both join lobby; presence shows each other");
  await joinViaForm(alice, "lobby");
  await joinViaForm(bob, "lobby");
  await waitVisible(alice, `${room("lobby")} .presence-list li[data-user="bob"]`, "bob in alice's presence list");
  await waitVisible(bob, `${room("lobby")} .presence-list li[data-user="alice"]`, "alice in bob's presence list");
  await waitText(alice, `${room("lobby")} .room-meta`, /^2 members$/, "lobby member count");

  log("typing indicator, then a message");
  await alice.locator(`${room("lobby")} .composer-input`).pressSequentially("Morning! Is the staging deploy done");
  await waitText(bob, `${room("lobby")} .typing`, /^alice is typing…$/i, "alice typing, seen by bob (by id: she has sent nothing yet)");
  await alice.press(`${room("lobby")} .composer-input`, "Enter");
  const first = await seqOf(bob, "lobby", "Morning! Is the staging deploy done");
  check(first === (await seqOf(alice, "lobby", "Morning! Is the staging deploy done")), "sender and receiver disagree on the seq");
  await waitText(bob, `${messages("lobby")}[data-seq="${first}"] .author`, /^Alice$/, "author display name");
  await waitText(bob, `${room("lobby")} .typing`, /^$/, "typing line cleared by the message");

  log("edit on alice's page shows on bob's");
  await messageAction(alice, "lobby", first, '[data-action="edit"]');
  await alice.fill(`${messages("lobby")}[data-seq="${first}"] .edit-input`, "Morning! Is the staging deploy done yet?");
  await alice.press(`${messages("lobby")}[data-seq="${first}"] .edit-input`, "Enter");
  await waitText(bob, `${messages("lobby")}[data-seq="${first}"] .msg-body`, /^Morning! Is the staging deploy done yet\?$/, "edited body on bob's page");
  await waitVisible(bob, `${messages("lobby")}[data-seq="${first}"] .edited`, "edited marker on bob's page");
  check((await bob.locator(`${messages("lobby")}[data-seq="${first}"] [data-action="edit"]`).count()) === 0,
    "bob is offered to edit alice's message");

  log("reactions both ways");
  await send(bob, "lobby", "Yes, it finished ten minutes ago.");
  const reply = await seqOf(alice, "lobby", "Yes, it finished ten minutes ago.");
  await messageAction(bob, "lobby", first, '.quick-react[data-emoji="👍"]');
  await waitText(alice, `${messages("lobby")}[data-seq="${first}"] .reaction`, /^👍 1$/, "bob's reaction on alice's page");
  await messageAction(alice, "lobby", reply, '.quick-react[data-emoji="🎉"]');
  await waitText(bob, `${messages("lobby")}[data-seq="${reply}"] .reaction`, /^🎉 1$/, "alice's reaction on bob's page");
  // Toggle off and on again: unreact goes through the same path.
  await bob.locator(`${messages("lobby")}[data-seq="${first}"] .reaction`).click();
  await waitVisible(alice, `${messages("lobby")}[data-seq="${first}"]:not(:has(.reaction))`, "bob's unreact on alice's page");
  await messageAction(bob, "lobby", first, '.quick-react[data-emoji="👍"]');
  await waitText(alice, `${messages("lobby")}[data-seq="${first}"] .reaction`, /^👍 1$/, "bob's reaction again");

  log("a refused request is explained in plain words");
  await joinViaForm(bob, "dm:alice:carol");
  await waitText(bob, "#global-notices .notice.error", /You are not allowed to do that in this room\./, "forbidden join explained");
  await waitText(bob, "#global-notices .notice.error", /join dm:alice:carol/, "the error names what was attempted");
  check((await bob.locator(room("dm:alice:carol")).count()) === 0, "a refused room kept its tab");
  await bob.click("#global-notices .notice.error .dismiss");

  log("a second room");
  await joinViaForm(alice, "random");
  await joinViaForm(bob, "random");
  await waitVisible(alice, `${room("random")} .presence-list li[data-user="bob"]`, "bob in random");
  await send(bob, "random", "Lunch at noon?");
  await seqOf(alice, "random", "Lunch at noon?");

  log("direct message from the presence list");
  await alice.click('.room-tab[data-room="lobby"]');
  await alice.click(`${room("lobby")} .presence-list li[data-user="bob"] .dm-btn`);
  await waitVisible(alice, `${room("dm:alice:bob")}:not([hidden])`, "alice's dm room opened");
  await waitText(alice, `${room("dm:alice:bob")} .room-meta`, /member/, "alice joined the dm room");
  await send(alice, "dm:alice:bob", "psst, can you review my PR?");
  await seqOf(alice, "dm:alice:bob", "psst, can you review my PR?");
  await waitVisible(bob, '.room-tab[data-room="dm:alice:bob"] .badge', "a dm tab with an unread badge on bob's page");
  await bob.click('.room-tab[data-room="dm:alice:bob"]');
  await seqOf(bob, "dm:alice:bob", "psst, can you review my PR?");
  await waitText(bob, `${room("dm:alice:bob")} .room-title`, /^Direct messages with Alice$/, "dm title");
  await bob.click('.room-tab[data-room="lobby"]');

  log("restart the daemon; both pages must reconnect by themselves");
  control("KILL");
  await expectLine("KILLED", WAIT_MS);
  daemonDown = true;
  phase = "after";
  await waitVisible(alice, '#conn[data-state="reconnecting"], #conn[data-state="connecting"]', "alice notices the drop");
  await waitVisible(bob, '#conn[data-state="reconnecting"], #conn[data-state="connecting"]', "bob notices the drop");
  await waitText(alice, "#conn-detail", /1006/, "the close code is shown");
  // Typed while the daemon is down: kept in the outbox and sent after the resume.
  await alice.click('.room-tab[data-room="lobby"]');
  await send(alice, "lobby", "Sent while the server was down.");
  await waitText(alice, `${room("lobby")} ol.outbox li .pending-state`, /Waiting for the connection/, "queued message shown as waiting");
  control("START");
  const missedSeq = Number((await expectLine("STARTED", WAIT_MS)).split(" ")[1]);
  await waitState(alice, "open", "alice after the restart", RECONNECT_WAIT_MS);
  await waitState(bob, "open", "bob after the restart", RECONNECT_WAIT_MS);
  daemonDown = false;
  const sessionAfter = await alice.textContent("#session");
  check(sessionAfter !== sessionBefore && /^session [0-9a-f]{16}$/.test(sessionAfter), `session id after reconnect: ${sessionAfter}`);

  log("what was missed arrives once, on both pages");
  for (const page of [alice, bob]) {
    const seq = await seqOf(page, "lobby", "Back online after the restart."); // carol's, while both were away
    check(seq === missedSeq, `carol's message shows as #${seq}, stored as #${missedSeq}`);
    await seqOf(page, "lobby", "Sent while the server was down.");
  }
  checkResume(aliceFrames, "alice", "lobby", missedSeq);
  checkResume(bobFrames, "bob", "lobby", missedSeq);
  // Live traffic still flows after the resume, on a room that was re-joined with `since`.
  const carolSeq = await seqOf(bob, "lobby", "Back online after the restart.");
  await messageAction(bob, "lobby", carolSeq, '.quick-react[data-emoji="❤️"]');
  await waitText(alice, `${messages("lobby")}[data-seq="${carolSeq}"] .reaction`, /^❤️ 1$/, "a reaction after the restart");
  await waitVisible(alice, `${room("lobby")} .presence-list li[data-user="bob"]`, "presence after the restart");

  log("every seq exactly once, in order, the same on both pages");
  for (const name of ["lobby", "random", "dm:alice:bob"]) {
    const a = await shownSeqs(alice, name, "alice");
    const b = await shownSeqs(bob, name, "bob");
    check(a.join(",") === b.join(","), `pages disagree on ${name}: alice ${a.join(",")} bob ${b.join(",")}`);
    control(`ROOM ${name} ${a.join(" ")}`);
  }
  for (const text of ["Morning! Is the staging deploy done yet?", "Yes, it finished ten minutes ago.", "Back online after the restart.", "Sent while the server was down."]) {
    for (const [page, who] of [[alice, "alice"], [bob, "bob"]]) {
      check((await messageByText(page, "lobby", text).count()) === 1, `${who}: ${JSON.stringify(text)} not shown exactly once`);
    }
  }

  if (screenshot) {
    log(`screenshot to ${screenshot}`);
    await alice.click('.room-tab[data-room="lobby"]');
    await alice.setViewportSize({ width: 1100, height: 640 });
    // Hover alice's last message so its action bar (reactions, Edit, Delete) is in the picture.
    await alice.locator(messages("lobby")).last().hover();
    // Bob types without sending, last: his page sends active:false when his composer loses focus.
    await bob.locator(`${room("lobby")} .composer-input`).pressSequentially("Checking the logs now");
    await waitText(alice, `${room("lobby")} .typing`, /^Bob is typing…$/, "typing line for the screenshot");
    await alice.screenshot({ path: screenshot });
  }

  log("narrow width: nothing overflows sideways");
  await alice.setViewportSize({ width: 380, height: 720 });
  const overflow = await alice.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
  check(overflow <= 0, `the page scrolls sideways by ${overflow}px at 380px wide`);
  if (process.env.ROOMCAST_NARROW_SCREENSHOT) await alice.screenshot({ path: process.env.ROOMCAST_NARROW_SCREENSHOT });

  check(consoleErrors.length === 0, `console errors:\n  ${consoleErrors.join("\n  ")}`);
  log(`tolerated ${tolerated} connection-refused line(s) from Chromium while the daemon was down`);
}

async function main() {
  const started = Date.now();
  const userDataDir = mkdtempSync(join(tmpdir(), "roomcast-chromium-"));
  let context;
  const watchdog = setTimeout(() => {
    log(`gave up after ${TOTAL_MS} ms`);
    process.exit(1);
  }, TOTAL_MS);
  try {
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath: CHROMIUM,
      headless: true,
      viewport: { width: 1280, height: 800 },
      args: [
        "--no-sandbox", "--headless", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        // Two pages share one headless window: keep the one not in front running at full speed.
        "--disable-background-timer-throttling", "--disable-renderer-backgrounding",
        "--disable-backgrounding-occluded-windows",
      ],
    });
    context.setDefaultTimeout(WAIT_MS);
    const alice = context.pages()[0] || (await context.newPage());
    const bob = await context.newPage();
    watchConsole(alice, "alice");
    watchConsole(bob, "bob");
    await scenario(alice, bob);
    log(`passed in ${((Date.now() - started) / 1000).toFixed(1)} s`);
    return 0;
  } catch (err) {
    log(err instanceof Failure ? `FAILED: ${err.message}` : `ERROR: ${err.stack || err}`);
    if (context) {
      for (const [i, page] of context.pages().entries()) {
        const file = join(tmpdir(), `roomcast-e2e-failure-${process.pid}-${i}.png`);
        await page.screenshot({ path: file }).then(() => log(`page ${i} at failure: ${file}`), () => {});
      }
    }
    if (consoleErrors.length) log(`console errors:\n  ${consoleErrors.join("\n  ")}`);
    return 1;
  } finally {
    clearTimeout(watchdog);
    await context?.close().catch(() => {});
    rmSync(userDataDir, { recursive: true, force: true });
    input.close();
  }
}

process.exitCode = await main();
