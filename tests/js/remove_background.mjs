// Drives the official @runware/sdk-js, unmodified, against a server given on the command line.
// Usage: node remove_background.mjs <config.json>
// config: {"url": "...", "apiKey": "...", "calls": [<removeBackground payload>, ...]}
// Prints one JSON line per call: {"ok": true, "result": ...} or {"ok": false, "error": ...}.
import { readFileSync } from "node:fs";
import { Runware } from "@runware/sdk-js";

const config = JSON.parse(readFileSync(process.argv[2], "utf8"));
const runware = await Runware.initialize({ apiKey: config.apiKey, url: config.url });
for (const call of config.calls) {
  try {
    const result = await runware.removeBackground(call);
    console.log(JSON.stringify({ ok: true, result }));
  } catch (error) {
    console.log(JSON.stringify({ ok: false, error: error?.error ?? String(error) }));
  }
}
await runware.disconnect();
process.exit(0);
