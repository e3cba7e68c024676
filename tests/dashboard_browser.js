// dashboard_browser.js -- drives the dashboard in headless Chromium with
// puppeteer-core; run by tests/cli_dashboard.sh, which starts the server
// and prepares the jobs. Environment: BASE (the server), CHROMIUM (the
// executable), SHOTS (a directory for screenshots), FAILED_ID (a failed
// job), XSS_ID (a job whose data holds markup), XSS_QUEUE (a queue named
// with markup), APPEND (a shell command that appends one event to stream
// "dash:live"), SEND_OK (one that sends a job to queue "ok"), BULK_FIRST (the newest id of queue "bulk", 10,000 waiting
// jobs), TOKEN_BASE and TOKEN (a server with http.token). Prints "ok: ..."
// per check and "all N browser checks passed" at the end; exits 1 on the
// first failure.
"use strict";
const puppeteer = require("puppeteer-core");
const {execSync} = require("child_process");
const path = require("path");

const env = (k) => {
  if (!process.env[k]) throw new Error(k + " is not set");
  return process.env[k];
};
const BASE = env("BASE");
const SHOTS = env("SHOTS");
const WAIT = {timeout: 15000};

let passed = 0;
function check(cond, what) {
  if (!cond) throw new Error(what);
  passed++;
  console.log("ok: " + what);
}

// The text of every element matching selector.
const texts = (page, selector) => page.$$eval(selector, (els) => els.map((e) => e.textContent));

