// The service's page at a phone's and a desktop's width in headless Chromium (Debian's): one
// photo removed with an opaque background colour at each. Usage:
//   node page_layout.mjs <page url> <photo> <artifacts dir>
// Prints one JSON object per width: the page's scroll width, the settings' right edge, the
// result's size, its board's and its photo's aspect ratios. Screenshots go to the artifacts.
import { join } from "node:path";
import { chromium } from "playwright-core";

const [url, photo, artifacts] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"],
});
const sizes = { phone: { width: 390, height: 844 }, desktop: { width: 1280, height: 900 } };
const result = {};
try {
  for (const [name, viewport] of Object.entries(sizes)) {
    const page = await browser.newPage({ viewport });
    await page.goto(url);
    await page.waitForFunction(() => document.getElementById("status").textContent === "connected");
    await page.check("#useColour");
    await page.setInputFiles("#files", photo);
    await page.waitForSelector("figure[data-state=done]", { timeout: 60000 });
    result[name] = await page.evaluate(() => {
      const figure = document.querySelector("figure[data-state=done]");
      const board = figure.querySelector(".board").getBoundingClientRect();
      const original = figure.querySelector(".original");
      return {
        viewport: window.innerWidth,
        scrollWidth: document.documentElement.scrollWidth,
        settingsRight: document.querySelector("fieldset").getBoundingClientRect().right,
        boardWidth: board.width,
        boardRatio: board.width / board.height,
        photoRatio: original.naturalWidth / original.naturalHeight,
      };
    });
    await page.screenshot({ path: join(artifacts, `page-${name}.png`), fullPage: true });
    await page.close();
  }
  console.log(JSON.stringify(result));
} finally {
  await browser.close();
}
