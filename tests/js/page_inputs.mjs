// The page's other ways in and its large view, in headless Chromium (Debian's). Usage:
//   node page_inputs.mjs <page url> <artifacts dir>
// A sample photo by one click, an image URL, a pasted image; then the large view from the
// keyboard: before/after, download, Esc, and its close button. Prints one JSON object.
import { join } from "node:path";
import { chromium } from "playwright-core";

const [url, artifacts] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"],
});
const result = {};
const doneCount = (count) => (page) => page.waitForFunction(
  (n) => document.querySelectorAll("figure[data-state=done]").length === n, count,
  { timeout: 60000 });
const isOpen = (page) => page.evaluate(() => document.getElementById("large").open);
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const sent = [];
  page.on("websocket", (socket) => socket.on("framesent", (frame) => {
    for (const task of JSON.parse(frame.payload)) {
      if (task.taskType === "removeBackground") sent.push(task.inputs.image.slice(0, 80));
    }
  }));
  await page.goto(url);
  await page.waitForFunction(() => document.getElementById("status").textContent === "connected");

  // One click on a sample photo.
  result.samples = await page.$$eval(".sample", (buttons) => buttons.map((b) => b.dataset.sample));
  await page.click(".sample[data-sample='car-1.jpg']");
  await doneCount(1)(page);

  // An image's URL: the server fetches it.
  const imageUrl = new URL("/samples/girl-1.jpg", url).href;
  await page.fill("#imageUrl", imageUrl);
  await page.click("#byUrl button");
  await doneCount(2)(page);

  // An image pasted from the clipboard.
  await page.evaluate(async () => {
    const blob = await (await fetch("/samples/animal-2.jpg")).blob();
    const data = new DataTransfer();
    data.items.add(new File([blob], "pasted.jpg", { type: "image/jpeg" }));
    document.dispatchEvent(new ClipboardEvent("paste", { clipboardData: data, bubbles: true }));
  });
  await doneCount(3)(page);
  result.captions = await page.$$eval("figure[data-state=done] figcaption",
    (captions) => captions.map((c) => c.textContent));
  result.sent = sent;

  // The large view from the keyboard: focus a result, Enter.
  await page.focus("figure[data-state=done] .board");
  await page.keyboard.press("Enter");
  result.openedByEnter = await isOpen(page);
  result.closeFocused = await page.evaluate(
    () => document.activeElement === document.querySelector("#large .close"));
  result.download = await page.$eval("#large .download",
    (link) => ({ name: link.download, href: link.href.slice(0, 22) }));
  await page.$eval("#large .split", (split) => {
    split.value = 50;
    split.dispatchEvent(new Event("input"));
  });
  result.largeClip = await page.$eval("#large .overlay", (overlay) => overlay.style.clipPath);
  result.largeSize = await page.$eval("#large .original", (image) => image.getBoundingClientRect().width);
  await page.screenshot({ path: join(artifacts, "page-large-compare.png") });
  await page.keyboard.press("Escape");
  result.closedByEscape = !(await isOpen(page));

  await page.click("figure[data-state=done] .board");
  result.openedByClick = await isOpen(page);
  await page.click("#large .close");
  result.closedByButton = !(await isOpen(page));
  await page.screenshot({ path: join(artifacts, "page-inputs.png"), fullPage: true });
  console.log(JSON.stringify(result));
} finally {
  await browser.close();
}
