// Validates an AsyncAPI document with @asyncapi/parser, as AsyncAPI's own tools read it.
// Usage: node validate_asyncapi.mjs URL; prints each diagnostic of severity error or warning as
// JSON lines and exits 1 when there is an error.
import { Parser } from "@asyncapi/parser";

const response = await fetch(process.argv[2]);
const text = await response.text();
const { document, diagnostics } = await new Parser().parse(text);
let errors = 0;
for (const diagnostic of diagnostics) {
  if (diagnostic.severity <= 1) {  // 0 error, 1 warning
    console.log(JSON.stringify({ severity: diagnostic.severity, code: diagnostic.code,
                                 message: diagnostic.message, path: diagnostic.path }));
    if (diagnostic.severity === 0) errors += 1;
  }
}
if (document === undefined || errors) process.exit(1);
console.log(JSON.stringify({ ok: true, channels: document.channels().length }));
