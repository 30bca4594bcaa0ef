// The console's browser benchmark (a measurement, not a test): 5 000 ongoing conversations in
// one table, first paint; 100 inbound events a second through the door, how soon each row
// reflects its event after the webhook was answered (p50, p95, p99); the page's JS heap over
// the run. `.ci/bench` and `.ci/run` run a short form; the figures in docs/benchmarks.md come
// from the full one:
//   cd tests/console && npm ci && SWITCHBOARD_PROFILE=release node bench.mjs --minutes 10
import { Daemon, browser, developmentSignIn } from "./harness.mjs";

const args = process.argv.slice(2);
const option = (name, fallback) => {
  const at = args.indexOf(`--${name}`);
  return at >= 0 ? Number(args[at + 1]) : fallback;
};
const CONVERSATIONS = option("conversations", 5000);
const MINUTES = option("minutes", 0.5);
const RATE = option("rate", 100);

function percentile(sorted, p) {
  if (!sorted.length) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

async function inParallel(count, width, task) {
  let next = 0;
  await Promise.all(
    Array.from({ length: width }, async () => {
      while (next < count) {
        const index = next++;
        await task(index);
      }
    }),
  );
}

const daemon = await Daemon.start({ accessTokenSeconds: 3600, monitorLease: "2m" });
const chromium = await browser();
try {
  const started = Date.now();
  await inParallel(CONVERSATIONS, 32, (i) => daemon.customerWrites(10_000 + i, `Bench ${i}`, "Where is my parcel?"));
  console.log(`created ${CONVERSATIONS} conversations in ${((Date.now() - started) / 1000).toFixed(1)} s`);

  const token = daemon.token("sup-sam", "supervisor", "support", "4h");
  const context = await chromium.newContext({ viewport: { width: 1280, height: 720 } });
  const page = await context.newPage();
  await developmentSignIn(page, daemon, token);
  // First paint with the session in place: navigation to the table's first rows drawn with
  // every conversation loaded.
  const paints = [];
  for (let run = 0; run < 3; run += 1) {
    const begin = Date.now();
    await page.reload();
    await page.waitForFunction((n) => document.getElementById("count")?.textContent.startsWith(`${n} of`), CONVERSATIONS, { timeout: 60_000, polling: 10 });
    await page.waitForSelector(".conversations .body .row");
    paints.push(Date.now() - begin);
  }
  await page.waitForSelector("body[data-stream='live']");
  console.log(`first paint with ${CONVERSATIONS} rows: ${paints.map((ms) => `${ms} ms`).join(", ")}`);

  const sam = await daemon.api("GET", "/v1/conversations?limit=1000", token);
  const ids = new Map();
  let page_ = sam.body;
  for (;;) {
    for (const row of page_.conversations) ids.set(row.customer.name, row.id);
    if (!page_.next_cursor) break;
    page_ = (await daemon.api("GET", `/v1/conversations?limit=1000&cursor=${page_.next_cursor}`, token)).body;
  }

  const cdp = await context.newCDPSession(page);
  await cdp.send("Performance.enable");
  const heap = async () => {
    await cdp.send("HeapProfiler.collectGarbage");
    const { metrics } = await cdp.send("Performance.getMetrics");
    return metrics.find((m) => m.name === "JSHeapUsedSize").value / 1048576;
  };
  // The page keeps a bounded log of paints: take it every 10 s, so that none is lost.
  const painted = [];
  const drain = async () => painted.push(...(await page.evaluate(() => window.switchboardConsole.painted.splice(0))));
  await drain();
  const heaps = [await heap()];
  const answered = [];
  const end = Date.now() + MINUTES * 60_000;
  let sent = 0;
  let nextHeap = Date.now() + 10_000;
  while (Date.now() < end) {
    const second = Date.now();
    await inParallel(RATE, 8, async () => {
      const i = Math.floor(Math.random() * CONVERSATIONS);
      const sentAt = Date.now();
      const at = await daemon.customerWrites(10_000 + i, `Bench ${i}`, `update ${sent++}`);
      answered.push([ids.get(`Bench ${i}`), sentAt, at]);
    });
    const rest = 1000 - (Date.now() - second);
    if (rest > 0) await new Promise((r) => setTimeout(r, rest));
    if (Date.now() >= nextHeap) {
      await drain();
      heaps.push(await heap());
      nextHeap += 10_000;
    }
  }
  await new Promise((r) => setTimeout(r, 2000));
  await drain();
  heaps.push(await heap());
  const byId = new Map();
  for (const [id, at] of painted) {
    if (!byId.has(id)) byId.set(id, []);
    byId.get(id).push(at);
  }
  const latencies = [];
  let missing = 0;
  for (const [id, sentAt, at] of answered) {
    // The first paint of that row after the webhook was sent (the stream may deliver the
    // event before the door's answer reaches this process).
    const seen = (byId.get(id) || []).find((time) => time >= sentAt);
    if (seen === undefined) missing += 1;
    else latencies.push(Math.max(0, seen - at));
  }
  latencies.sort((a, b) => a - b);
  console.log(
    `events: ${answered.length} at ${RATE}/s for ${MINUTES} min; row reflects its event after the webhook's answer: p50 ${percentile(latencies, 50)} ms, p95 ${percentile(latencies, 95)} ms, p99 ${percentile(latencies, 99)} ms; not seen: ${missing}`,
  );
  console.log(`JS heap (MiB, after GC, every 10 s): ${heaps.map((h) => h.toFixed(1)).join(" ")}`);
  await context.close();
} finally {
  await chromium.close();
  await daemon.close();
}
