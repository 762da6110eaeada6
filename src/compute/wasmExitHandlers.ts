/**
 * Removes the process handlers the wasm backend's emscripten module installs when it starts:
 * `uncaughtException` and `unhandledRejection` handlers that rethrow. A rethrow from such a
 * handler is fatal in Node: the program exits with code 7 (not 1), prints the handler's
 * source line (the whole minified module, about 40 KB) instead of the user's error, and skips
 * `exit` handlers. Without them an uncaught error prints its message and stack and exits 1.
 */

/** Emscripten's handlers, recognised by their source (tfjs-backend-wasm 4.x, minified or not). */
const EMSCRIPTEN = [
  /^function\s*\((\w+)\)\s*\{\s*if\s*\(!\(\1 instanceof ExitStatus\)\)\s*\{\s*throw \1;?\s*\}\s*\}$/,
  /^function\s*\((\w+)\)\s*\{\s*throw \1;?\s*\}$/,
];

const isEmscripten = (fn: (...args: never[]) => unknown) => EMSCRIPTEN.some((re) => re.test(fn.toString().trim()));

/** Removes emscripten's rethrowing process handlers; returns how many it removed. Call once the wasm backend has started. */
export function removeWasmExitHandlers(): number {
  const uncaught = process.listeners('uncaughtException').filter(isEmscripten);
  const rejection = process.listeners('unhandledRejection').filter(isEmscripten);
  for (const fn of uncaught) process.removeListener('uncaughtException', fn);
  for (const fn of rejection) process.removeListener('unhandledRejection', fn);
  return uncaught.length + rejection.length;
}
