// Opens the service's /docs in headless Chromium (Debian's) and reports what Swagger UI shows.
// Usage: node docs_page.mjs <url of /docs> <screenshot path>
// Prints one JSON object: the title, the operations listed, every request the page made.
import { chromium } from "playwright-core";

const [url, screenshot] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const requests = [];
  const errors = [];
  page.on("request", (request) => requests.push(request.url()));
  page.on("pageerror", (error) => errors.push(String(error)));
  await page.goto(url);
  await page.waitForSelector(".opblock", { timeout: 30000 });
  const shown = await page.evaluate(() => ({
    title: document.querySelector(".info .title")?.textContent ?? "",
    operations: [...document.querySelectorAll(".opblock-summary-path")].map((e) => e.textContent),
    methods: [...document.querySelectorAll(".opblock-summary-method")].map((e) => e.textContent),
  }));
  await page.screenshot({ path: screenshot, fullPage: false });
  console.log(JSON.stringify({ ...shown, requests, errors }));
} finally {
  await browser.close();
}
