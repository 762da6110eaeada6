/** Makes actor contexts and events safe to publish: no tensor bytes, no secrets, bounded size. */

const SECRET = /secret|passw|token|credential|^pass$|nkey|seed/i;
/** Nesting levels kept, as @statelyai/inspect's serialisation depth limit (10). */
const MAX_DEPTH = 10;
const MAX_ITEMS = 50;
const MAX_STRING = 500;

/** What becomes of functions: dropped (as JSON does), or `{ type: <name> }` (as @statelyai/inspect's replacer does). */
export type FunctionRule = 'drop' | 'name';

/**
 * A JSON-safe copy of `v`, following what JSON.stringify and @statelyai/inspect do (`toJSON`
 * is called, so an actor reference becomes `{ xstate$$type: 1, id }` and a machine snapshot
 * its value, status, context, output, error, tags, children and historyValue), but fast on
 * tensors: typed arrays and buffers become `"[Float32Array 1024]"` instead of one entry per
 * element. Keys that name secrets are redacted; errors keep name, message and code; past
 * 10 levels objects become "[Object]" and arrays "[Array]"; arrays and strings are bounded.
 */
export function sanitize(v: unknown, functions: FunctionRule = 'drop', depth = 0): unknown {
  if (v === null || typeof v === 'boolean') return v;
  if (typeof v === 'number') return Number.isFinite(v) ? v : String(v);
  if (typeof v === 'string') return v.length > MAX_STRING ? `${v.slice(0, MAX_STRING)}…` : v;
  if (typeof v === 'bigint') return v.toString();
  if (typeof v === 'function') return functions === 'name' ? { type: v.name } : undefined;
  if (typeof v !== 'object') return undefined; // symbols, undefined
  if (ArrayBuffer.isView(v)) return `[${v.constructor.name} ${(v as { length?: number }).length ?? v.byteLength}]`;
  if (v instanceof ArrayBuffer) return `[ArrayBuffer ${v.byteLength}]`;
  if (v instanceof Error) return { name: v.name, message: v.message, ...('code' in v ? { code: String((v as { code: unknown }).code) } : {}) };
  const toJSON = (v as { toJSON?: unknown }).toJSON;
  if (typeof toJSON === 'function') return sanitize(toJSON.call(v), functions, depth);
  if (depth >= MAX_DEPTH) return Array.isArray(v) ? '[Array]' : '[Object]';
  if (Array.isArray(v)) {
    // As JSON: an entry that cannot be written becomes null, so indices keep their meaning.
    const out = v.slice(0, MAX_ITEMS).map((x) => sanitize(x, functions, depth + 1) ?? null);
    if (v.length > MAX_ITEMS) out.push(`… ${v.length - MAX_ITEMS} more`);
    return out;
  }
  const out: Record<string, unknown> = {};
  for (const [k, x] of Object.entries(v)) {
    if (SECRET.test(k)) {
      out[k] = '[redacted]';
      continue;
    }
    const s = sanitize(x, functions, depth + 1);
    if (s !== undefined) out[k] = s;
  }
  return out;
}
