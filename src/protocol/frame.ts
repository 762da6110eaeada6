/**
 * Tensor frames: NATS headers naming the key and the tensors, plus the tensors' raw
 * little-endian bytes, chunked when larger than the server's max_payload.
 *
 * ```
 * Troupe-Job: mnist          Troupe-Tensors: x:float32:32,784;y:float32:32,10
 * Troupe-Step: 7             Troupe-Bytes:   101632      (total body bytes, all chunks)
 * Troupe-Mb: 3               Troupe-Chunk:   0/2/65536   (index / count / nominal chunk size)
 * Troupe-Phase: INPUT        Troupe-From:    sched
 *                            Troupe-Seal:    (a stage's frames) its sender's seal, see seal.ts
 * body: x's bytes, padded to 4, then y's bytes ...; chunk i holds bytes [i*size, (i+1)*size)
 * ```
 */
import { FrameError } from '../errors.js';
import { type DType, HOST_IS_LITTLE_ENDIAN, isDType, paddedByteLength, sizeOf, swap32, viewOf } from './dtype.js';
import type { WireArray } from './dtype.js';
import type { Key } from './key.js';
import { isPhase } from './phase.js';

/** One tensor as it travels: a name, a dtype, a shape and its elements. */
export interface WireTensor {
  readonly name: string;
  readonly dtype: DType;
  readonly shape: readonly number[];
  readonly data: WireArray;
}

/** A whole frame: a key, its sender and its tensors. */
export interface Frame {
  readonly key: Key;
  readonly from: string;
  readonly tensors: readonly WireTensor[];
  /** Its sender's seal (seal.ts), sent as a header; the frames stages send to each other carry one. */
  readonly seal?: string;
}

/** One NATS message of a frame. */
export interface WireMessage {
  readonly headers: Record<string, string>;
  readonly data: Uint8Array;
}

/** Reads one header of a received message. */
export type HeaderGetter = (name: string) => string | undefined;

/** Description of one tensor in the `Troupe-Tensors` header. */
export interface TensorSpec {
  readonly name: string;
  readonly dtype: DType;
  readonly shape: readonly number[];
}

/** Everything the headers of one chunk say. */
export interface FrameHeader {
  readonly key: Key;
  readonly from: string;
  readonly tensorsSpec: string;
  readonly specs: readonly TensorSpec[];
  readonly totalBytes: number;
  readonly chunk: number;
  readonly chunks: number;
  readonly chunkSize: number;
  /** The sender's seal, when the frame carries one. */
  readonly seal?: string;
}

export const H = {
  job: 'Troupe-Job',
  step: 'Troupe-Step',
  mb: 'Troupe-Mb',
  phase: 'Troupe-Phase',
  from: 'Troupe-From',
  tensors: 'Troupe-Tensors',
  bytes: 'Troupe-Bytes',
  chunk: 'Troupe-Chunk',
} as const;

/** The optional header of a sealed frame (seal.ts). */
const SEAL_HEADER = 'Troupe-Seal';

const NAME = /^[A-Za-z0-9_]{1,64}$/;
const UINT = /^(0|[1-9][0-9]{0,15})$/;

/** Body bytes a frame of these tensors needs. */
export function frameByteLength(tensors: readonly TensorSpec[]): number {
  let n = 0;
  for (const t of tensors) n += paddedByteLength(t.dtype, t.shape);
  return n;
}

/** The `Troupe-Tensors` header of these tensors. */
export function specString(tensors: readonly TensorSpec[]): string {
  return tensors.map((t) => `${t.name}:${t.dtype}:${t.shape.join(',')}`).join(';');
}

/** Byte-swaps the 4-byte elements (float32, int32) of each tensor in `body`; bool bytes stay. */
function swapWords(specs: readonly TensorSpec[], body: Uint8Array): void {
  let off = 0;
  for (const t of specs) {
    const len = paddedByteLength(t.dtype, t.shape);
    if (t.dtype !== 'bool') swap32(body.subarray(off, off + len));
    off += len;
  }
}

const ARRAY_OF: Record<DType, new (n: number) => WireArray> = { float32: Float32Array, int32: Int32Array, bool: Uint8Array };

function bytesOf(a: WireArray): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

/**
 * Encodes a frame into one or more messages whose bodies are at most `maxChunkBytes`.
 *
 * @example
 * for (const m of encodeFrame(frame, 1 << 20)) nc.publish(subject, m.data, { headers: toNats(m.headers) });
 */
