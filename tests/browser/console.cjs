// Drives the operator console in headless Chromium (playwright-core, the system's browser):
// reads the route table, looks a key up, purges it, and checks the invalidation is listed.
// Usage: node console.cjs <console url> <token> <screenshot path>
// Prints one JSON line of what it saw; exits non-zero on any failure.
"use strict";
const { chromium } = require("playwright-core");

async function main() {
  const [url, token, screenshot] = process.argv.slice(2);
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
    timeout: 30000,
  });
  try {
    const page = await browser.newPage();
    page.setDefaultTimeout(15000);
    const errors = [];
    page.on("pageerror", (e) => errors.push(String(e)));
    await page.goto(url + "#token=" + encodeURIComponent(token));
    // The token left the address bar; the table filled from the API.
    const row = page.locator('tr[data-route="GET /users/{id}"]');
    await row.waitFor();
    const routeText = await row.innerText();
    const health = await page.locator("#health").innerText();
    const address = page.url();

    await page.fill("#lookup-key", "user:1");
    await page.click("#lookup");
    await page.waitForFunction(() => document.getElementById("lookup-result").textContent.length > 0);
    const lookup = JSON.parse(await page.locator("#lookup-result").innerText());

    await page.selectOption("#purge-kind", "key");
    await page.fill("#purge-target", "user:1");
    await page.click("#purge");
    await page.waitForFunction(() => document.getElementById("purge-result").textContent.includes("purged"));
    const purge = JSON.parse(await page.locator("#purge-result").innerText());
    await page.locator("#invalidations li", { hasText: "key user:1" }).waitFor();
    const invalidations = await page.locator("#invalidations").innerText();

    await page.fill("#lookup-key", "user:1");
    await page.click("#lookup");
    await page.waitForFunction(() => document.getElementById("lookup-result").textContent.includes('"cached": false'));
    const after = JSON.parse(await page.locator("#lookup-result").innerText());

    await page.screenshot({ path: screenshot, fullPage: true });
    console.log(JSON.stringify({ routeText, health, address, lookup, purge, invalidations, after, errors }));
  } finally {
    await browser.close();
  }
}

main().catch((e) => {
  console.error(e && e.stack ? e.stack : String(e));
  process.exit(1);
});
