// The supervisor console in a real browser (Debian's chromium), signed in through a real
// OpenID provider and through the development sign-in, against a real daemon fed by
// Chatwoot webhooks through its door. Run by `.ci/run` (after `cargo test` built the daemon):
//   cd tests/console && npm ci && npm test
import { test, before, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import { Daemon, browser, developmentSignIn, providerSignIn, ROOT } from "./harness.mjs";

const AXE = readFileSync(join(ROOT, "tests/console/node_modules/axe-core/axe.min.js"), "utf8");
const SCREENSHOTS = process.env.SWITCHBOARD_SCREENSHOTS === "1" ? join(ROOT, "docs") : null;

let daemon;
let chromium;
let conversation = 100;

before(async () => {
  daemon = await Daemon.start({ accessTokenSeconds: 20, monitorLease: "4s" });
  chromium = await browser();
});

// A failed test leaves no page behind (an open page keeps its user's stream, and so its
// seats, alive for the next test).
const contexts = new Set();
afterEach(async () => {
  for (const context of contexts) await context.close().catch(() => {});
  contexts.clear();
});

after(async () => {
  await chromium?.close();
  await daemon?.close();
});

async function newPage(viewport = { width: 1280, height: 720 }) {
  const context = await chromium.newContext({ viewport });
  contexts.add(context);
  const page = await context.newPage();
  const errors = [];
  // The console's own errors (the OpenID provider's pages are not ours to judge).
  const ours = () => page.url().startsWith(daemon.url);
  page.on("pageerror", (error) => {
    if (ours()) errors.push(error.message);
  });
  page.on("console", (message) => {
    if (message.type() === "error" && ours()) errors.push(message.text());
  });
  page.errors = errors;
  return page;
}

function row(page, text) {
  return page.locator(".conversations .body .row", { hasText: text });
}

async function axe(page, what) {
  // Injected through the debugging protocol: the page's own policy refuses inline scripts.
  await page.evaluate(AXE);
  const result = await page.evaluate(async () => window.axe.run(document, { resultTypes: ["violations"] }));
  const serious = result.violations.filter((v) => v.impact === "serious" || v.impact === "critical");
  assert.deepEqual(
    serious.map((v) => `${v.id}: ${v.help} (${v.nodes.map((n) => n.target.join(" ")).join(", ")})`),
    [],
    `accessibility violations on ${what}`,
  );
}

async function screenshot(page, name) {
  if (!SCREENSHOTS) return;
  mkdirSync(SCREENSHOTS, { recursive: true });
  await page.screenshot({ path: join(SCREENSHOTS, `console-${name}.png`) });
}

test("conversations appear live from webhooks; a script in a message stays text; filter and sort", async () => {
  const page = await newPage();
  await page.goto(`${daemon.url}/console/`);
  await axe(page, "the sign-in page");
  await screenshot(page, "sign-in");
  await developmentSignIn(page, daemon, daemon.token("sup-sam", "supervisor", "support"));

  const hostile = `<img src=x onerror="window.pwned=1"><script>window.pwned=2</script>`;
  await daemon.customerWrites(++conversation, "Grace Hopper", "My order is late");
  await daemon.customerWrites(++conversation, `Mallory ${hostile}`, hostile);
  await daemon.customerWrites(++conversation, "Alan Turing", "Refund please");
  await row(page, "Grace Hopper").waitFor();
  await row(page, "Alan Turing").waitFor();
  const mallory = row(page, "Mallory");
  await mallory.waitFor();
  assert.equal(await page.evaluate(() => window.pwned), undefined, "no script ran");
  assert.ok((await mallory.textContent()).includes("<img src=x"), "the name is shown as text");
  assert.equal(await page.locator(".conversations img, .conversations script").count(), 0);

  // The message itself, in the conversation view.
  await mallory.click();
  await page.locator(".timeline .line", { hasText: "<script>" }).waitFor();
  assert.equal(await page.locator("#detail img, #detail script").count(), 0);
  assert.equal(await page.evaluate(() => window.pwned), undefined);
  await page.getByRole("button", { name: "Close", exact: true }).click();

  // Search and a state filter; kept for this user across a reload.
  await page.getByLabel("Search").fill("turing");
  await row(page, "Grace Hopper").waitFor({ state: "detached" });
  assert.equal(await row(page, "Alan Turing").count(), 1);
  await page.reload();
  await page.waitForSelector("body[data-ready='true']");
  assert.equal(await page.getByLabel("Search").inputValue(), "turing", "filters are remembered");
  await row(page, "Alan Turing").waitFor();
  assert.equal(await row(page, "Grace Hopper").count(), 0);
  await page.getByLabel("Search").fill("");
  await row(page, "Grace Hopper").waitFor();

  // Sort by customer, both ways.
  // Rows are reused as the view scrolls: their order on screen is their aria-rowindex.
  const customers = async () =>
    page.locator(".conversations .body .row").evaluateAll((rows) =>
      rows
        .sort((a, b) => Number(a.getAttribute("aria-rowindex")) - Number(b.getAttribute("aria-rowindex")))
        .map((row) => row.querySelector(".col-customer").textContent),
    );
  const header = page.locator("[role=columnheader].col-customer");
  await page.getByRole("button", { name: "Customer" }).click();
  await header.and(page.locator("[aria-sort=ascending]")).waitFor();
  const ascending = await customers();
  await page.getByRole("button", { name: "Customer" }).click();
  await header.and(page.locator("[aria-sort=descending]")).waitFor();
  const descending = await customers();
  assert.deepEqual([...ascending].sort((a, b) => a.localeCompare(b)), ascending);
  assert.deepEqual([...ascending].reverse(), descending);
  await axe(page, "the conversations table");
  await screenshot(page, "table");
  assert.deepEqual(page.errors, []);
  await page.context().close();
});

test("monitor, whisper, barge and force close from the conversation view", async () => {
  const page = await newPage();
  await developmentSignIn(page, daemon, daemon.token("sup-sam", "supervisor", "support"));
  const id = ++conversation;
  await daemon.customerWrites(id, "Katherine Johnson", "I need help with billing codes");
  await row(page, "Katherine Johnson").click();
  const detail = page.locator("#detail");
  await detail.getByRole("heading", { level: 2 }).waitFor();

  // Barge needs a monitor session first: the button says so, from the rule.
  assert.equal(await detail.getByRole("button", { name: "Barge in" }).isDisabled(), true);

  // Assign to Ana (the picker shows presence and free capacity).
  await detail.getByRole("button", { name: "Assign…" }).click();
  const target = detail.getByLabel("Assign to");
  assert.match(await target.locator("option[value='agent:a-ana']").textContent(), /Ana Souza — available, \d of 3 free/);
  await target.selectOption("agent:a-ana");
  await detail.getByRole("button", { name: "Assign", exact: true }).click();
  await detail.locator(".facts dd", { hasText: "Ana Souza" }).waitFor();

  await detail.getByRole("button", { name: "Monitor" }).click();
  await detail.locator(".facts dd", { hasText: /^monitor/ }).waitFor();
  await detail.getByLabel("Send as").selectOption("whisper");
  await detail.getByLabel("Text").fill("Offer the refund");
  await detail.getByRole("button", { name: "Send" }).click();
  await detail.locator(".timeline .whisper", { hasText: "Offer the refund" }).waitFor();
  await screenshot(page, "conversation");
  await axe(page, "the conversation view");

  await detail.getByRole("button", { name: "Barge in" }).click();
  await detail.locator(".facts dd", { hasText: /^barge/ }).waitFor();
  await detail.getByRole("button", { name: "Force close…" }).click();
  await detail.getByLabel("Reason").fill("abusive language");
  await detail.getByRole("button", { name: "Force close", exact: true }).click();
  // Closed: it leaves the ongoing report.
  await row(page, "Katherine Johnson").waitFor({ state: "detached" });
  const sam = daemon.token("sup-sam", "supervisor", "support");
  const report = await daemon.api("GET", "/v1/conversations?q=katherine", sam);
  assert.equal(report.body.total, 0);
  assert.deepEqual(page.errors, []);
  await page.context().close();
});

/** An admin assigns the conversation of `customer` to `agent` (monitoring needs an agent). */
async function assign(customer, agent) {
  const admin = daemon.token("root", "admin");
  const found = await daemon.api("GET", `/v1/conversations?q=${encodeURIComponent(customer)}`, admin);
  const id = found.body.conversations[0].id;
  const assigned = await daemon.api("POST", `/v1/conversations/${id}/assign`, admin, { agent });
  assert.equal(assigned.status, 200, JSON.stringify(assigned.body));
  return id;
}

test("a second supervisor sees Monitor taken, by whom, until the first one's tab is gone for the lease", async () => {
  const id = ++conversation;
  await daemon.customerWrites(id, "Dorothy Vaughan", "Chat please");
  await assign("Dorothy Vaughan", "a-ben");
  const sam = await newPage();
  await providerSignIn(sam, daemon, "sup-sam");
  await row(sam, "Dorothy Vaughan").click();
  await sam.locator("#detail").getByRole("button", { name: "Monitor" }).click();
  await sam.locator("#detail .facts dd", { hasText: /^monitor/ }).waitFor();

  const sue = await newPage();
  await providerSignIn(sue, daemon, "sup-sue");
  await row(sue, "Dorothy Vaughan").click();
  const monitor = sue.locator("#detail").getByRole("button", { name: "Monitor" });
  await sue.locator("#detail .why", { hasText: "Monitored by sup-sam" }).waitFor();
  assert.equal(await monitor.isDisabled(), true);

  // Sam closes the tab: after the monitor lease the slot is free, and Sue's page says so
  // live (the lease's end arrives on her stream).
  await sam.context().close();
  // The server notices the closed connection at the latest at the next heartbeat (15 s).
  await sue.locator("#detail button[data-action='monitor']:enabled").waitFor({ timeout: 45_000 });
  await sue.locator("#detail .timeline .line", { hasText: "lease-expired" }).waitFor();

  assert.deepEqual(sue.errors, []);
  await sue.context().close();
});

test("a refusal is shown in words, from its rule", async () => {
  const id = ++conversation;
  await daemon.customerWrites(id, "Mary Jackson", "Hello?");
  const mary = await assign("Mary Jackson", "a-ana");
  const page = await newPage();
  // This page hears nothing live, so its buttons can be out of date: the click then meets
  // the rule on the server.
  await page.route("**/v1/stream", (route) => route.abort());
  await page.goto(`${daemon.url}/console/`);
  await page.getByLabel("Development sign-in").fill(daemon.token("sup-sam", "supervisor", "support"));
  await page.getByRole("button", { name: "Sign in with this token" }).click();
  await page.waitForSelector("body[data-ready='true']");
  await row(page, "Mary Jackson").click();
  const detail = page.locator("#detail");
  // A button the rules disable says why, in words.
  await detail.locator("#why-barge", { hasText: "Monitor the conversation first" }).waitFor();
  const admin = daemon.token("root", "admin");
  const taken = await daemon.api("POST", `/v1/conversations/${mary}/monitor`, admin);
  assert.equal(taken.status, 200, JSON.stringify(taken.body));
  await detail.getByRole("button", { name: "Monitor" }).click();
  await page.locator("#status", { hasText: "The monitor limit for this channel is reached" }).waitFor();
  assert.match(await page.locator("#status").textContent(), /held by root/);
  // And the view now shows who holds it.
  await detail.locator(".why", { hasText: "Monitored by root" }).waitFor();
  await page.context().close();
});

test("tokens renew silently and the stream re-authenticates without losing an event", async () => {
  const page = await newPage();
  await providerSignIn(page, daemon, "sup-sam");
  const firstToken = await page.evaluate(() => JSON.parse(sessionStorage.getItem("switchboard.session")).access_token);
  // Access tokens live 20 s: wait past one, writing all the while.
  const names = [];
  for (let i = 0; i < 6; i += 1) {
    const name = `Renewal ${i}`;
    names.push(name);
    await daemon.customerWrites(++conversation, name, "still there?");
    await new Promise((r) => setTimeout(r, 5000));
  }
  for (const name of names) await row(page, name).waitFor();
  const renewed = await page.evaluate(() => JSON.parse(sessionStorage.getItem("switchboard.session")).access_token);
  assert.notEqual(renewed, firstToken, "the token was renewed");
  assert.deepEqual(page.errors, []);
  await page.context().close();
});

test("a billing supervisor sees nothing of support", async () => {
  const page = await newPage();
  await providerSignIn(page, daemon, "sup-bea");
  await daemon.customerWrites(++conversation, "Support Only Customer", "hello support");
  await new Promise((r) => setTimeout(r, 1500));
  assert.equal(await page.locator(".conversations .body .row").count(), 0);
  assert.match(await page.locator("#count").textContent(), /^0 of 0/);
  const queues = await page.locator("#queues-body th").allTextContents();
  assert.ok(queues.every((name) => name.startsWith("Billing")), JSON.stringify(queues));
  // Signing out ends the provider's session too, and comes back to the sign-in.
  await page.getByRole("button", { name: "Sign out" }).click();
  await page.getByRole("button", { name: "Yes, sign me out" }).click();
  await page.getByRole("heading", { name: "Sign in" }).waitFor();
  assert.equal(await page.evaluate(() => sessionStorage.getItem("switchboard.session")), null);
  await page.context().close();
});

test("the daemon restarts under the open page, and the page catches up with nothing missing", async () => {
  const page = await newPage();
  await developmentSignIn(page, daemon, daemon.token("sup-sam", "supervisor", "support"));
  await daemon.customerWrites(++conversation, "Before Restart", "one");
  await row(page, "Before Restart").waitFor();
  await daemon.stop();
  await page.waitForSelector("body[data-stream='reconnecting']");
  await daemon.run();
  await daemon.customerWrites(++conversation, "After Restart", "two");
  await page.waitForSelector("body[data-stream='live']", { timeout: 30_000 });
  await row(page, "After Restart").waitFor();
  assert.equal(await row(page, "Before Restart").count(), 1);
  assert.deepEqual(page.errors.filter((e) => !e.includes("Failed to load resource") && !e.includes("ERR_")), []);
  await page.context().close();
});

test("usable on a narrow screen, with the keyboard", async () => {
  const page = await newPage({ width: 390, height: 844 });
  await developmentSignIn(page, daemon, daemon.token("sup-sam", "supervisor", "support"));
  await daemon.customerWrites(++conversation, "Narrow Screen", "hi");
  const target = row(page, "Narrow Screen");
  await target.waitFor();
  await target.focus();
  await page.keyboard.press("Enter");
  await page.locator("#detail h2").waitFor();
  assert.equal(await page.locator("#detail h2").evaluate((h) => document.activeElement === h), true);
  await screenshot(page, "narrow");
  await axe(page, "the narrow layout");
  await page.context().close();
});
