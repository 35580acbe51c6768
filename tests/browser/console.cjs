// Drives the operator console in headless Chromium (playwright-core, the system's browser).
// Usage: node console.cjs <console url> <token> <screenshot path>
// The app behind it has /users/1 and /users/2 (tag `users`) and /products/1 cached, and
// /users/1 read once more (a hit). Prints one JSON line of what it saw; exits non-zero on any
// failure.
"use strict";
const { chromium } = require("playwright-core");

async function main() {
  const [url, token, screenshot] = process.argv.slice(2);
  const origin = new URL(url).origin;
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
    timeout: 30000,
  });
  try {
    const seen = { errors: [] };

    // An unauthorised visitor: the API answers 401, the page says so and shows nothing.
    const stranger = await browser.newPage();
    stranger.setDefaultTimeout(15000);
    await stranger.goto(url + "#token=wrong");
    await stranger.waitForFunction(() => document.getElementById("error").textContent.includes("refused"));
    seen.strangerError = await stranger.locator("#error").innerText();
    seen.strangerRows = await stranger.locator("#routes tbody tr").count();
    seen.strangerHealth = await stranger.locator("#health").innerText();
    seen.strangerStatus = await stranger.evaluate(async () =>
      (await fetch("api/stats", { headers: { authorization: "Bearer wrong" } })).status);
    await stranger.close();

    const page = await browser.newPage();
    page.setDefaultTimeout(15000);
    page.on("pageerror", (e) => seen.errors.push(String(e)));
    await page.goto(url + "#token=" + encodeURIComponent(token));
    const row = page.locator('tr[data-route="GET /users/{id}"]');
    await row.waitFor();
    seen.address = page.url();
    seen.health = await page.locator("#health").innerText();
    const ratio = async () => (await row.locator("td.ratio").innerText()).trim();
    seen.ratioBefore = await ratio();

    // Three more hits: the table (refreshed every 2 s) shows the ratio rise.
    for (let i = 0; i < 3; i++) {
      const resp = await fetch(origin + "/users/1");
      await resp.text();
    }
    // What the API says now, as the page writes it: the table shows it within a refresh.
    const stats = await (await fetch(url + "api/stats", {
      headers: { authorization: "Bearer " + token },
    })).json();
    const users = stats.routes.find((r) => r.route === "GET /users/{id}");
    const expected = (100 * users.hit_rate).toFixed(1) + "%";
    await page.waitForFunction(
      (want) => {
        const cell = document.querySelector('tr[data-route="GET /users/{id}"] td.ratio');
        return cell && cell.textContent.trim() === want;
      },
      expected,
    );
    seen.ratioAfter = await ratio();

    // A lookup finds the entry.
    await page.fill("#lookup-key", "user:1");
    await page.click("#lookup");
    await page.waitForFunction(() => document.getElementById("lookup-result").textContent.length > 0);
    seen.lookup = JSON.parse(await page.locator("#lookup-result").innerText());

    // Purging the tag `users` removes exactly its entries: checked through the API.
    await page.selectOption("#purge-kind", "tag");
    await page.fill("#purge-target", "users");
    await page.click("#purge");
    await page.waitForFunction(() => document.getElementById("purge-result").textContent.includes("purged"));
    seen.purge = JSON.parse(await page.locator("#purge-result").innerText());
    await page.locator("#invalidations li", { hasText: "tag users" }).waitFor();
    seen.invalidations = await page.locator("#invalidations").innerText();
    const cached = async (key) => {
      const resp = await fetch(url + "api/lookup?key=" + encodeURIComponent(key), {
        headers: { authorization: "Bearer " + token },
      });
      return (await resp.json()).cached;
    };
    seen.afterPurge = {
      "user:1": await cached("user:1"),
      "user:2": await cached("user:2"),
      "product:1": await cached("product:1"),
    };

    await page.screenshot({ path: screenshot, fullPage: true });
    console.log(JSON.stringify(seen));
  } finally {
    await browser.close();
  }
}

main().catch((e) => {
  console.error(e && e.stack ? e.stack : String(e));
  process.exit(1);
});
