/**
 * Pool values are JSON: what JSON.stringify would drop, change or choke on is refused with the
 * path to it, before anything is sent (a BigInt, NaN, a typed array, a Map or a Date would
 * otherwise throw, become null, an object of indices, {} or a string on the other side).
 */
import { PoolValueError } from '../errors.js';

/** What is wrong at a place in a value that JSON cannot carry as it is, or null when it can. */
function problemOf(v: unknown, seen: readonly object[], paths: readonly string[], inArray: boolean): string | null {
  switch (typeof v) {
    case 'string':
    case 'boolean':
      return null;
    case 'number':
      return Number.isFinite(v) ? null : `is ${String(v)}; JSON has no NaN or Infinity (JSON.stringify would send null)`;
    case 'bigint':
      return 'is a BigInt; JSON has none (send it as a string or a number)';
    case 'undefined':
      return inArray ? 'is undefined (or a hole); JSON.stringify would send null' : 'is undefined; JSON has no undefined';
    case 'function':
    case 'symbol':
      return `is a ${typeof v}; JSON cannot carry it`;
  }
  if (v === null) return null;
  const o = v as object;
  const back = seen.indexOf(o);
  if (back >= 0) return `refers back to ${paths[back]}; JSON has no cycles`;
  if (ArrayBuffer.isView(o)) return `is a ${o.constructor.name}; send Array.from(it) (JSON.stringify would send an object of indices)`;
  if (o instanceof Map || o instanceof Set) return `is a ${o.constructor.name}; send [...it] or Object.fromEntries(it) (JSON.stringify would send {})`;
  if (o instanceof Date) return 'is a Date; send date.toISOString() or date.getTime()';
  if (Array.isArray(o)) return null;
  const proto = Object.getPrototypeOf(o) as object | null;
  if (proto !== Object.prototype && proto !== null)
    return `is a ${o.constructor?.name ?? 'class'} instance; only plain objects, arrays, strings, finite numbers, booleans and null go`;
  if (Object.getOwnPropertySymbols(o).length > 0) return 'has symbol keys; JSON drops them';
  return null;
}

/** `path` extended by an object key (`.name`, or `["odd key"]`) or an array index. */
function child(path: string, key: string | number): string {
  if (typeof key === 'number') return `${path}[${key}]`;
  return /^[A-Za-z_$][\w$]*$/.test(key) ? `${path}.${key}` : `${path}[${JSON.stringify(key)}]`;
}

/**
 * Throws a PoolValueError naming task `index` and the first place in `value` JSON cannot carry
 * (`root` names the value: `input`, `output`). A property whose value is undefined is fine:
 * JSON drops it, and it reads back as undefined.
 */
function checkJsonValue(value: unknown, index: number, root: string): void {
  const seen: object[] = [];
  const paths: string[] = [];
  const visit = (v: unknown, path: string, inArray: boolean): void => {
    const problem = problemOf(v, seen, paths, inArray);
    if (problem) throw new PoolValueError(index, path, problem);
    if (typeof v !== 'object' || v === null) return;
    seen.push(v);
    paths.push(path);
    if (Array.isArray(v)) {
      for (let i = 0; i < v.length; i++) visit(v[i], child(path, i), true);
    } else {
      for (const [k, x] of Object.entries(v)) if (x !== undefined) visit(x, child(path, k), false);
    }
    seen.pop();
    paths.pop();
  };
  visit(value, root, false);
}

/** The JSON text of a value `checkJsonValue` accepts. */
export function encodeJsonValue(value: unknown, index: number, root: string): string {
  checkJsonValue(value, index, root);
  return JSON.stringify(value);
}