export function encodeFrame(frame: Frame, maxChunkBytes: number): WireMessage[] {
  if (!Number.isInteger(maxChunkBytes) || maxChunkBytes < 4) {
    throw new FrameError(`chunk size ${maxChunkBytes} must be an integer of at least 4 bytes`);
  }
  for (const t of frame.tensors) {
    if (!NAME.test(t.name)) throw new FrameError(`tensor name "${t.name}" must be 1-64 letters, digits or "_"`);
    if (!t.shape.every((d) => Number.isInteger(d) && d >= 0))
      throw new FrameError(`tensor ${t.name}: shape [${t.shape.join(',')}] has a dimension that is not a non-negative integer`);
    if (!(t.data instanceof ARRAY_OF[t.dtype])) throw new FrameError(`tensor ${t.name}: ${t.data.constructor.name} cannot carry ${t.dtype}`);
    if (t.data.length !== sizeOf(t.shape)) {
      throw new FrameError(`tensor ${t.name}: ${t.data.length} elements do not fill shape [${t.shape.join(',')}]`);
    }
  }
  const total = frameByteLength(frame.tensors);
  let body: Uint8Array;
  const only = frame.tensors.length === 1 ? frame.tensors[0]! : undefined;
  if (only && only.data.byteLength === total && HOST_IS_LITTLE_ENDIAN) {
    body = bytesOf(only.data); // no copy: the single tensor's bytes are the body
  } else {
    body = new Uint8Array(total); // zeroed: the padding after a tensor is sent too
    let off = 0;
    for (const t of frame.tensors) {
      body.set(bytesOf(t.data), off);
      off += paddedByteLength(t.dtype, t.shape);
    }
    if (!HOST_IS_LITTLE_ENDIAN) swapWords(frame.tensors, body);
  }
  const chunks = Math.max(1, Math.ceil(total / maxChunkBytes));
  const size = chunks === 1 ? total : maxChunkBytes;
  const base = {
    [H.job]: frame.key.job,
    [H.step]: String(frame.key.step),
    [H.mb]: String(frame.key.microbatch),
    [H.phase]: frame.key.phase,
    [H.from]: frame.from,
    [H.tensors]: specString(frame.tensors),
    [H.bytes]: String(total),
    ...(frame.seal !== undefined ? { [SEAL_HEADER]: frame.seal } : {}),
  };
  const out: WireMessage[] = [];
  for (let i = 0; i < chunks; i++) {
    out.push({
      headers: { ...base, [H.chunk]: `${i}/${chunks}/${size}` },
      data: body.subarray(i * size, Math.min(total, (i + 1) * size)),
    });
  }
  return out;
}

/** Encodes a message that carries only a key (UPDATE). */
export function encodeKeyOnly(key: Key, from: string): WireMessage {
  return encodeFrame({ key, from, tensors: [] }, 4)[0]!;
}

function need(get: HeaderGetter, name: string): string {
  const v = get(name);
  if (v === undefined || v === '') throw new FrameError(`header ${name} is missing`);
  return v;
}

function uint(get: HeaderGetter, name: string): number {
  const v = need(get, name);
  if (!UINT.test(v)) throw new FrameError(`header ${name} "${v}" is not a non-negative integer`);
  return Number(v);
}

/** Parses the `Troupe-Tensors` header. */
export function parseSpecs(spec: string): TensorSpec[] {
  if (spec === '') return [];
  return spec.split(';').map((part) => {
    const [name, dtype, dims, extra] = part.split(':');
    if (name === undefined || dtype === undefined || dims === undefined || extra !== undefined) {
      throw new FrameError(`tensor spec "${part}" is not name:dtype:shape`);
    }
    if (!NAME.test(name)) throw new FrameError(`tensor name "${name}" is invalid`);
    if (!isDType(dtype)) throw new FrameError(`tensor ${name} has unknown dtype "${dtype}"`);
    const shape =
      dims === ''
        ? []
        : dims.split(',').map((d) => {
            if (!UINT.test(d)) throw new FrameError(`tensor ${name} has a bad dimension "${d}"`);
            return Number(d);
          });
    return { name, dtype, shape };
  });
}

/**
 * Parses and checks the headers of one received chunk.
 * @param subjectPhase the phase named by the subject, which must agree with the header
 * @param maxFrameBytes largest whole frame accepted
 */
