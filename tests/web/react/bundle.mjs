// Bundles app.jsx with esbuild (from npm) into OUT_DIR/app.js, beside an
// index.html that loads it. Usage: node bundle.mjs OUT_DIR
import { build } from "esbuild";
import { writeFileSync } from "node:fs";

const [out] = process.argv.slice(2);
await build({
  entryPoints: [new URL("./app.jsx", import.meta.url).pathname],
  bundle: true,
  format: "esm",
  jsx: "automatic",
  define: { "process.env.NODE_ENV": '"production"' },
  outfile: `${out}/app.js`,
  logLevel: "error",
});
writeFileSync(
  `${out}/index.html`,
  '<!doctype html><meta charset="utf-8"><title>chat</title><div id="root"></div>' +
    '<script type="module" src="app.js"></script>\n',
);
console.log(JSON.stringify({ ok: true }));
