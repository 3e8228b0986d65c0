// Drives Debian's Chromium (headless, through playwright-core) over the dashboard that
// tests/tests/dashboard_browser.rs started with real data, and checks what a person would see and do.
// The Rust test passes everything it set up in environment variables and asserts that this exits 0.
//
//   PHASE=main        login, overview counts, a retried job's attempts and trace links, replaying a dead letter
//                     from the UI, a read-only server, an XSS probe, a phone-sized screen, keyboard focus, and
//                     the docs' screenshots (into SCREENSHOT_DIR)
//   PHASE=redis-down  Redis was killed: the overview says so in its banner
//
// Each check prints `ok - <what>`; the first that fails prints `not ok - <what>` with the reason, saves a
// screenshot of the page to FAILURE_DIR (when set) and exits 1. A watchdog ends the run (exit 2) after
// DEADLINE_MS (default 120 s) so that a hung browser never hangs the test.

import assert from "node:assert/strict";
import { chromium } from "playwright-core";

const need = (name) => {
  const value = process.env[name];
  if (value === undefined || value === "") throw new Error(`environment variable ${name} is not set`);
  return value;
};
const PHASE = need("PHASE");
const BASE = need("BASE_URL"); // http://localhost:<port>: Chromium keeps a Secure cookie on plain http only there
const TOKEN = need("TOKEN");
const QUEUE = need("QUEUE");
const WAIT = 10_000; // longest wait for one thing to show
// The buttons that change something (the pager's "next-page" only pages).
const ACTIONS = ["replay-selected", "purge-selected", "replay-all", "purge-all", "pause", "resume", "cancel"]
  .map((action) => `button[data-action=${action}]`)
  .join(", ");

let browser = null;
let current = null; // the page a failing check screenshots
let passed = 0;
const pageErrors = [];

const watchdog = setTimeout(async () => {
  console.log(`not ok - the run took longer than ${process.env.DEADLINE_MS || 120000} ms`);
  await browser?.close().catch(() => {});
  process.exit(2);
}, Number(process.env.DEADLINE_MS || 120_000));

async function check(what, body) {
  try {
    await body();
  } catch (e) {
    console.log(`not ok - ${what}\n  ${String(e.stack || e).replaceAll("\n", "\n  ")}`);
    if (pageErrors.length) console.log(`  script errors and CSP refusals so far: ${JSON.stringify(pageErrors)}`);
    if (current && process.env.FAILURE_DIR) {
      const path = `${process.env.FAILURE_DIR}/failed-${passed + 1}.png`;
      await current.screenshot({ path, fullPage: true }).then(() => console.log(`  screenshot: ${path}`), () => {});
      const html = await current.evaluate(() => document.documentElement.outerHTML).catch(() => "(no page)");
      console.log(`  page HTML: ${html.slice(0, 4000)}`);
    }
    await browser?.close().catch(() => {});
    process.exit(1);
  }
  passed += 1;
  console.log(`ok - ${what}`);
}

// A page that records script errors and CSP refusals (a rendered XSS would be refused by the CSP, and say so
// on the console) and accepts every confirm() after noting its text.
async function newPage(context) {
  const page = await context.newPage();
  page.dialogs = [];
  page.on("pageerror", (e) => pageErrors.push(`page error: ${e.message}`));
  page.on("console", (m) => {
    if (m.type() === "error" && /Refused to|Content Security Policy/i.test(m.text())) pageErrors.push(`console: ${m.text()}`);
  });
  page.on("dialog", async (dialog) => {
    page.dialogs.push(`${dialog.type()}: ${dialog.message()}`);
    await dialog.accept();
  });
  current = page;
  return page;
}

async function text(locator) {
  return (await locator.textContent({ timeout: WAIT }))?.trim();
}

// Waits until `fn(arg)` is true in the page; the error names `what` and what the page showed.
async function until(page, what, fn, arg) {
  try {
    await page.waitForFunction(fn, arg, { timeout: WAIT, polling: 50 });
  } catch (e) {
    const shown = await page.evaluate(() => document.getElementById("main")?.innerText.slice(0, 600)).catch(() => "");
    const banner = await page.evaluate(() => document.getElementById("banner")?.innerText).catch(() => "");
    throw new Error(`timed out waiting for ${what}; banner: ${JSON.stringify(banner)}; main shows: ${JSON.stringify(shown)}`);
  }
}