export function parseHeader(get: HeaderGetter, subjectPhase: string, maxFrameBytes: number): FrameHeader {
  const phase = need(get, H.phase);
  if (!isPhase(phase)) throw new FrameError(`unknown phase "${phase}"`);
  if (phase !== subjectPhase) throw new FrameError(`phase ${phase} sent on the ${subjectPhase} subject`);
  const key: Key = { job: need(get, H.job), step: uint(get, H.step), microbatch: uint(get, H.mb), phase: phase };
  const from = need(get, H.from);
  const tensorsSpec = get(H.tensors) ?? '';
  const specs = parseSpecs(tensorsSpec);
  const names = new Set(specs.map((t) => t.name));
  if (names.size !== specs.length) throw new FrameError(`${H.tensors} names a tensor twice: "${tensorsSpec}"`);
  const totalBytes = uint(get, H.bytes);
  if (totalBytes !== frameByteLength(specs)) {
    throw new FrameError(`${H.bytes} ${totalBytes} does not match the ${frameByteLength(specs)} bytes its tensors need`);
  }
  if (totalBytes > maxFrameBytes) {
    throw new FrameError(`frame of ${totalBytes} bytes is over the ${maxFrameBytes}-byte limit`);
  }
  const parts = need(get, H.chunk).split('/');
  if (parts.length !== 3 || !parts.every((p) => UINT.test(p))) {
    throw new FrameError(`header ${H.chunk} "${get(H.chunk)}" is not index/count/size`);
  }
  const [chunk, chunks, chunkSize] = parts.map(Number) as [number, number, number];
  if (chunks < 1 || chunk >= chunks) throw new FrameError(`chunk ${chunk} of ${chunks} is out of range`);
  const expected = chunks === 1 ? totalBytes : chunkSize;
  if (chunks > 1 && (chunkSize < 4 || Math.ceil(totalBytes / chunkSize) !== chunks)) {
    throw new FrameError(`${chunks} chunks of ${chunkSize} bytes cannot hold ${totalBytes} bytes`);
  }
  if (chunks === 1 && chunkSize !== expected) {
    throw new FrameError(`single chunk claims size ${chunkSize} for ${totalBytes} bytes`);
  }
  const seal = get(SEAL_HEADER);
  return { key, from, tensorsSpec, specs, totalBytes, chunk, chunks, chunkSize, ...(seal !== undefined ? { seal } : {}) };
}

/** Byte length chunk `h.chunk` must have. */
export function chunkLength(h: FrameHeader): number {
  if (h.chunks === 1) return h.totalBytes;
  return h.chunk < h.chunks - 1 ? h.chunkSize : h.totalBytes - h.chunkSize * (h.chunks - 1);
}

/** Builds the frame's tensors as views over `body`, which the frame then owns. */
export function tensorsFromBody(h: FrameHeader, body: Uint8Array): WireTensor[] {
  if (body.byteLength !== h.totalBytes) {
    throw new FrameError(`body of ${body.byteLength} bytes, expected ${h.totalBytes}`);
  }
  if (!HOST_IS_LITTLE_ENDIAN) swapWords(h.specs, body);
  const out: WireTensor[] = [];
  let off = body.byteOffset;
  for (const s of h.specs) {
    out.push({ name: s.name, dtype: s.dtype, shape: s.shape, data: viewOf(s.dtype, body.buffer as ArrayBuffer, off, sizeOf(s.shape)) });
    off += paddedByteLength(s.dtype, s.shape);
  }
  return out;
}

/**
 * A frame body's buffer, not zero-filled (every byte is written before it is read):
 * `Buffer.allocUnsafe` gives memory aligned to 8 bytes, from Node's pool below 4 KB.
 */
export function bodyBuffer(bytes: number): Uint8Array {
  return Buffer.allocUnsafe(bytes);
}

/**
 * Decodes a frame carried by one message. The bytes are copied into a buffer of the
 * frame's own: socket buffers may be unaligned, and some backends keep the arrays they get.
 * `owned` data (a buffer nobody else holds, as the direct path reads a frame into) become the
 * frame's body as they are when aligned to 8 bytes.
 */
export function decodeSingle(h: FrameHeader, data: Uint8Array, owned = false): Frame {
  if (h.chunks !== 1) throw new FrameError(`chunk ${h.chunk}/${h.chunks} decoded as a whole frame`);
  if (data.byteLength !== h.totalBytes) {
    throw new FrameError(`${data.byteLength} bytes received, the headers announce ${h.totalBytes}`);
  }
  let body = data;
  if (!owned || data.byteOffset % 8 !== 0) {
    body = bodyBuffer(data.byteLength);
    body.set(data);
  }
  return { key: h.key, from: h.from, tensors: tensorsFromBody(h, body) };
}
