// dashboard_browser.js -- drives the dashboard in headless Chromium with
// puppeteer-core; run by tests/cli_dashboard.sh, which starts the server
// and prepares the jobs. Environment: BASE (the server), CHROMIUM (the
// executable), SHOTS (a directory for screenshots), FAILED_ID (a failed
// job), XSS_ID (a job whose data holds markup), XSS_QUEUE (a queue named
// with markup), APPEND (a shell command that appends one event to stream
// "dash:live"). Prints "ok: ..." per check; exits 1 on the first failure.
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

function check(cond, what) {
  if (!cond) throw new Error(what);
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

    // Groups, flows, schedules render.
    for (const [hash, heading] of [["#/groups", "Consumer groups"], ["#/flows", "Flows"], ["#/schedules", "Schedules"]]) {
      await page.goto(BASE + "/" + hash, {waitUntil: "domcontentloaded"});
      await page.waitForFunction((t) => (document.querySelector("main h1") || {}).textContent === t, WAIT, heading);
      console.log("ok: " + hash + " renders");
    }
    const schedules = await texts(page, "main td");
    check(schedules.includes("nightly"), "the schedule is listed");
    check(problems.length === 0, "no page errors, console errors or dialogs: " + problems.join("; "));
  } catch (e) {
    if (page) await page.screenshot({path: path.join(SHOTS, "dashboard-failure.png"), fullPage: true}).catch(() => {});
    console.error("FAIL: " + e.message);
    process.exitCode = 1;
  } finally {
    await browser.close();
  }
})();
