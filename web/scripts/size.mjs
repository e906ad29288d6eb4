// Gzipped size of the built bundle (what a browser downloads on a first visit):
// every file in dist/, gzip level 9. Recorded in BENCHMARKS.md.
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { gzipSync } from 'node:zlib';

const root = new URL('../dist/', import.meta.url).pathname;
const files = [];
const walk = (dir) => {
  for (const name of readdirSync(dir).sort()) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) walk(p);
    else files.push(p);
  }
};
walk(root);
let raw = 0;
let gz = 0;
for (const f of files) {
  const data = readFileSync(f);
  const z = gzipSync(data, { level: 9 }).length;
  raw += data.length;
  gz += z;
  console.log(`${relative(root, f).padEnd(20)} ${String(data.length).padStart(8)} B  ${String(z).padStart(7)} B gzipped`);
}
console.log(`${'total'.padEnd(20)} ${String(raw).padStart(8)} B  ${String(gz).padStart(7)} B gzipped (${(gz / 1024).toFixed(1)} KiB)`);
const LIMIT = 150 * 1024;
if (gz > LIMIT) {
  console.error(`over the ${LIMIT / 1024} KiB budget`);
  process.exit(1);
}
