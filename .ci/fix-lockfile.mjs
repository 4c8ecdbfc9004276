// Usage: node .ci/fix-lockfile.mjs [package-lock.json]
//
// The registry this project's machines reach serves only the packages built for this
// platform: @rollup/rollup-darwin-arm64 and friends answer 404. `npm install` then leaves
// those optional dependencies out of package-lock.json, and `npm ci` refuses the lock as
// "not in sync". This adds the missing optional entries (version only, marked optional);
// `npm ci` then tries each, gets the 404, and skips it, as it does for any optional
// dependency that cannot be installed. Run it after every `npm install` that changes the lock.
import { readFileSync, writeFileSync } from 'node:fs';
import process from 'node:process';

const file = process.argv[2] ?? 'package-lock.json';
const lock = JSON.parse(readFileSync(file, 'utf8'));
const packages = lock.packages;
let added = 0;
for (const [location, meta] of Object.entries(packages)) {
  for (const [name, range] of Object.entries(meta.optionalDependencies ?? {})) {
    const nested = location ? `${location}/node_modules/${name}` : `node_modules/${name}`;
    const hoisted = `node_modules/${name}`;
    if (packages[nested] || packages[hoisted]) continue;
    packages[hoisted] = {
      version: range.replace(/^[~^]/, ''),
      ...(meta.dev ? { dev: true } : {}),
      optional: true,
    };
    added++;
  }
}
writeFileSync(file, `${JSON.stringify(lock, null, 2)}\n`);
process.stderr.write(`${file}: added ${added} optional entries\n`);
