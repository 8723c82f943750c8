// Builds the browser editor into dist/ (index.html, editor.js), the files the
// quire binary embeds. With --check, builds into a temporary folder and fails
// when the committed dist/ differs (CI runs this).
import { build } from "esbuild";
import { mkdtempSync, readFileSync, writeFileSync, copyFileSync, mkdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const check = process.argv.includes("--check");
const out = check ? mkdtempSync(join(tmpdir(), "quire-page-")) : join(root, "dist");
mkdirSync(out, { recursive: true });

await build({
  entryPoints: [join(root, "page/main.ts")],
  bundle: true,
  format: "esm",
  target: "es2022",
  minify: true,
  legalComments: "eof",
  charset: "utf8",
  outfile: join(out, "editor.js"),
  logLevel: "warning",
});
copyFileSync(join(root, "page/index.html"), join(out, "index.html"));

if (check) {
  let stale = [];
  for (const f of ["editor.js", "index.html"]) {
    let committed = "";
    try {
      committed = readFileSync(join(root, "dist", f), "utf8");
    } catch {}
    if (committed !== readFileSync(join(out, f), "utf8")) stale.push(`dist/${f}`);
  }
  rmSync(out, { recursive: true, force: true });
  if (stale.length) {
    console.error(`web: ${stale.join(", ")} differ from a fresh build of page/ and src/: run \`npm run build:page\` in web/ and commit the result`);
    process.exit(1);
  }
  console.log("web: dist/ matches a fresh build");
} else {
  writeFileSync(join(out, "README.md"), "Built by `npm run build:page` from `page/` and `src/`; embedded into the `quire` binary (ingest/src/http.rs). Do not edit: CI rebuilds it and fails when it differs.\n");
}
