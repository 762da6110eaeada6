/** Makes actor contexts and events safe to publish: no tensor bytes, no secrets, bounded size. */

const SECRET = /secret|passw|token|credential|^pass$|nkey|seed/i;
const MAX_DEPTH = 6;
const MAX_ITEMS = 50;
const MAX_STRING = 500;

function isActorRef(v: object): boolean {
  return typeof (v as { send?: unknown }).send === 'function' && typeof (v as { getSnapshot?: unknown }).getSnapshot === 'function';
}

/**
 * A JSON-safe copy of `v`: typed arrays and buffers become `"[Float32Array 1024]"`, functions
 * disappear, keys that name secrets are redacted, actor references become their id, and
 * depth, array length and string length are bounded.
 */
export function sanitize(v: unknown, depth = 0): unknown {
  if (v === null || typeof v === 'boolean') return v;
  if (typeof v === 'number') return Number.isFinite(v) ? v : String(v);
  if (typeof v === 'string') return v.length > MAX_STRING ? `${v.slice(0, MAX_STRING)}…` : v;
  if (typeof v === 'bigint') return v.toString();
  if (typeof v !== 'object') return undefined; // functions, symbols, undefined
  if (ArrayBuffer.isView(v)) return `[${v.constructor.name} ${(v as { length?: number }).length ?? v.byteLength}]`;
  if (v instanceof ArrayBuffer) return `[ArrayBuffer ${v.byteLength}]`;
  if (v instanceof Error) return { name: v.name, message: v.message, ...('code' in v ? { code: String((v as { code: unknown }).code) } : {}) };
  if (isActorRef(v)) return { actor: (v as { id?: string }).id ?? '?' };
  if (depth >= MAX_DEPTH) return '[…]';
  if (Array.isArray(v)) {
    const out = v.slice(0, MAX_ITEMS).map((x) => sanitize(x, depth + 1));
    if (v.length > MAX_ITEMS) out.push(`… ${v.length - MAX_ITEMS} more`);
    return out;
  }
  const out: Record<string, unknown> = {};
  for (const [k, x] of Object.entries(v)) {
    if (SECRET.test(k)) {
      out[k] = '[redacted]';
      continue;
    }
    const s = sanitize(x, depth + 1);
    if (s !== undefined) out[k] = s;
  }
  return out;
}