async function login(page, base, token) {
  await page.goto(`${base}/ui/`);
  await page.locator("form[data-view=login]").waitFor({ timeout: WAIT });
  await page.fill("#token", token);
  await page.click("form[data-view=login] button[type=submit]");
}

// Goes to a route of the single-page app (a hash change, as a click on a link does).
async function go(page, hash) {
  await page.evaluate((h) => { location.hash = h; }, hash);
}

function fmt(n) {
  return n === null || n === undefined ? "—" : Number(n).toLocaleString("en-US");
}

// Text the page shows that no view meant to: "null", "undefined" or "NaN" as a text node of its own, or
// "[object …]" anywhere (an element or array turned into text).
async function noStrayText(page, what) {
  const stray = await page.evaluate(() => {
    const found = [];
    const walker = document.createTreeWalker(document.getElementById("main"), NodeFilter.SHOW_TEXT);
    while (walker.nextNode()) {
      const t = walker.currentNode.data.trim();
      if (/^(null|undefined|NaN)$|\[object \w+\]/.test(t)) found.push(`${t.slice(0, 80)} in <${walker.currentNode.parentNode.tagName.toLowerCase()}>`);
    }
    return found;
  });
  assert.deepEqual(stray, [], `${what} shows stray text`);
}

// The page fits a screen `width` CSS pixels wide: nothing scrolls sideways (a phone browser would rather zoom out,
// so the layout width must stay the screen's). On failure, says what reaches past the edge.
async function noHorizontalOverflow(page, what, width) {
  const sizes = await page.evaluate(() => {
    const edge = document.documentElement.clientWidth + 1;
    const name = (e) => `<${e.tagName.toLowerCase()}${e.className ? ` class="${e.className.baseVal ?? e.className}"` : ""}>`;
    const past = [...document.querySelectorAll("body *")]
      .filter((e) => e.getBoundingClientRect().right > edge && !(e.parentElement?.getBoundingClientRect().right > edge))
      .map((e) => `${name(e)} ${Math.round(e.getBoundingClientRect().width)} px`);
    const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
    while (walker.nextNode()) {
      const range = document.createRange();
      range.selectNodeContents(walker.currentNode);
      if (range.getBoundingClientRect().right > edge) past.push(`text ${JSON.stringify(walker.currentNode.data.slice(0, 60))} in ${name(walker.currentNode.parentElement)}`);
    }
    return { scrollWidth: document.documentElement.scrollWidth, innerWidth: window.innerWidth, past: past.slice(0, 8) };
  });
  assert.ok(
    sizes.scrollWidth <= sizes.innerWidth + 1 && sizes.innerWidth <= width + 1,
    `${what} does not fit ${width} px: ${JSON.stringify(sizes)}`,
  );
}

browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  // playwright-core gives every launch a fresh user data dir of its own.
  args: ["--no-sandbox", "--disable-gpu", "--no-first-run"],
});

