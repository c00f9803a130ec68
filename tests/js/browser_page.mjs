// Drives the service's page in headless Chromium (Debian's, never a downloaded one).
// Usage: node browser_page.mjs <config.json>
// config: {"url": "http://127.0.0.1:PORT/", "image": "/path/car-1.jpg", "broken": "/path/x.jpg",
//          "artifacts": "/path/dir", "model": "<id to pick>", "decontaminate": true|false}
// Prints one JSON object: what the page showed and sent at each step, the cutout's alpha
// statistics, the zip it built, and the foreign-origin check. Screenshots go to artifacts/.
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { chromium } from "playwright-core";

const config = JSON.parse(readFileSync(process.argv[2], "utf8"));
const shot = (page, name) => page.screenshot({ path: join(config.artifacts, name), fullPage: true });
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const result = {};
try {
  const page = await browser.newPage({ acceptDownloads: true });
  const sent = [];
  page.on("websocket", (socket) => socket.on("framesent", (frame) => sent.push(frame.payload)));
  await page.goto(config.url);
  await page.waitForFunction(() => document.getElementById("status").textContent === "connected");
  result.favicon = await page.getAttribute("link[rel=icon]", "href");

  // The model picker, filled from GET /v1/models, starts on the service's default.
  await page.waitForFunction(() => document.querySelectorAll("#model option").length > 0);
  Object.assign(result, await page.evaluate(() => ({
    models: [...document.querySelectorAll("#model option")].map((o) => o.textContent),
    chosenModel: document.getElementById("model").value,
    modelNote: document.getElementById("modelNote").textContent,
    mattingDisabledAtFirst: document.getElementById("matting").disabled,
    colourDisabledAtFirst: document.getElementById("colouring").disabled,
    opacityLabel: document.getElementById("alpha").parentElement.textContent.trim(),
    opacityDefault: document.getElementById("alpha").value,
  })));
  await page.check("#alphaMatting");
  result.mattingEnabledWithSwitch = !(await page.isDisabled("#fg"));
  await page.uncheck("#alphaMatting");
  result.mattingDisabledAgain = await page.isDisabled("#fg");
  await page.selectOption("#model", config.model);
  result.noteAfterPicking = await page.textContent("#modelNote");
  if (config.decontaminate) await page.check("#decontaminate");

  // Each figure's states, recorded from the start: the original shows at once, working.
  await page.evaluate(() => {
    window.states = [];
    new MutationObserver((records) => {
      for (const r of records) {
        if (r.type === "attributes" && r.attributeName === "data-state") {
          window.states.push(r.target.dataset.state);
        }
        for (const node of r.addedNodes) if (node.dataset?.state) window.states.push(node.dataset.state);
      }
    }).observe(document.getElementById("results"), { subtree: true, childList: true, attributes: true });
  });
  await page.setInputFiles("#files", config.image);
  await page.waitForSelector("figure[data-state=done]", { timeout: 120000 });
  Object.assign(result, await page.evaluate(async () => {
    const figure = document.querySelector("figure[data-state=done]");
    const img = figure.querySelector(".cutout");
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
             states: window.states,
             originalShown: figure.querySelector(".original").complete &&
               figure.querySelector(".original").naturalWidth,
             caption: figure.querySelector("figcaption").textContent,
             used: figure.querySelector(".used").textContent,
             download: figure.querySelector("figcaption a").getAttribute("download") };
  }));
  await shot(page, "browser-cutout.png");

  // The before/after slider: at 0 the original is all there is to see.
  await page.fill("figure[data-state=done] .split", "0");
  await page.dispatchEvent("figure[data-state=done] .split", "input");
  result.clipAtZero = await page.evaluate(
    () => document.querySelector("figure[data-state=done] .overlay").style.clipPath);
  await page.fill("figure[data-state=done] .split", "50");
  await page.dispatchEvent("figure[data-state=done] .split", "input");
  // The cutout's layer covers the whole board; the clip shows its left half.
  result.overlayBox = await page.evaluate(() => {
    const figure = document.querySelector("figure[data-state=done]");
    const board = figure.querySelector(".board").getBoundingClientRect();
    const overlay = figure.querySelector(".overlay").getBoundingClientRect();
    return { sameAsBoard: overlay.width === board.width && overlay.height === board.height,
             height: overlay.height };
  });
  await shot(page, "browser-before-after.png");
  await page.locator("figure[data-state=done] .board").screenshot(
    { path: join(config.artifacts, "browser-board-half.png") });

  // A click shows the cutout large; its close button closes it.
  await page.click("figure[data-state=done] .board");
  result.largeOpen = await page.evaluate(() => document.getElementById("large").open);
  result.largeSource = (await page.getAttribute("#large .cutout", "src")).slice(0, 22);
  await shot(page, "browser-large.png");
  await page.click("#large .close");
  result.largeClosed = !(await page.evaluate(() => document.getElementById("large").open));

  // A file the service cannot read: its error alone, no checkerboard.
  await page.setInputFiles("#files", config.broken);
  await page.waitForSelector("figure[data-state=failed]", { timeout: 60000 });
  result.failed = await page.evaluate(() => {
    const figure = document.querySelector("figure[data-state=failed]");
    return { text: figure.textContent, boards: figure.querySelectorAll(".board, .checker").length };
  });
  await shot(page, "browser-failed.png");

  // "download all": a zip of the finished cutouts, made in the page.
  const [download] = await Promise.all([page.waitForEvent("download"), page.click("#downloadAll")]);
  result.zipName = download.suggestedFilename();
  const zipPath = join(config.artifacts, "browser-cutouts.zip");
  await download.saveAs(zipPath);
  result.zipPath = zipPath;

  // "clear" empties the results.
  await page.click("#clear");
  result.afterClear = await page.evaluate(() => ({
    figures: document.querySelectorAll("#results figure").length,
    downloadAllDisabled: document.getElementById("downloadAll").disabled,
  }));

  const tasks = sent.map((payload) => JSON.parse(payload)).flat()
    .filter((item) => item.taskType === "removeBackground");
  result.sentModel = tasks[0].model;
  result.sentSettings = tasks[0].settings;

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
