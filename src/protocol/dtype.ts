/** Tensor dtypes on the wire and their element sizes. */
import { FrameError } from '../errors.js';

/** Dtypes a frame can carry. Bytes are little-endian; bool is one byte per element. */
export const DType = { float32: 'float32', int32: 'int32', bool: 'bool' } as const;
export type DType = (typeof DType)[keyof typeof DType];

/** Typed array of each dtype. */
export type WireArray = Float32Array | Int32Array | Uint8Array;

const SIZE: Record<DType, number> = { float32: 4, int32: 4, bool: 1 };

/** True when `s` is a wire dtype. */
export function isDType(s: string): s is DType {
  return Object.prototype.hasOwnProperty.call(SIZE, s);
}

/** Bytes per element of `dtype`. */
export function bytesPerElement(dtype: DType): number {
  return SIZE[dtype];
}

/** Number of elements of a shape. */
export function sizeOf(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

/** Byte length of a tensor's data, rounded up to a multiple of 4 so the next tensor stays aligned. */
export function paddedByteLength(dtype: DType, shape: readonly number[]): number {
  const raw = sizeOf(shape) * SIZE[dtype];
  // Arithmetic, not `(raw + 3) & ~3`: bitwise operators wrap above 2^31 bytes.
  return Math.ceil(raw / 4) * 4;
}

/** A typed-array view of `length` elements of `dtype` over `buffer` at an aligned `offset`. */
export function viewOf(dtype: DType, buffer: ArrayBuffer, offset: number, length: number): WireArray {
  switch (dtype) {
    case 'float32':
      return new Float32Array(buffer, offset, length);
    case 'int32':
      return new Int32Array(buffer, offset, length);
    case 'bool':
      return new Uint8Array(buffer, offset, length);
    default:
      throw new FrameError(`unknown dtype ${String(dtype)}`);
  }
}

/** True on little-endian hosts, where typed arrays already hold wire order. */
export const HOST_IS_LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;

/** Reverses each 4-byte group of `bytes` in place (wire order <-> big-endian host order). */
export function swap32(bytes: Uint8Array): void {
  for (let i = 0; i + 3 < bytes.length; i += 4) {
    const a = bytes[i]!;
    const b = bytes[i + 1]!;
    bytes[i] = bytes[i + 3]!;
    bytes[i + 1] = bytes[i + 2]!;
    bytes[i + 2] = b;
    bytes[i + 3] = a;
  }
}