(async () => {
  const browser = await puppeteer.launch({
    executablePath: env("CHROMIUM"),
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"],
  });
  let page;
  try {
    page = await browser.newPage();
    const problems = [];
    page.on("pageerror", (e) => problems.push("page error: " + e.message));
    page.on("console", (m) => { if (m.type() === "error") problems.push("console: " + m.text()); });
    page.on("dialog", async (d) => { problems.push("dialog: " + d.message()); await d.dismiss(); });
    await page.setViewport({width: 390, height: 844, deviceScaleFactor: 1}); // a phone

    // Queues with their counts.
    await page.goto(BASE + "/", {waitUntil: "domcontentloaded"});
    await page.waitForSelector("a.queue-name", WAIT);
    const names = await texts(page, "a.queue-name");
    check(names.includes("ok") && names.includes("boom"), "the queues are listed: " + names.join(", "));
    const okCompleted = await page.$eval('a[href="#/queue/ok/completed"]', (a) => a.textContent);
    check(okCompleted === "3", "queue ok shows 3 completed jobs (got " + okCompleted + ")");
    const boomFailed = await page.$eval('a[href="#/queue/boom/failed"]', (a) => a.textContent);
    check(boomFailed === "1", "queue boom shows 1 failed job (got " + boomFailed + ")");
    check(names.includes(env("XSS_QUEUE")), "a queue named with markup is shown as text");
    check(await page.$("main b") === null, "no <b> element comes from a queue name");
    const wide = await page.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth + 1);
    check(wide, "the page fits a phone's width (tables scroll inside their box)");
    check(await page.$("main svg.spark") !== null, "queues have a throughput sparkline");
    await page.screenshot({path: path.join(SHOTS, "dashboard-queues.png"), fullPage: true});

    // Pause queue boom (so that the retried job stays to be seen).
    const rowButton = (queue) => page.evaluateHandle((q) => [...document.querySelectorAll("main tr")]
      .find((tr) => (tr.querySelector("a.queue-name") || {}).textContent === q).querySelector("button"), queue);
    await (await rowButton("boom")).click();
    await page.waitForFunction(() => [...document.querySelectorAll("main tr")].some((tr) =>
      (tr.querySelector("a.queue-name") || {}).textContent === "boom" && tr.querySelector("button").textContent === "Resume"),
      WAIT);
    check(true, "Pause turns into Resume for queue boom");

    // A queue's jobs by state, then a failed job; retry it.
    await page.click('a[href="#/queue/boom/failed"]');
    await page.waitForFunction(() => location.hash === "#/queue/boom/failed" &&
      document.querySelector('main a[href^="#/job/"]'), WAIT);
    const failedId = env("FAILED_ID");
    await page.click('main a[href="#/job/' + failedId + '"]');
    await page.waitForFunction((id) => (document.querySelector("main h1") || {}).textContent === "Job " + id + " failed",
      WAIT, failedId);
    const message = await page.$eval("pre.error-message", (e) => e.textContent);
    check(message.includes("boom on purpose"), "the job's error is shown: " + message);
    const pres = await texts(page, "main pre");
    check(pres.some((t) => t.includes("stack traceback")), "the job's traceback is shown");
    await page.screenshot({path: path.join(SHOTS, "dashboard-job.png"), fullPage: true});
    const [retry] = await page.$$("main button");
    check(await retry.evaluate((b) => b.textContent === "Retry" && !b.disabled), "Retry is offered for a failed job");
    await retry.click();
    await page.waitForFunction(() => (document.querySelector("main h1 .state") || {}).textContent === "paused", WAIT);
    check(true, "after Retry the job waits again (paused: its queue is paused)");

    // 10,000 waiting jobs page on the server, 50 at a time.
    await page.goto(BASE + "/#/queue/bulk/waiting", {waitUntil: "domcontentloaded"});
    const firstIds = () => page.$$eval('main tbody a[href^="#/job/"]', (as) => as.map((a) => Number(a.textContent)));
    await page.waitForFunction(() => document.querySelectorAll('main tbody a[href^="#/job/"]').length === 50, WAIT);
    let ids = await firstIds();
    const newest = Number(env("BULK_FIRST"));
    check(ids[0] === newest && ids[49] === newest - 49, "the first page shows the newest 50 of 10,000 jobs");
    const tab = await page.$eval('.tabs a.on', (a) => a.textContent);
    check(tab === "waiting 10000", "the state tab counts 10,000 waiting (" + tab + ")");
    await page.click("main a.next");
    await page.waitForFunction((n) => (document.querySelector('main tbody a[href^="#/job/"]') || {}).textContent ===
      String(n), WAIT, newest - 50);
    ids = await firstIds();
    check(ids.length === 50 && ids[49] === newest - 99, "Next page shows the following 50");

    // Markup in job data renders as text.
    await page.goto(BASE + "/#/job/" + env("XSS_ID"), {waitUntil: "domcontentloaded"});
    await page.waitForFunction((id) => ((document.querySelector("main h1") || {}).textContent || "")
      .startsWith("Job " + id + " "), WAIT, env("XSS_ID"));
    const data = (await texts(page, "main pre")).join("\n");
    check(data.includes("<script>window.__pwned = 1</script>"), "job data with <script> is shown as text");
    check(await page.evaluate(() => window.__pwned === undefined), "the markup in job data did not run");
    check(await page.$("main script, main img") === null, "no element comes from job data");

    // A live event arrives on the events page.
    await page.goto(BASE + "/#/events/end/dash:*", {waitUntil: "domcontentloaded"});
    await page.waitForFunction(() => (document.getElementById("stream-status") || {}).textContent === "live", WAIT);
    execSync(env("APPEND"));
    await page.waitForFunction(() => [...document.querySelectorAll(".event-type")]
      .some((e) => e.textContent === "dash.ping"), WAIT);
    const streams = await texts(page, ".event-stream");
    check(streams.includes("dash:live"), "a live event arrived: " + streams.join(", "));
    await page.screenshot({path: path.join(SHOTS, "dashboard-events.png"), fullPage: true});

    // A consumer group with its lag (the event above is one it has not
    // handled).
    await page.goto(BASE + "/#/groups", {waitUntil: "domcontentloaded"});
    await page.waitForFunction(() => [...document.querySelectorAll("main td")].some((td) => td.textContent === "g<i>1</i>"),
      WAIT);
    const lag = await page.$eval("main .lag", (e) => e.textContent);
    check(lag === "1", "group g<i>1</i> is listed as text with lag 1 (got " + lag + ")");
    check(await page.$("main i") === null, "no <i> element comes from a group name");

    // A flow, its runs, a run and its step.
    await page.goto(BASE + "/#/flows", {waitUntil: "domcontentloaded"});
    await page.waitForSelector('main a[href="#/flows/greet"]', WAIT);
    await page.click('main a[href="#/flows/greet"]');
    await page.waitForSelector('main a[href^="#/run/"]', WAIT);
    const runs = await texts(page, 'main a[href^="#/run/"]');
    check(runs.includes("run<i>1</i>"), "the flow's run is listed as text: " + runs.join(", "));
    await page.click('main a[href^="#/run/"]');
    await page.waitForFunction(() => ((document.querySelector("main h1") || {}).textContent || "").startsWith("Run run<i>1</i>"),
      WAIT);
    const status = await page.$eval("main h1 .state", (e) => e.textContent);
    check(status === "completed", "the run page shows its status (" + status + ")");
    const steps = await texts(page, "main td");
    check(steps.includes("hello") && steps.includes("completed"), "the run's step is listed with its state");

    await page.goto(BASE + "/#/schedules", {waitUntil: "domcontentloaded"});
    await page.waitForFunction(() => [...document.querySelectorAll("main td")].some((td) => td.textContent === "nightly"),
      WAIT);
    check(true, "the schedule is listed");
    const next = await page.$$eval("main tr", (rows) => {
      const row = rows.find((r) => [...r.cells].some((c) => c.textContent === "nightly"));
      return row ? row.cells[4].textContent : "";
    });
    check(next !== "", "the schedule's next fire is shown (" + JSON.stringify(next) + ")");
    // The queues page refreshes itself: a job finished now shows up, and
    // the sparkline gets a line.
    await page.goto(BASE + "/#/", {waitUntil: "domcontentloaded"});
    await page.waitForSelector('a[href="#/queue/ok/completed"]', WAIT);
    execSync(env("SEND_OK"));
    await page.waitForFunction(() => (document.querySelector('a[href="#/queue/ok/completed"]') || {}).textContent === "4",
      WAIT);
    check(true, "the queues page shows a job completed after it opened, without a reload");
    await page.waitForSelector("main svg.spark polyline", WAIT);
    check(true, "the sparkline draws after two refreshes");

    check(problems.length === 0, "no page errors, console errors or dialogs: " + problems.join("; "));

    // With http.token: the token is asked once, kept for the tab, sent as
    // a Bearer header.
    await page.goto(env("TOKEN_BASE") + "/", {waitUntil: "domcontentloaded"});
    await page.waitForSelector("#login:not([hidden])", WAIT);
    check(await page.$("a.queue-name") === null, "without the token no queue is shown");
    await page.type("#token", env("TOKEN"));
    await page.click('#login button[type="submit"]');
    await page.waitForSelector("a.queue-name", WAIT);
    check(await page.$eval("#login", (f) => f.hidden), "with the token the queues are shown");
    check(await page.evaluate(() => sessionStorage.getItem("moonq.token")) === env("TOKEN"),
      "the token is kept in sessionStorage");
    await page.reload({waitUntil: "domcontentloaded"});
    await page.waitForSelector("a.queue-name", WAIT);
    check(await page.$eval("#login", (f) => f.hidden), "after a reload the token is not asked again");
    console.log("all " + passed + " browser checks passed");
  } catch (e) {
    if (page) await page.screenshot({path: path.join(SHOTS, "dashboard-failure.png"), fullPage: true}).catch(() => {});
    console.error("FAIL: " + e.message);
    process.exitCode = 1;
  } finally {
    await browser.close();
  }
})();
