/**
 * Files of the Troupe package itself (nats.conf, bin/troupe.mjs, package.json), found from
 * this module both in the repository (src/packagePath.ts) and in the installed package
 * (dist/src/packagePath.js), where the compiled code sits one directory deeper.
 */
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const parent = dirname(dirname(fileURLToPath(import.meta.url)));

/** The package's root: the directory of its package.json (dist/ has none). */
const PACKAGE_ROOT = existsSync(join(parent, 'package.json')) ? parent : dirname(parent);

/** A path inside the package, e.g. `packagePath('nats.conf')`. */
export function packagePath(...parts: readonly string[]): string {
  return join(PACKAGE_ROOT, ...parts);
}

/** The package's version, from its package.json. */
export function packageVersion(): string {
  return (JSON.parse(readFileSync(packagePath('package.json'), 'utf8')) as { version: string }).version;
}
