// Drives the service's page in headless Chromium (Debian's, never a downloaded one).
// Usage: node browser_page.mjs <config.json>
// config: {"url": "http://127.0.0.1:PORT/", "image": "/path/car-1.jpg", "screenshot": "/path/x.png",
//          "model": "<id to pick>", "decontaminate": true|false}
// Prints one JSON object: the model picker's options, the task the page sent, the cutout's size
// and alpha statistics, and the foreign-origin check.
import { readFileSync } from "node:fs";
import { chromium } from "playwright-core";

const config = JSON.parse(readFileSync(process.argv[2], "utf8"));
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const result = {};
try {
  const page = await browser.newPage();
  const sent = [];
  page.on("websocket", (socket) => socket.on("framesent", (frame) => sent.push(frame.payload)));
  await page.goto(config.url);
  await page.waitForFunction(() => document.getElementById("status").textContent === "connected");
  // The model picker, filled from GET /v1/models, starts on the service's default.
  await page.waitForFunction(() => document.querySelectorAll("#model option").length > 0);
  Object.assign(result, await page.evaluate(() => ({
    models: [...document.querySelectorAll("#model option")].map((o) => o.textContent),
    chosenModel: document.getElementById("model").value,
    modelNote: document.getElementById("modelNote").textContent,
  })));
  await page.selectOption("#model", config.model);
  result.noteAfterPicking = await page.textContent("#modelNote");
  if (config.decontaminate) await page.check("#decontaminate");
  await page.setInputFiles("#files", config.image);
  await page.waitForSelector("img[data-done=true]", { timeout: 120000 });
  Object.assign(result, await page.evaluate(async () => {
    const img = document.querySelector("img[data-done=true]");
    await img.decode();
    const canvas = document.createElement("canvas");
    canvas.width = img.naturalWidth;
    canvas.height = img.naturalHeight;
    const context = canvas.getContext("2d");
    context.drawImage(img, 0, 0);
    const pixels = context.getImageData(0, 0, canvas.width, canvas.height).data;
    let transparent = 0, visible = 0;
    for (let i = 3; i < pixels.length; i += 4) {
      if (pixels[i] === 0) transparent++;
      else visible++;
    }
    return { width: img.naturalWidth, height: img.naturalHeight, transparent, visible,
             caption: document.querySelector("figcaption").textContent,
             download: document.querySelector("figcaption a").getAttribute("download") };
  }));
  await page.screenshot({ path: config.screenshot, fullPage: true });
  const task = sent.map((payload) => JSON.parse(payload))
    .flat().find((item) => item.taskType === "removeBackground");
  result.sentModel = task.model;
  result.sentDecontaminate = task.settings.decontaminate;

  // A page from another origin must not get a socket.
  const foreign = await browser.newPage();
  await foreign.route("http://foreign.test/", (route) =>
    route.fulfill({ contentType: "text/html", body: "<!doctype html><title>foreign</title>" }));
  await foreign.goto("http://foreign.test/");
  const wsUrl = config.url.replace(/^http/, "ws");
  result.foreign = await foreign.evaluate((url) => new Promise((resolve) => {
    const socket = new WebSocket(url);
    socket.onopen = () => resolve("opened");
    socket.onerror = () => resolve("refused");
    setTimeout(() => resolve("timeout"), 10000);
  }), wsUrl);
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
