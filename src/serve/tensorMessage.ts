/**
 * Tensors in one message body, for serving requests and replies: a 4-byte length, a JSON
 * list of { dtype, shape } (or an error) with the request's id, then each tensor's raw bytes
 * at 4-byte boundaries.
 */
import { FrameError, messageOf } from '../errors.js';
import { isDType, paddedByteLength, sizeOf, bytesPerElement, viewOf, type DType } from '../protocol/dtype.js';
import type { WireTensor } from '../protocol/frame.js';
import { encodeJson } from '../protocol/messages.js';

interface Head {
  /** A request's id (`<client>#<n>`), which names it in the runtime's errors. */
  readonly id?: string;
  readonly tensors?: readonly { readonly dtype: string; readonly shape: readonly number[] }[];
  readonly error?: { readonly code: string; readonly message: string };
}

const dec = new TextDecoder();

function pack(head: Head, tensors: readonly WireTensor[]): Uint8Array {
  const json = encodeJson(head);
  const start = Math.ceil((4 + json.byteLength) / 4) * 4;
  const total = tensors.reduce((n, t) => n + paddedByteLength(t.dtype, t.shape), start);
  const out = new Uint8Array(total);
  new DataView(out.buffer).setUint32(0, json.byteLength, true);
  out.set(json, 4);
  let at = start;
  for (const t of tensors) {
    out.set(new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength), at);
    at += paddedByteLength(t.dtype, t.shape);
  }
  return out;
}

/** A message carrying `tensors` (a request: with its id). */
export function encodeTensors(tensors: readonly WireTensor[], id?: string): Uint8Array {
  return pack({ ...(id !== undefined ? { id } : {}), tensors: tensors.map((t) => ({ dtype: t.dtype, shape: t.shape })) }, tensors);
}

/** A message carrying an error instead of tensors. */
export function encodeError(code: string, message: string): Uint8Array {
  return pack({ error: { code, message } }, []);
}

/** The tensors of a message (and its id, if it has one), or the error it carries as `{ error }`; FrameError when malformed. */
export function decodeTensors(body: Uint8Array): { tensors: WireTensor[]; id?: string } | { error: { code: string; message: string } } {
  try {
    if (body.byteLength < 4) throw new Error(`${body.byteLength} bytes, too short`);
    const n = new DataView(body.buffer, body.byteOffset, body.byteLength).getUint32(0, true);
    if (4 + n > body.byteLength) throw new Error(`a ${n}-byte head in ${body.byteLength} bytes`);
    const head = JSON.parse(dec.decode(body.subarray(4, 4 + n))) as Head;
    if (head.error) return { error: { code: String(head.error.code), message: String(head.error.message) } };
    if (!Array.isArray(head.tensors)) throw new Error('no tensor list');
    if (head.id !== undefined && (typeof head.id !== 'string' || head.id.length > 200)) throw new Error('the id must be a string of at most 200 characters');
    // A copy, so that the typed views are aligned and own their bytes.
    const copy = new Uint8Array(body.subarray(Math.ceil((4 + n) / 4) * 4));
    let at = 0;
    const tensors = head.tensors.map((t, i) => {
      if (!isDType(t.dtype)) throw new Error(`tensor ${i}: dtype ${String(t.dtype)}`);
      if (!Array.isArray(t.shape) || t.shape.some((d: number) => !Number.isInteger(d) || d < 0)) throw new Error(`tensor ${i}: shape ${JSON.stringify(t.shape)}`);
      const bytes = sizeOf(t.shape) * bytesPerElement(t.dtype as DType);
      if (at + bytes > copy.byteLength) throw new Error(`tensor ${i} needs ${bytes} bytes, ${copy.byteLength - at} left`);
      const data = viewOf(t.dtype as DType, copy.buffer, copy.byteOffset + at, sizeOf(t.shape));
      at += paddedByteLength(t.dtype as DType, t.shape);
      return { name: `t${i}`, dtype: t.dtype as DType, shape: [...t.shape], data };
    });
    return head.id !== undefined ? { tensors, id: head.id } : { tensors };
  } catch (cause) {
    throw new FrameError(`malformed tensor message: ${messageOf(cause)}`, { cause });
  }
}
