// Logs an owner into the dashboard with headless Chromium, reads what the page shows, saves
// a desktop and a phone-sized screenshot, and prints one JSON object on stdout.
//
//   node owner.mjs URL NAME PASSWORD OUT_DIR [FOREIGN_RIG]
//
// FOREIGN_RIG: a rig of another owner; the page's own session asks for its receipts and
// the answer's status is reported. CHROMIUM names the browser (default /usr/bin/chromium).
import { chromium } from "playwright-core";

const [url, name, password, out, foreign] = process.argv.slice(2);
if (!url || !name || !password || !out) {
  console.error("usage: node owner.mjs URL NAME PASSWORD OUT_DIR [FOREIGN_RIG]");
  process.exit(2);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-dev-shm-usage"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const failures = [];
  page.on("pageerror", e => failures.push(String(e)));
  // A refused request is logged by the browser itself ("Failed to load resource"): the
  // login page's first probe of /api/me is one; only the page's own errors count.
  page.on("console", m => {
    if (m.type() === "error" && !m.text().startsWith("Failed to load resource")) failures.push(m.text());
  });
  const started = Date.now();
  await page.goto(url);
  await page.waitForSelector("#login:not([hidden])");
  await page.fill("#name", name);
  await page.fill("#password", password);
  await page.click("#login button[type=submit]");
  await page.waitForFunction(() => document.body.dataset.loaded, null, { timeout: 60000 });
  const loadedMs = Date.now() - started;
  const paintMs = await page.evaluate(() =>
    performance.getEntriesByName("first-contentful-paint")[0]?.startTime ?? null);
  const read = () => page.evaluate(() => {
    const rows = sel => [...document.querySelectorAll(sel)].map(tr => [...tr.cells].map(c => c.textContent));
    const id = i => document.getElementById(i)?.textContent ?? null;
    return {
      who: id("who"),
      loaded: document.body.dataset.loaded,
      totals: {
        credited: id("total-credited"),
        pending: id("total-pending"),
        payable: id("total-payable"),
        paid: id("total-paid"),
        rejected: id("total-rejected"),
      },
      bars: document.querySelectorAll("#chart rect").length,
      rigs: rows("#rigs tbody tr"),
      cards: rows("#cards tbody tr"),
      disputes: rows("#disputes tbody tr"),
      scripts: document.scripts.length,
    };
  });
  const first = await read();
  await page.screenshot({ path: `${out}/${name}-desktop.png`, fullPage: true });
  await page.setViewportSize({ width: 390, height: 844 });
  const phoneOverflow = await page.evaluate(() => document.documentElement.scrollWidth > window.innerWidth + 1);
  await page.screenshot({ path: `${out}/${name}-phone.png`, fullPage: true });
  // The page refreshes by itself: wait for the next load.
  await page.waitForFunction(f => document.body.dataset.loaded !== f, first.loaded, { timeout: 60000 });
  const foreignStatus = foreign
    ? await page.evaluate(async rig => (await fetch(`/api/rigs/${encodeURIComponent(rig)}/receipts`)).status, foreign)
    : null;
  console.log(JSON.stringify({ ...first, loadedMs, paintMs, phoneOverflow, refreshed: true, foreignStatus, failures }));
} finally {
  await browser.close();
}
