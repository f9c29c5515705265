// Bundles src/main.jsx (and the CSS it imports) into dist/app.js and dist/app.css,
// and copies index.html beside them: the three files the apps serve at /use-chat.
import { copyFile, mkdir } from "node:fs/promises";
import { build } from "esbuild";

await mkdir("dist", { recursive: true });
await build({
  entryPoints: ["src/main.jsx"],
  outfile: "dist/app.js",
  bundle: true,
  minify: true,
  format: "iife",
  target: "es2022",
  jsx: "automatic",
  define: { "process.env.NODE_ENV": '"production"' },
  logLevel: "warning",
});
await copyFile("index.html", "dist/index.html");