if (PHASE === "main") {
  const expected = JSON.parse(need("EXPECTED")); // {queue: {length, lag, pending, delayed, dead, consumers}}
  const retried = { id: need("RETRIED_ID"), trace: need("RETRIED_TRACE") };
  const dead = { entry: need("DEAD_ENTRY"), job: need("DEAD_JOB_ID") };
  const xss = { id: need("XSS_ID"), queue: need("XSS_QUEUE") };
  const delayedId = need("DELAYED_ID");
  const shots = need("SCREENSHOT_DIR");
  const roBase = need("RO_BASE_URL");

  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await newPage(context);

  await check("(1) without a session the UI shows the login form and no data", async () => {
    await page.goto(`${BASE}/ui/`);
    await page.locator("form[data-view=login]").waitFor({ timeout: WAIT });
    assert.equal(await page.locator("table[data-view=overview]").count(), 0);
    assert.equal(await page.evaluate(() => document.activeElement?.id), "token", "the token field has the focus");
  });

  await check("(1) a wrong token is refused with a message", async () => {
    await page.fill("#token", "not-the-token");
    await page.click("form[data-view=login] button[type=submit]");
    await until(page, "the 'Wrong token.' message", () =>
      document.querySelector("form[data-view=login] [role=alert]")?.textContent === "Wrong token.");
    assert.equal(await page.locator("table[data-view=overview]").count(), 0);
  });

  await check("(1) logging in with the token shows the overview; the session cookie is HttpOnly, Secure, SameSite=Strict", async () => {
    await page.fill("#token", TOKEN);
    await page.click("form[data-view=login] button[type=submit]");
    await page.locator(`table[data-view=overview] tr[data-queue="${QUEUE}"]`).waitFor({ timeout: WAIT });
    const cookies = await context.cookies(BASE);
    const session = cookies.find((c) => c.name === "jobstream_session");
    assert.ok(session, `Chromium kept no session cookie for ${BASE}: ${JSON.stringify(cookies)}`);
    assert.equal(session.httpOnly, true);
    assert.equal(session.secure, true);
    assert.equal(session.sameSite, "Strict");
    assert.match(session.value, /^[0-9a-f]{64}$/);
    assert.ok(!(await page.evaluate(() => document.cookie)).includes("jobstream_session"), "scripts cannot read it");
    assert.equal(await page.locator("#logout").isVisible(), true, "the log-out button shows");
  });

  await check("(2) the overview lists every queue with the counts Redis has", async () => {
    for (const [queue, counts] of Object.entries(expected)) {
      const row = page.locator(`table[data-view=overview] tr[data-queue="${queue}"]`);
      await row.waitFor({ timeout: WAIT });
      for (const [field, value] of Object.entries(counts)) {
        assert.equal(await text(row.locator(`td[data-field=${field}]`)), fmt(value), `${queue} ${field}`);
      }
      const href = await row.locator("a").first().getAttribute("href");
      assert.equal(href, `#/queue/${encodeURIComponent(queue)}`);
    }
    assert.equal(await page.locator("table[data-view=overview] tbody tr").count(), Object.keys(expected).length);
    assert.equal(await page.locator("#banner").isVisible(), false, "no error banner");
    await noStrayText(page, "the overview");
  });

  await check("screenshot of the overview at 1280×800", async () => {
    await page.screenshot({ path: `${shots}/dashboard-overview.png` });
  });

  await check("(8) keyboard: Tab reaches the search box and a queue link; Enter opens them", async () => {
    const link = `a[href=#/queue/${encodeURIComponent(QUEUE)}]`;
    const focused = () => page.evaluate(() => {
      const a = document.activeElement;
      if (!a) return "none";
      const href = a.getAttribute("href");
      return `${a.tagName.toLowerCase()}${a.id ? `#${a.id}` : ""}${href ? `[href=${href}]` : ""}`;
    });
    await page.locator("header .brand").focus(); // the start of the page
    const seen = [];
    while (seen.length < 15 && seen.at(-1) !== link) {
      await page.keyboard.press("Tab");
      seen.push(await focused());
    }
    assert.equal(seen[0], "input#search-id", `the first Tab lands in the search box: ${seen.join(", ")}`);
    assert.equal(seen.at(-1), link, `Tab reaches ${link}: ${seen.join(", ")}`);
    await page.keyboard.press("Enter");
    await page.locator("button[data-tab=dead]").waitFor({ timeout: WAIT });
    await page.locator("header .brand").focus();
    await page.keyboard.press("Tab");
    assert.equal(await focused(), "input#search-id");
    await page.keyboard.type(retried.id);
    await page.keyboard.press("Enter");
    await until(page, "the searched job's page", (id) => document.querySelector("h1 .mono")?.textContent === id, retried.id);
  });

  await check("(3) the retried job's page shows attempt 1 failed, attempt 2 done, and links to its trace", async () => {
    await go(page, `#/job/${retried.id}?queue=${QUEUE}`);
    await until(page, "attempt 2", () => document.querySelector("table[data-view=attempts] tr[data-attempt='2']"));
    assert.equal(await text(page.locator("h1 [data-field=state]")), "done");
    const outcome = (n) => text(page.locator(`table[data-view=attempts] tr[data-attempt='${n}'] td:nth-child(2)`));
    assert.equal(await outcome(1), "failed");
    assert.equal(await outcome(2), "done");
    assert.equal(await page.locator("table[data-view=attempts] tbody tr").count(), 2);
    const error = await text(page.locator("table[data-view=attempts] tr[data-attempt='1'] td:nth-child(6)"));
    assert.match(error, /simulated_failure/);
    const links = page.locator(`a[data-trace-link="${retried.trace}"]`);
    const hrefs = await links.evaluateAll((as) => as.map((a) => [a.getAttribute("href"), a.rel, a.closest("tr")?.dataset.attempt ?? "job"]));
    const want = `http://trace.example/trace/${retried.trace}`;
    assert.ok(hrefs.length >= 3, `the job's trace and both attempts link to trace ${retried.trace}: ${JSON.stringify(hrefs)}`);
    for (const [href, rel] of hrefs) {
      assert.equal(href, want);
      assert.match(rel, /noopener/);
    }
    assert.deepEqual(hrefs.map(([, , where]) => where).sort(), ["1", "2", "job"]);
    const facts = await page.locator("dl[data-view=job] > *").evaluateAll((nodes) => nodes.map((n) => `${n.tagName}:${n.textContent}`));
    assert.deepEqual(facts.slice(0, 4), ["DT:Queue", `DD:${QUEUE}`, "DT:Kind", "DD:demo"], `the job's facts: ${JSON.stringify(facts)}`);
    const result = JSON.parse(await text(page.locator("pre[data-field=result]")));
    assert.equal(result.attempt, 2, "the result says it was made by attempt 2");
    const payload = await text(page.locator("pre[data-field=payload]"));
    assert.deepEqual(JSON.parse(payload), { fail_until_attempt: 1 });
    assert.equal(await page.locator("button[data-action=cancel]").count(), 0, "a finished job offers no cancel");
    await noStrayText(page, "the job page");
  });

  await check("screenshot of the retried job's page at 1280×800 (opened by its address, as a link does)", async () => {
    const fresh = await newPage(context);
    await fresh.goto(`${BASE}/ui/#/job/${retried.id}?queue=${QUEUE}`);
    await fresh.locator("table[data-view=attempts] tr[data-attempt='2']").waitFor({ timeout: WAIT });
    await fresh.screenshot({ path: `${shots}/dashboard-job.png` });
    await fresh.close();
    current = page;
  });

  await check("a delayed job's page offers Cancel (not clicked)", async () => {
    await go(page, `#/job/${delayedId}?queue=${QUEUE}`);
    await until(page, "the delayed job's state", () => document.querySelector("h1 [data-field=state]")?.textContent === "delayed");
    assert.equal(await page.locator("button[data-action=cancel]").count(), 1);
  });

  await check("(4) the dead tab lists the dead letter; Replay selected (confirmed) takes it off the dead list", async () => {
    await go(page, `#/queue/${QUEUE}`);
    await page.locator("table[data-view=jobs-waiting], [data-view=jobs-waiting]").waitFor({ timeout: WAIT });
    await noStrayText(page, "the queue page's waiting tab");
    await page.click("button[data-tab=dead]");
    const row = page.locator(`tr[data-dead-id="${dead.entry}"]`);
    await row.waitFor({ timeout: WAIT });
    assert.equal(await row.getAttribute("data-job"), dead.job);
    assert.equal(await page.locator("tr[data-dead-id]").count(), 1);
    await noStrayText(page, "the queue page's dead tab");
    for (const action of ["replay-selected", "purge-selected", "replay-all", "purge-all", "pause"]) {
      assert.equal(await page.locator(`button[data-action=${action}]`).count(), 1, `button ${action}`);
    }
    await row.locator("input[type=checkbox]").check();
    page.dialogs.length = 0;
    await page.click("button[data-action=replay-selected]");
    await row.waitFor({ state: "detached", timeout: WAIT });
    assert.deepEqual(page.dialogs, ["confirm: Replay 1 dead letter(s)?"]);
    assert.equal(await page.locator("#banner").isVisible(), false, "no error banner after the replay");
  });

  await check("(5) a read-only server hides every action, and refuses one fetched from its page with 403", async () => {
    const ro = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    const roPage = await newPage(ro);
    await login(roPage, roBase, TOKEN);
    await roPage.locator(`table[data-view=overview] tr[data-queue="${QUEUE}"]`).waitFor({ timeout: WAIT });
    // The replayed job fails its two attempts again and comes back as a new dead letter: wait for that through
    // the API (reads are allowed), so that the dead tab has a row to show without its selection box.
    const deadline = Date.now() + WAIT;
    for (;;) {
      const job = await roPage.evaluate(async ([id, queue]) => (await fetch(`/v1/jobs/${id}?queue=${queue}`)).json(), [dead.job, QUEUE]);
      if (job.state === "dead" && job.dead_id && job.dead_id !== dead.entry) break;
      assert.ok(Date.now() < deadline, `the replayed job is dead again: ${JSON.stringify(job)}`);
      await roPage.waitForTimeout(100);
    }
    await go(roPage, `#/queue/${QUEUE}`);
    await roPage.locator("button[data-tab=dead]").click();
    await until(roPage, "a dead letter on the read-only dead tab", () => document.querySelector("tr[data-dead-id]"));
    assert.equal(await roPage.locator(ACTIONS).count(), 0, "no action button");
    assert.equal(await roPage.locator("input[type=checkbox]").count(), 0, "no selection box");
    await noStrayText(roPage, "the read-only dead tab");
    await go(roPage, `#/job/${delayedId}?queue=${QUEUE}`);
    await until(roPage, "the delayed job's page", () => document.querySelector("h1 [data-field=state]")?.textContent === "delayed");
    assert.equal(await roPage.locator(ACTIONS).count(), 0, "no cancel on a delayed job");
    const [status, body] = await roPage.evaluate(async (queue) => {
      const r = await fetch(`/v1/queues/${encodeURIComponent(queue)}/dead/replay`, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ all: true }),
      });
      return [r.status, await r.text()];
    }, QUEUE);
    assert.equal(status, 403, body);
    assert.match(body, /read-only/);
    const [cancelStatus] = await roPage.evaluate(async (id) => {
      const r = await fetch(`/v1/jobs/${id}`, { method: "DELETE" });
      return [r.status];
    }, delayedId);
    assert.equal(cancelStatus, 403);
    await ro.close();
    current = page;
  });

  await check("(6) an XSS payload is shown as text on the job page: no element made, no script run", async () => {
    await go(page, `#/job/${xss.id}?queue=${xss.queue}`);
    const pre = page.locator("pre[data-field=payload]");
    await pre.waitFor({ timeout: WAIT });
    const shown = await pre.textContent();
    assert.ok(shown.includes("<script>window.__xss=1</script>"), shown);
    assert.ok(shown.includes('<img src=x onerror=\\"window.__xss=1\\">'), shown);
    assert.equal(await pre.locator("img, script").count(), 0);
    assert.equal(await page.locator("#main img, #main script, #main iframe").count(), 0);
    assert.equal(await page.evaluate(() => typeof window.__xss), "undefined");
  });

  await check("(6) the same payload is text in the waiting list too", async () => {
    await go(page, `#/queue/${xss.queue}`);
    const row = page.locator(`tr[data-job="${xss.id}"]`);
    await row.waitFor({ timeout: WAIT });
    assert.ok((await row.textContent()).includes("<script>window.__xss=1</script>"));
    assert.equal(await row.locator("img, script").count(), 0);
    assert.equal(await page.evaluate(() => typeof window.__xss), "undefined");
  });

  await check("(7) on a phone (390×844) the overview fits the width and shows the counts", async () => {
    const phone = await browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true, deviceScaleFactor: 2 });
    const phonePage = await newPage(phone);
    await login(phonePage, BASE, TOKEN);
    const row = phonePage.locator(`table[data-view=overview] tr[data-queue="${QUEUE}"]`);
    await row.waitFor({ timeout: WAIT });
    await noHorizontalOverflow(phonePage, "the overview", 390);
    for (const field of ["length", "lag", "pending", "delayed", "dead"]) {
      const box = await row.locator(`td[data-field=${field}]`).boundingBox();
      assert.ok(box && box.x >= 0 && box.x + box.width <= 390 + 1, `${field} is on screen: ${JSON.stringify(box)}`);
    }
    await go(phonePage, `#/queue/${QUEUE}`);
    await phonePage.locator("button[data-tab=dead]").waitFor({ timeout: WAIT });
    await noHorizontalOverflow(phonePage, "the queue page", 390);
    await go(phonePage, `#/job/${retried.id}?queue=${QUEUE}`);
    await phonePage.locator("table[data-view=attempts]").waitFor({ timeout: WAIT });
    await noHorizontalOverflow(phonePage, "the job page", 390);
    await phone.close();
    current = page;
  });

  await check("no script error and no CSP refusal on any page", async () => {
    assert.deepEqual(pageErrors, []);
  });
} else if (PHASE === "redis-down") {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await newPage(context);
  await check("(9) with Redis down the login still works and the overview says Redis is unavailable", async () => {
    await login(page, BASE, TOKEN);
    await until(page, "the error banner", () => !document.getElementById("banner").hidden);
    const banner = await text(page.locator("#banner"));
    assert.match(banner, /Redis is unavailable/, banner);
    assert.equal(banner.match(/Redis is unavailable/g).length, 1, `said once: ${banner}`);
    assert.equal(await page.locator("form[data-view=login]").count(), 0, "not sent back to the login form");
  });
} else {
  throw new Error(`unknown PHASE ${PHASE}`);
}

await browser.close();
clearTimeout(watchdog);
console.log(`dashboard.mjs ${PHASE}: all ${passed} checks passed`);
