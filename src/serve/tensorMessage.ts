/**
 * Tensors in one message, for serving requests and replies: a frame of one chunk
 * (protocol/frame.ts, Troupe's one tensor encoding): its headers name the tensors, its body
 * holds their bytes. A reply that carries an error instead is a frame without tensors whose
 * `Troupe-Error` header holds `{ "code": ..., "message": ... }`.
 */
import { FrameError, messageOf } from '../errors.js';
import { decodeSingle, encodeFrame, parseHeader, type HeaderGetter, type WireMessage, type WireTensor } from '../protocol/frame.js';
import { Phase } from '../protocol/phase.js';

/** The header of an error reply. */
const ERROR_HEADER = 'Troupe-Error';

/** What a serving message's frame is keyed by: the op's phase, nothing of a step. */
const key = (op: 'forward' | 'backward') => ({ job: 'serve', step: 0, microbatch: 0, phase: op === 'forward' ? Phase.FORWARD : Phase.BACKWARD });

/** A message carrying `tensors` for `op` (a request or its answer), from `from` (a request's id). */
export function encodeTensors(tensors: readonly WireTensor[], op: 'forward' | 'backward' = 'forward', from = 'runtime'): WireMessage {
  return encodeFrame({ key: key(op), from, tensors }, Number.MAX_SAFE_INTEGER)[0]!;
}

/** A message carrying an error instead of tensors. */
export function encodeError(code: string, message: string, op: 'forward' | 'backward' = 'forward'): WireMessage {
  const m = encodeTensors([], op);
  return { headers: { ...m.headers, [ERROR_HEADER]: JSON.stringify({ code, message }) }, data: m.data };
}

/**
 * The tensors of a message, or the error it carries as `{ error }`; FrameError when it is no
 * frame of one chunk for `op` of at most `maxBytes` bytes. The tensors own their bytes.
 */
export function decodeTensors(
  m: { readonly data: Uint8Array; header: HeaderGetter },
  op: 'forward' | 'backward' = 'forward',
  maxBytes = 256 * 1024 * 1024,
): { tensors: WireTensor[]; id?: string } | { error: { code: string; message: string } } {
  const error = m.header(ERROR_HEADER);
  if (error !== undefined) {
    try {
      const e = JSON.parse(error) as { code?: unknown; message?: unknown };
      return { error: { code: String(e.code), message: String(e.message) } };
    } catch (cause) {
      throw new FrameError(`malformed tensor message: ${ERROR_HEADER} is not JSON: ${messageOf(cause)}`, { cause });
    }
  }
  try {
    const h = parseHeader(m.header, key(op).phase, maxBytes);
    // A request's id (`<client>#<n>`) travels as its sender; the runtime's errors name it.
    return { tensors: [...decodeSingle(h, m.data).tensors], ...(h.from !== 'client' && h.from !== 'runtime' ? { id: h.from } : {}) };
  } catch (cause) {
    throw new FrameError(`malformed tensor message: ${messageOf(cause)}`, { cause });
  }
}
