/** A user's module (job config, pool task) by path: its default export, or a ConfigError naming the file. */
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { ConfigError, messageOf } from './errors.js';

const TYPESCRIPT = /\.(?:[cm]?ts|tsx)$/;

let tsxRegistered: Promise<void> | null = null;

/** The ESM entry of tsx's API as installed where `from` resolves packages (tsx's own exports map names it). */
function tsxApiFrom(from: string): string | undefined {
  try {
    const pkg = createRequire(from).resolve('tsx/package.json');
    const entry = (JSON.parse(readFileSync(pkg, 'utf8')) as { exports?: Record<string, { import?: string | { default?: string } }> }).exports?.['./esm/api']
      ?.import;
    const rel = typeof entry === 'string' ? entry : entry?.default;
    return rel ? join(dirname(pkg), rel) : undefined;
  } catch {
    return undefined; // not installed there
  }
}

/**
 * Makes Node load TypeScript with the tsx found beside the user's module (else beside Troupe),
 * once per process. Installed packages run compiled JavaScript: TypeScript job configs need
 * Node's own type stripping (22.18 and later) or tsx, an optional peer dependency.
 */
function registerTsx(file: string, what: string, path: string): Promise<void> {
  tsxRegistered ??= (async () => {
    const api = tsxApiFrom(file) ?? tsxApiFrom(import.meta.url);
    if (!api) {
      throw new ConfigError(
        `${what} ${path} is TypeScript, which Node ${process.version} cannot load by itself: ` +
          'install tsx beside it (npm install --save-dev tsx), or write it as .mjs',
      );
    }
    const { register } = (await import(pathToFileURL(api).href)) as { register: () => unknown };
    register();
  })();
  return tsxRegistered;
}

/** Imports the module at `path` (TypeScript or JavaScript) and returns its default export; `what` names it in errors ("job config"). */
export async function importDefault(path: string, what: string): Promise<unknown> {
  const file = resolve(path);
  if (!existsSync(file)) throw new ConfigError(`${what} ${path} does not exist`);
  const url = pathToFileURL(file).href;
  try {
    try {
      return ((await import(url)) as { default?: unknown }).default;
    } catch (err) {
      if ((err as { code?: string }).code !== 'ERR_UNKNOWN_FILE_EXTENSION' || !TYPESCRIPT.test(file)) throw err;
      // Node keeps the failed load under its URL: the retry, with tsx, takes another one.
      await registerTsx(file, what, path);
      return ((await import(`${url}?tsx`)) as { default?: unknown }).default;
    }
  } catch (cause) {
    if (cause instanceof ConfigError) throw cause;
    throw new ConfigError(`${what} ${path} could not be loaded: ${messageOf(cause)}`, { cause });
  }
}
