/** A user's module (job config, pool task) by path: its default export, or a ConfigError naming the file. */
import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { ConfigError, messageOf } from './errors.js';

/** Imports the module at `path` (TypeScript or JavaScript) and returns its default export; `what` names it in errors ("job config"). */
export async function importDefault(path: string, what: string): Promise<unknown> {
  const file = resolve(path);
  if (!existsSync(file)) throw new ConfigError(`${what} ${path} does not exist`);
  try {
    return ((await import(pathToFileURL(file).href)) as { default?: unknown }).default;
  } catch (cause) {
    throw new ConfigError(`${what} ${path} could not be loaded: ${messageOf(cause)}`, { cause });
  }
}
