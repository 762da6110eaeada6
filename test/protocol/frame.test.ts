import { describe, expect, it } from 'vitest';
import { ConflictingFrameError, DuplicateKeyError, FrameError } from '../../src/errors.js';
import { bytesPerElement, paddedByteLength, sizeOf, type DType, type WireArray } from '../../src/protocol/dtype.js';
import {
  H,
  chunkLength,
  decodeSingle,
  encodeFrame,
  encodeKeyOnly,
  frameByteLength,
  parseHeader,
  parseSpecs,
  tensorsFromBody,
  type Frame,
  type FrameHeader,
  type HeaderGetter,
  type WireMessage,
  type WireTensor,
} from '../../src/protocol/frame.js';
import type { Key } from '../../src/protocol/key.js';
import { Phase } from '../../src/protocol/phase.js';
import { Reassembler } from '../../src/protocol/reassembler.js';

const MAX = 1 << 30;
const KEY: Key = { job: 'mnist', step: 7, microbatch: 3, phase: Phase.FORWARD };

/** Deterministic, distinguishable contents for a tensor (no randomness, so failures reproduce). */
function fill(dtype: DType, n: number, seed = 1): WireArray {
  switch (dtype) {
    case 'float32':
      return Float32Array.from({ length: n }, (_, i) => (i + seed) * 1.25 - 3.5);
    case 'int32':
      return Int32Array.from({ length: n }, (_, i) => (i + seed) * 7919 * (i % 2 ? -1 : 1));
    case 'bool':
      return Uint8Array.from({ length: n }, (_, i) => (i + seed) % 2);
  }
}

function tensor(name: string, dtype: DType, shape: number[], seed = 1): WireTensor {
  return { name, dtype, shape, data: fill(dtype, sizeOf(shape), seed) };
}

function frameOf(tensors: WireTensor[], key: Key = KEY, from = 'stage0'): Frame {
  return { key, from, tensors };
}

/** A header getter over a copy of an encoded message's headers, with `patch` applied (undefined deletes). */
function getter(headers: Record<string, string>, patch: Record<string, string | undefined> = {}): HeaderGetter {
  const record: Record<string, string> = { ...headers };
  for (const [k, v] of Object.entries(patch)) {
    if (v === undefined) delete record[k];
    else record[k] = v;
  }
  return (h) => record[h];
}

function headerOf(m: WireMessage, subjectPhase: string = KEY.phase, maxFrameBytes = MAX): FrameHeader {
  return parseHeader(getter(m.headers), subjectPhase, maxFrameBytes);
}

/** Runs `fn`, expecting it to throw an instance of `cls` whose message matches `re`. */
function expectThrow(fn: () => unknown, cls: new (...args: never[]) => Error, re: RegExp): Error {
  let caught: unknown;
  try {
    fn();
  } catch (err) {
    caught = err;
  }
  expect(caught, 'expected a throw').toBeInstanceOf(cls);
  const err = caught as Error;
  expect(err.message).toMatch(re);
  return err;
}

const frameError = (fn: () => unknown, re: RegExp): Error => expectThrow(fn, FrameError, re);

/** Raw little-endian bytes of the elements of a typed array. */
function bytesOf(a: WireArray): number[] {
  return Array.from(new Uint8Array(a.buffer, a.byteOffset, a.byteLength));
}

function expectSameTensors(got: readonly WireTensor[], want: readonly WireTensor[]): void {
  expect(got.map((t) => t.name)).toEqual(want.map((t) => t.name));
  got.forEach((t, i) => {
    const w = want[i]!;
    expect(t.dtype).toBe(w.dtype);
    expect(t.shape).toEqual(w.shape);
    expect(t.data.constructor).toBe(w.data.constructor);
    expect(t.data.length).toBe(w.data.length);
    // Byte comparison: catches NaN payloads and -0 that a numeric toEqual would gloss over.
    expect(bytesOf(t.data)).toEqual(bytesOf(w.data));
  });
}

function concat(parts: readonly Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.byteLength, 0));
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.byteLength;
  }
  return out;
}

/** Feeds `messages` to a fresh Reassembler in the given order; returns what the last accept gives. */
function reassemble(messages: readonly WireMessage[], order: readonly number[] = messages.map((_, i) => i)): Frame {
  const r = new Reassembler();
  let out: Frame | null = null;
  order.forEach((i, n) => {
    const m = messages[i]!;
    out = r.accept(headerOf(m), m.data);
    if (n < order.length - 1) expect(out).toBeNull();
  });
  expect(r.pending).toBe(0);
  expect(out).not.toBeNull();
  return out!;
}

describe('dtype sizes', () => {
  it('pads each tensor to a multiple of 4 bytes', () => {
    expect(bytesPerElement('float32')).toBe(4);
    expect(bytesPerElement('int32')).toBe(4);
    expect(bytesPerElement('bool')).toBe(1);
    expect(sizeOf([])).toBe(1);
    expect(sizeOf([0, 3])).toBe(0);
    expect(sizeOf([2, 3, 4])).toBe(24);
    expect(paddedByteLength('bool', [1])).toBe(4);
    expect(paddedByteLength('bool', [3])).toBe(4);
    expect(paddedByteLength('bool', [4])).toBe(4);
    expect(paddedByteLength('bool', [5])).toBe(8);
    expect(paddedByteLength('bool', [0])).toBe(0);
    expect(paddedByteLength('float32', [])).toBe(4);
    expect(paddedByteLength('int32', [2, 3])).toBe(24);
  });

  it('stays exact for tensors of 2 GiB and more (no 32-bit wrap-around)', () => {
    expect(paddedByteLength('float32', [2 ** 29])).toBe(2 ** 31);
    expect(paddedByteLength('float32', [2 ** 30 + 1])).toBe(2 ** 32 + 4);
    expect(paddedByteLength('bool', [2 ** 32 + 1])).toBe(2 ** 32 + 4);
    expect(frameByteLength([{ name: 'x', dtype: 'float32', shape: [2 ** 30 + 1] }])).toBe(2 ** 32 + 4);
  });
});

describe('encodeFrame / parseHeader / decodeSingle round trips', () => {
  const cases: Array<[string, WireTensor[]]> = [];
  for (const dtype of ['float32', 'int32', 'bool'] as const) {
    for (const shape of [[], [0, 3], [1], [3], [2, 3, 4]]) {
      cases.push([`${dtype} [${shape.join(',')}]`, [tensor('t', dtype, shape)]]);
    }
  }
  cases.push(['bool [3] then float32 [2] (padding between)', [tensor('b', 'bool', [3]), tensor('f', 'float32', [2], 5)]]);
  cases.push([
    'bool, int32, bool, float32 scalar, empty, float32',
    [
      tensor('y0', 'bool', [5]),
      tensor('x1', 'int32', [2, 2], 3),
      tensor('m', 'bool', [1, 1], 2),
      tensor('s', 'float32', []),
      tensor('e', 'float32', [0, 3]),
      tensor('x_last', 'float32', [3, 1], 9),
    ],
  ]);

  it.each(cases)('%s', (_label, tensors) => {
    const frame = frameOf(tensors);
    const msgs = encodeFrame(frame, 1 << 20);
    expect(msgs).toHaveLength(1);
    const m = msgs[0]!;
    const total = tensors.reduce((n, t) => n + paddedByteLength(t.dtype, t.shape), 0);
    expect(m.data.byteLength).toBe(total);
    expect(m.headers[H.bytes]).toBe(String(total));
    expect(m.headers[H.chunk]).toBe(`0/1/${total}`);

    const h = headerOf(m);
    expect(h.key).toEqual(KEY);
    expect(h.from).toBe('stage0');
    expect(h.totalBytes).toBe(total);
    expect(h.chunk).toBe(0);
    expect(h.chunks).toBe(1);
    expect(h.specs).toEqual(tensors.map((t) => ({ name: t.name, dtype: t.dtype, shape: t.shape })));

    const decoded = decodeSingle(h, m.data);
    expect(decoded.key).toEqual(KEY);
    expect(decoded.from).toBe('stage0');
    expectSameTensors(decoded.tensors, tensors);
    // The Reassembler takes single-chunk frames as well.
    expectSameTensors(new Reassembler().accept(h, m.data)!.tensors, tensors);
  });

  it('keeps an owned, aligned buffer as the body, and copies any other', () => {
    const tensors = [tensor('a0', 'float32', [4, 6])];
    const m = encodeFrame(frameOf(tensors), 1 << 20)[0]!;
    const h = headerOf(m);
    /** The message's bytes at `offset` of a buffer of their own. */
    const at = (offset: number) => {
      const view = new Uint8Array(new ArrayBuffer(m.data.byteLength + 16), offset, m.data.byteLength);
      view.set(m.data);
      return view;
    };
    // Owned and aligned: the frame's tensor is a view of that very buffer.
    const mine = at(8);
    const kept = new Reassembler().accept(h, mine, true)!.tensors[0]!;
    expect(kept.data.buffer).toBe(mine.buffer);
    expectSameTensors([kept], tensors);
    // Not owned (a socket's buffer), or owned but not aligned to 8: copied into a body of the frame's own.
    for (const [data, owned] of [
      [at(8), false],
      [at(4), true],
    ] as const) {
      const copied = decodeSingle(h, data, owned).tensors[0]!;
      expect(copied.data.buffer).not.toBe(data.buffer);
      expectSameTensors([copied], tensors);
    }
  });

  it('writes the documented headers', () => {
    const m = encodeFrame(frameOf([tensor('x', 'float32', [32, 784]), tensor('y', 'float32', [32, 10])]), 1 << 20)[0]!;
    expect(m.headers).toEqual({
      'Troupe-Job': 'mnist',
      'Troupe-Step': '7',
      'Troupe-Mb': '3',
      'Troupe-Phase': 'FORWARD',
      'Troupe-From': 'stage0',
      'Troupe-Tensors': 'x:float32:32,784;y:float32:32,10',
      'Troupe-Bytes': String(32 * 784 * 4 + 32 * 10 * 4),
      'Troupe-Chunk': `0/1/${32 * 784 * 4 + 32 * 10 * 4}`,
    });
  });

  it('lays tensors out little-endian, each padded to 4 bytes with zeros', () => {
    const b = { name: 'b', dtype: 'bool', shape: [3], data: Uint8Array.from([1, 0, 1]) } as const;
    const i = { name: 'i', dtype: 'int32', shape: [1], data: Int32Array.from([0x01020304]) } as const;
    const f = { name: 'f', dtype: 'float32', shape: [1], data: Float32Array.from([1]) } as const;
    const b2 = { name: 'b2', dtype: 'bool', shape: [1], data: Uint8Array.from([1]) } as const;
    const m = encodeFrame(frameOf([b, i, f, b2]), 1 << 20)[0]!;
    // bool[3] + pad, int32 0x01020304 LE, float32 1.0 = 0x3f800000 LE, bool[1] + 3 pad.
    expect(Array.from(m.data)).toEqual([1, 0, 1, 0, 4, 3, 2, 1, 0, 0, 0x80, 0x3f, 1, 0, 0, 0]);
  });

  it('keeps special float32 and extreme int32 values bit for bit', () => {
    const special = Float32Array.from([NaN, -0, 0, Infinity, -Infinity, 1e-45, -3.4028234663852886e38, Math.PI]);
    const ints = Int32Array.from([-2147483648, 2147483647, -1, 0]);
    const bools = Uint8Array.from([0, 1, 255]);
    const tensors: WireTensor[] = [
      { name: 'f', dtype: 'float32', shape: [8], data: special },
      { name: 'i', dtype: 'int32', shape: [4], data: ints },
      { name: 'b', dtype: 'bool', shape: [3], data: bools },
    ];
    const m = encodeFrame(frameOf(tensors), 1 << 20)[0]!;
    const got = decodeSingle(headerOf(m), m.data).tensors;
    expectSameTensors(got, tensors);
    expect(Number.isNaN(got[0]!.data[0])).toBe(true);
    expect(Object.is(got[0]!.data[1], -0)).toBe(true);
    expect(Array.from(got[1]!.data)).toEqual([-2147483648, 2147483647, -1, 0]);
    expect(Array.from(got[2]!.data)).toEqual([0, 1, 255]);
  });

  it('returns typed arrays of the right class with the shape given (scalar stays [])', () => {
    const tensors = [tensor('s', 'float32', []), tensor('i', 'int32', [2]), tensor('b', 'bool', [0, 3])];
    const m = encodeFrame(frameOf(tensors), 64)[0]!;
    expect(m.headers[H.tensors]).toBe('s:float32:;i:int32:2;b:bool:0,3');
    const got = decodeSingle(headerOf(m), m.data).tensors;
    expect(got[0]!.shape).toEqual([]);
    expect(got[0]!.data).toBeInstanceOf(Float32Array);
    expect(got[0]!.data.length).toBe(1);
    expect(got[1]!.data).toBeInstanceOf(Int32Array);
    expect(got[2]!.shape).toEqual([0, 3]);
    expect(got[2]!.data).toBeInstanceOf(Uint8Array);
    expect(got[2]!.data.length).toBe(0);
  });

  it('encodes a frame of no tensors, and a key-only UPDATE message', () => {
    const m = encodeFrame(frameOf([]), 16);
    expect(m).toHaveLength(1);
    expect(m[0]!.data.byteLength).toBe(0);
    expect(m[0]!.headers[H.tensors]).toBe('');
    expect(m[0]!.headers[H.bytes]).toBe('0');
    expect(decodeSingle(headerOf(m[0]!), m[0]!.data).tensors).toEqual([]);

    const key: Key = { job: 'j', step: 12, microbatch: 0, phase: Phase.UPDATE };
    const u = encodeKeyOnly(key, 'sched');
    expect(u.data.byteLength).toBe(0);
    expect(u.headers[H.chunk]).toBe('0/1/0');
    const h = parseHeader(getter(u.headers), 'UPDATE', 0);
    expect(h.key).toEqual(key);
    expect(h.from).toBe('sched');
    expect(h.specs).toEqual([]);
  });

  it('treats an absent Troupe-Tensors header as no tensors', () => {
    const m = encodeFrame(frameOf([]), 16)[0]!;
    const h = parseHeader(getter(m.headers, { [H.tensors]: undefined }), KEY.phase, MAX);
    expect(h.specs).toEqual([]);
    expect(h.totalBytes).toBe(0);
  });

  it('accepts a frame exactly at maxFrameBytes', () => {
    const m = encodeFrame(frameOf([tensor('x', 'float32', [2, 3])]), 1 << 20)[0]!;
    expect(headerOf(m, KEY.phase, 24).totalBytes).toBe(24);
  });
});

describe('encodeFrame refusals', () => {
  it('refuses chunk sizes below 4 bytes or not integers', () => {
    const f = frameOf([tensor('x', 'float32', [4])]);
    frameError(() => encodeFrame(f, 3), /chunk size 3/);
    frameError(() => encodeFrame(f, 0), /chunk size 0/);
    frameError(() => encodeFrame(f, 8.5), /chunk size 8.5/);
    frameError(() => encodeFrame(f, NaN), /chunk size NaN/);
    expect(encodeFrame(f, 4)).toHaveLength(4);
  });

  it('refuses bad tensor names', () => {
    for (const name of ['', 'a b', 'a:b', 'a;b', 'a,b', 'x'.repeat(65), 'é']) {
      frameError(() => encodeFrame(frameOf([{ name, dtype: 'float32', shape: [1], data: new Float32Array(1) }]), 64), /tensor name/);
    }
    expect(encodeFrame(frameOf([{ name: 'x'.repeat(64), dtype: 'bool', shape: [1], data: new Uint8Array(1) }]), 64)).toHaveLength(1);
  });

  it('refuses data that does not fill the shape', () => {
    frameError(() => encodeFrame(frameOf([{ name: 'x', dtype: 'float32', shape: [2, 3], data: new Float32Array(5) }]), 64), /tensor x: 5 elements .*\[2,3\]/);
    frameError(() => encodeFrame(frameOf([{ name: 's', dtype: 'int32', shape: [], data: new Int32Array(0) }]), 64), /tensor s: 0 elements/);
  });
});

describe('chunking', () => {
  const tensors = [tensor('b', 'bool', [3]), tensor('x', 'int32', [5], 4), tensor('y', 'float32', [2, 3], 2), tensor('z', 'bool', [6], 3)];
  const total = 4 + 20 + 24 + 8; // 56
  const whole = encodeFrame(frameOf(tensors), 1 << 20)[0]!;

  it.each([4, 5, 7, 8, 13, 55, 56, 57, 1000])('size %i: ceil(total/size) messages, bodies <= size, same bytes', (size) => {
    expect(frameByteLength(tensors)).toBe(total);
    const msgs = encodeFrame(frameOf(tensors), size);
    const n = Math.ceil(total / size);
    expect(msgs).toHaveLength(n);
    const nominal = n === 1 ? total : size;
    msgs.forEach((m, i) => {
      expect(m.data.byteLength).toBeLessThanOrEqual(size);
      expect(m.data.byteLength).toBe(i < n - 1 ? size : total - size * (n - 1));
      expect(m.headers).toEqual({ ...whole.headers, [H.chunk]: `${i}/${n}/${nominal}` });
      const h = headerOf(m);
      expect(h.chunk).toBe(i);
      expect(h.chunks).toBe(n);
      expect(chunkLength(h)).toBe(m.data.byteLength);
    });
    // The chunk bodies, concatenated, are the unchunked body.
    expect(Array.from(concat(msgs.map((m) => m.data)))).toEqual(Array.from(whole.data));
    expectSameTensors(reassemble(msgs).tensors, tensors);
  });

  it('reassembles byte-identical frames from chunks in any order', () => {
    const big = [tensor('x', 'float32', [2, 3, 4]), tensor('m', 'bool', [3], 2), tensor('i', 'int32', [3, 3], 5)];
    const msgs = encodeFrame(frameOf(big), 10); // 96 + 4 + 36 = 136 bytes -> 14 chunks
    expect(msgs).toHaveLength(14);
    const n = msgs.length;
    const orders = [
      Array.from({ length: n }, (_, i) => n - 1 - i), // reversed
      Array.from({ length: n }, (_, i) => (i * 5) % n), // 5 is coprime with 14: a permutation
      [n - 1, ...Array.from({ length: n - 1 }, (_, i) => i)], // short last chunk first
    ];
    for (const order of orders) {
      expect(new Set(order).size).toBe(n);
      const f = reassemble(msgs, order);
      expect(f.key).toEqual(KEY);
      expect(f.from).toBe('stage0');
      expectSameTensors(f.tensors, big);
    }
  });

  it('keeps several frames apart while reassembling them interleaved', () => {
    const a = encodeFrame(frameOf([tensor('x', 'float32', [6], 1)], { ...KEY, microbatch: 0 }), 8);
    const b = encodeFrame(frameOf([tensor('x', 'float32', [6], 9)], { ...KEY, microbatch: 1 }), 8);
    const r = new Reassembler();
    expect(r.accept(headerOf(a[0]!), a[0]!.data)).toBeNull();
    expect(r.accept(headerOf(b[2]!), b[2]!.data)).toBeNull();
    expect(r.accept(headerOf(b[0]!), b[0]!.data)).toBeNull();
    expect(r.pending).toBe(2);
    expect(r.accept(headerOf(a[2]!), a[2]!.data)).toBeNull();
    const fb = r.accept(headerOf(b[1]!), b[1]!.data);
    expect(fb?.key.microbatch).toBe(1);
    expectSameTensors(fb!.tensors, [tensor('x', 'float32', [6], 9)]);
    expect(r.pending).toBe(1);
    const fa = r.accept(headerOf(a[1]!), a[1]!.data);
    expectSameTensors(fa!.tensors, [tensor('x', 'float32', [6], 1)]);
    expect(r.pending).toBe(0);
  });

  it('decodeSingle refuses one chunk of a chunked frame', () => {
    const msgs = encodeFrame(frameOf([tensor('x', 'float32', [4])]), 8);
    frameError(() => decodeSingle(headerOf(msgs[0]!), msgs[0]!.data), /chunk 0\/2 decoded as a whole frame/);
  });
});

describe('decoded tensors own their bytes', () => {
  it('after decodeSingle, writes to the received buffer or the sent tensor do not show', () => {
    const src = tensor('x', 'float32', [4]);
    const before = Array.from(src.data);
    const m = encodeFrame(frameOf([src]), 64)[0]!;
    const got = decodeSingle(headerOf(m), m.data).tensors[0]!;
    m.data.fill(0xff);
    src.data.fill(0);
    expect(Array.from(got.data)).toEqual(before);
    expect(got.data.buffer).not.toBe(m.data.buffer);
  });

  it('after reassembly, writes to the chunks do not show', () => {
    const src = tensor('x', 'int32', [10]);
    const before = Array.from(src.data);
    const msgs = encodeFrame(frameOf([src]), 12);
    // Copies, so that changing one chunk after accept cannot reach another chunk's source bytes.
    const chunks = msgs.map((m) => ({ h: headerOf(m), data: new Uint8Array(m.data) }));
    const r = new Reassembler();
    let out: Frame | null = null;
    for (const c of chunks) {
      out = r.accept(c.h, c.data);
      c.data.fill(0xee); // mutate right after handing it over
    }
    expect(Array.from(out!.tensors[0]!.data)).toEqual(before);
  });

  it('decodes an unaligned Uint8Array view (offset 1 of a bigger buffer)', () => {
    const tensors = [tensor('x', 'float32', [2, 3]), tensor('b', 'bool', [3]), tensor('i', 'int32', [2], 7)];
    const m = encodeFrame(frameOf(tensors), 1 << 20)[0]!;
    const big = new Uint8Array(m.data.byteLength + 7);
    big.set(m.data, 1);
    const view = big.subarray(1, 1 + m.data.byteLength);
    expect(view.byteOffset % 4).toBe(1);
    const got = decodeSingle(headerOf(m), view).tensors;
    expectSameTensors(got, tensors);
    big.fill(0);
    expectSameTensors(got, tensors);
  });

  it('decodes from Node Buffers at odd offsets, whole and chunked', () => {
    const tensors = [tensor('x', 'float32', [3, 3]), tensor('i', 'int32', [5], 3)];
    const [whole] = encodeFrame(frameOf(tensors), 1 << 20);
    const buf = Buffer.alloc(whole!.data.byteLength + 3);
    buf.set(whole!.data, 3);
    const sub = buf.subarray(3);
    expect(sub.byteOffset % 4).not.toBe(0);
    expectSameTensors(decodeSingle(headerOf(whole!), sub).tensors, tensors);

    const msgs = encodeFrame(frameOf(tensors), 9);
    const r = new Reassembler();
    let out: Frame | null = null;
    msgs.forEach((m, i) => {
      const b = Buffer.alloc(m.data.byteLength + 1 + i);
      b.set(m.data, 1 + i);
      out = r.accept(headerOf(m), b.subarray(1 + i));
    });
    expectSameTensors(out!.tensors, tensors);
  });

  it('tensorsFromBody checks the body length', () => {
    const m = encodeFrame(frameOf([tensor('x', 'float32', [3])]), 64)[0]!;
    frameError(() => tensorsFromBody(headerOf(m), new Uint8Array(8)), /body of 8 bytes, expected 12/);
  });
});

describe('malformed headers', () => {
  const msg = encodeFrame(frameOf([tensor('x', 'float32', [2, 3]), tensor('b', 'bool', [3])]), 1 << 20)[0]!;
  const total = 28;
  const parse = (patch: Record<string, string | undefined>, subject: string = KEY.phase, max = MAX): FrameHeader =>
    parseHeader(getter(msg.headers, patch), subject, max);

  it('the unpatched header parses (so each refusal below is due to its patch)', () => {
    expect(parse({}).totalBytes).toBe(total);
  });

  it.each(Object.values(H))('missing %s', (name) => {
    if (name === H.tensors) {
      // Absent tensors mean "no tensors": then Troupe-Bytes no longer matches.
      frameError(() => parse({ [name]: undefined }), /Troupe-Bytes 28 does not match the 0 bytes/);
      return;
    }
    const err = frameError(() => parse({ [name]: undefined }), new RegExp(`header ${name} is missing`));
    expect((err as FrameError).code).toBe('FRAME');
    frameError(() => parse({ [name]: '' }), new RegExp(`header ${name} is missing`));
  });

  it.each(['1.5', '-1', 'abc', '07', '1e3', ' 7', '7 ', '0x7', '12345678901234567'])('non-integer Troupe-Step "%s"', (v) => {
    frameError(() => parse({ [H.step]: v }), /header Troupe-Step .* is not a non-negative integer/);
  });

  it.each(['-3', '3.0', 'three'])('non-integer Troupe-Mb "%s"', (v) => {
    frameError(() => parse({ [H.mb]: v }), /header Troupe-Mb .* is not a non-negative integer/);
  });

  it('reads step and microbatch 0 and large steps', () => {
    expect(parse({ [H.step]: '0', [H.mb]: '0' }).key).toMatchObject({ step: 0, microbatch: 0 });
    expect(parse({ [H.step]: '123456789012' }).key.step).toBe(123456789012);
  });

  it.each(['SIDEWAYS', 'forward', 'FORWARD ', 'toString'])('unknown phase "%s"', (v) => {
    frameError(() => parse({ [H.phase]: v }, v), /unknown phase/);
  });

  it('phase that does not match the subject', () => {
    frameError(() => parse({}, Phase.BACKWARD), /phase FORWARD sent on the BACKWARD subject/);
    frameError(() => parse({ [H.phase]: Phase.INPUT }), /phase INPUT sent on the FORWARD subject/);
  });

  it.each([
    ['x:float64:2,3;b:bool:3', /unknown dtype "float64"/],
    ['x:Float32:2,3;b:bool:3', /unknown dtype "Float32"/],
    ['x:float32:2,3;b:toString:3', /unknown dtype "toString"/],
  ])('unknown dtype in %s', (spec, re) => {
    frameError(() => parse({ [H.tensors]: spec }), re);
  });

  it.each(['2,-3', '2,,3', '2.5,3', 'a,3', '2,3,', ',2', '2, 3', '02,3'])('bad dimension in x:float32:%s', (dims) => {
    frameError(() => parse({ [H.tensors]: `x:float32:${dims};b:bool:3` }), /tensor x has a bad dimension/);
  });

  it.each([
    ['x:float32', /tensor spec "x:float32" is not name:dtype:shape/],
    ['x:float32:2,3:4', /tensor spec "x:float32:2,3:4" is not name:dtype:shape/],
    ['x:float32:2,3;', /tensor spec "" is not name:dtype:shape/],
    ['bad name:float32:6', /tensor name "bad name" is invalid/],
    [':float32:6', /tensor name "" is invalid/],
  ])('malformed Troupe-Tensors %s', (spec, re) => {
    frameError(() => parse({ [H.tensors]: spec }), re);
  });

  it('parseSpecs reads the documented form', () => {
    expect(parseSpecs('x:float32:32,784;y:bool:;z:int32:0')).toEqual([
      { name: 'x', dtype: 'float32', shape: [32, 784] },
      { name: 'y', dtype: 'bool', shape: [] },
      { name: 'z', dtype: 'int32', shape: [0] },
    ]);
    expect(parseSpecs('')).toEqual([]);
  });

  it('Troupe-Bytes that does not match the tensors', () => {
    frameError(() => parse({ [H.bytes]: '27' }), /Troupe-Bytes 27 does not match the 28 bytes/);
    frameError(() => parse({ [H.bytes]: '29' }), /Troupe-Bytes 29 does not match the 28 bytes/);
    frameError(() => parse({ [H.bytes]: 'many' }), /header Troupe-Bytes "many"/);
    // Tensors changed, bytes left alone: bool[3] padded is 4 bytes, bool[5] is 8.
    frameError(() => parse({ [H.tensors]: 'x:float32:2,3;b:bool:5' }), /Troupe-Bytes 28 does not match the 32 bytes/);
    // A dimension so large that a 32-bit padding computation would wrap it to 4 bytes.
    frameError(
      () => parse({ [H.tensors]: `x:float32:${2 ** 30 + 1}`, [H.bytes]: '4', [H.chunk]: '0/1/4' }),
      /Troupe-Bytes 4 does not match the 4294967300 bytes/,
    );
  });

  it('frames over maxFrameBytes', () => {
    frameError(() => parse({}, KEY.phase, total - 1), /frame of 28 bytes is over the 27-byte limit/);
    frameError(() => parse({}, KEY.phase, 0), /over the 0-byte limit/);
  });

  it.each(['0/1', '0/1/28/0', 'a/1/28', '0/1/-28', '-0/1/28', '0;1;28', '0/1/28 ', '/1/28'])('Troupe-Chunk "%s" not index/count/size', (v) => {
    frameError(() => parse({ [H.chunk]: v }), /header Troupe-Chunk .* is not index\/count\/size/);
  });

  it('chunk index out of range', () => {
    frameError(() => parse({ [H.chunk]: '1/1/28' }), /chunk 1 of 1 is out of range/);
    frameError(() => parse({ [H.chunk]: '0/0/28' }), /chunk 0 of 0 is out of range/);
    frameError(() => parse({ [H.chunk]: '7/3/10' }), /chunk 7 of 3 is out of range/);
  });

  it('chunk count and size that cannot hold the frame', () => {
    // 28 bytes in chunks of 10 takes 3 chunks, not 2 or 4.
    expect(parse({ [H.chunk]: '2/3/10' }).chunkSize).toBe(10);
    frameError(() => parse({ [H.chunk]: '0/2/10' }), /2 chunks of 10 bytes cannot hold 28 bytes/);
    frameError(() => parse({ [H.chunk]: '0/4/10' }), /4 chunks of 10 bytes cannot hold 28 bytes/);
    // Chunks below 4 bytes are refused even when the arithmetic fits: 28 / 2 = 14 chunks.
    frameError(() => parse({ [H.chunk]: '0/14/2' }), /14 chunks of 2 bytes cannot hold 28 bytes/);
    frameError(() => parse({ [H.chunk]: '0/2/0' }), /2 chunks of 0 bytes/);
    // A single chunk must announce the whole frame as its size.
    frameError(() => parse({ [H.chunk]: '0/1/27' }), /single chunk claims size 27 for 28 bytes/);
    frameError(() => parse({ [H.chunk]: '0/1/65536' }), /single chunk claims size 65536 for 28 bytes/);
  });

  it('wrong body byte length', () => {
    const h = parse({});
    frameError(() => decodeSingle(h, msg.data.subarray(0, 27)), /27 bytes received, the headers announce 28/);
    frameError(() => decodeSingle(h, new Uint8Array(32)), /32 bytes received, the headers announce 28/);
    frameError(() => new Reassembler().accept(h, msg.data.subarray(0, 24)), /chunk 0\/1 of mnist\/7\/3\/FORWARD has 24 bytes, expected 28/);
  });
});

describe('Reassembler refusals and bookkeeping', () => {
  const x = tensor('x', 'float32', [10]); // 40 bytes
  const by16 = encodeFrame(frameOf([x]), 16); // 3 chunks: 16, 16, 8
  const by20 = encodeFrame(frameOf([x]), 20); // 2 chunks: 20, 20

  it('a chunk with the wrong byte length', () => {
    const r = new Reassembler();
    frameError(() => r.accept(headerOf(by16[0]!), by16[0]!.data.subarray(0, 8)), /chunk 0\/3 of mnist\/7\/3\/FORWARD has 8 bytes, expected 16/);
    frameError(() => r.accept(headerOf(by16[2]!), by16[1]!.data), /chunk 2\/3 .* has 16 bytes, expected 8/);
    expect(r.pending).toBe(0);
  });

  it('a chunk received twice is a DuplicateKeyError naming the chunk and key', () => {
    const r = new Reassembler();
    expect(r.accept(headerOf(by16[1]!), by16[1]!.data)).toBeNull();
    const err = expectThrow(() => r.accept(headerOf(by16[1]!), by16[1]!.data), DuplicateKeyError, /chunk 1\/3 of mnist\/7\/3\/FORWARD received twice/);
    expect(err).not.toBeInstanceOf(FrameError);
    expect((err as DuplicateKeyError).code).toBe('DUPLICATE_KEY');
    // The duplicate did not count: the frame still completes with the two others.
    expect(r.accept(headerOf(by16[0]!), by16[0]!.data)).toBeNull();
    expectSameTensors(r.accept(headerOf(by16[2]!), by16[2]!.data)!.tensors, [x]);
  });

  it('a chunk received again with other bytes is a conflict: the frame is dropped, never delivered, until its step is forgotten', () => {
    const r = new Reassembler();
    const forged = by16[1]!.data.slice();
    forged[0]! ^= 0xff;
    expect(r.accept(headerOf(by16[1]!), forged)).toBeNull();
    const err = expectThrow(
      () => r.accept(headerOf(by16[1]!), by16[1]!.data),
      ConflictingFrameError,
      /chunk 1\/3 of mnist\/7\/3\/FORWARD from stage0: received twice with different bytes; the frame is not used/,
    );
    expect((err as ConflictingFrameError).code).toBe('CONFLICTING_FRAME');
    expect(r.pending).toBe(0);
    expect(r.heldBytes).toBe(0);
    // Its other chunks, real or forged, are refused: no whole frame of this key comes out.
    for (const c of [0, 2, 1]) frameError(() => r.accept(headerOf(by16[c]!), by16[c]!.data), /dropped for a conflicting chunk/);
    // Once step 7 is forgotten (the stage moved on), the key is free again: its chunks assemble.
    r.keepOnly(8);
    expect(r.accept(headerOf(by16[0]!), by16[0]!.data)).toBeNull();
    expect(r.accept(headerOf(by16[1]!), by16[1]!.data)).toBeNull();
    expectSameTensors(r.accept(headerOf(by16[2]!), by16[2]!.data)!.tensors, [x]);
  });

  it('chunks of one key that disagree on count or size', () => {
    const r = new Reassembler();
    expect(r.accept(headerOf(by16[0]!), by16[0]!.data)).toBeNull();
    frameError(() => r.accept(headerOf(by20[1]!), by20[1]!.data), /chunk 1 of mnist\/7\/3\/FORWARD disagrees with the frame's earlier chunks/);

    // Same count (3), other size: 40 bytes in chunks of 14 are 14, 14, 12.
    const by14 = encodeFrame(frameOf([x]), 14);
    expect(by14).toHaveLength(3);
    frameError(() => r.accept(headerOf(by14[1]!), by14[1]!.data), /chunk 1 of mnist\/7\/3\/FORWARD disagrees/);
    frameError(() => r.accept(headerOf(by14[2]!), by14[2]!.data), /chunk 2 of .* disagrees/);
    expect(r.pending).toBe(1);
  });

  it('chunks of one key that disagree on tensors', () => {
    const asInt = encodeFrame(frameOf([{ name: 'x', dtype: 'int32', shape: [10], data: new Int32Array(10) }]), 16);
    const r = new Reassembler();
    expect(r.accept(headerOf(by16[0]!), by16[0]!.data)).toBeNull();
    frameError(() => r.accept(headerOf(asInt[1]!), asInt[1]!.data), /disagrees/);
    expect(r.pending).toBe(1);
  });

  it('frames of one key from two senders are assembled apart (two stages dumping state at once)', () => {
    const other = encodeFrame(frameOf([x], KEY, 'stage9'), 16);
    const r = new Reassembler();
    expect(r.accept(headerOf(by16[0]!), by16[0]!.data)).toBeNull();
    expect(r.accept(headerOf(other[0]!), other[0]!.data)).toBeNull();
    expect(r.pending).toBe(2);
    expect(r.accept(headerOf(other[1]!), other[1]!.data)).toBeNull();
    expect(r.accept(headerOf(other[2]!), other[2]!.data)?.from).toBe('stage9');
    expect(r.accept(headerOf(by16[1]!), by16[1]!.data)).toBeNull();
    expect(r.accept(headerOf(by16[2]!), by16[2]!.data)?.from).not.toBe('stage9');
    expect(r.pending).toBe(0);
  });

  it('refuses a new frame once maxPartial frames are being assembled', () => {
    const keyed = (mb: number): WireMessage[] => encodeFrame(frameOf([x], { ...KEY, microbatch: mb }), 16);
    const [f0, f1, f2] = [keyed(0), keyed(1), keyed(2)];
    const r = new Reassembler(2);
    expect(r.accept(headerOf(f0[0]!), f0[0]!.data)).toBeNull();
    expect(r.accept(headerOf(f1[0]!), f1[0]!.data)).toBeNull();
    frameError(() => r.accept(headerOf(f2[0]!), f2[0]!.data), /2 frames are already being reassembled; mnist\/7\/2\/FORWARD refused/);
    expect(r.pending).toBe(2);
    // Chunks of frames already under way are still taken.
    expect(r.accept(headerOf(f0[1]!), f0[1]!.data)).toBeNull();
    expect(r.accept(headerOf(f0[2]!), f0[2]!.data)).not.toBeNull();
    // A finished frame frees its place.
    expect(r.pending).toBe(1);
    expect(r.accept(headerOf(f2[0]!), f2[0]!.data)).toBeNull();
    expect(r.pending).toBe(2);
    // Single-chunk frames never take a place.
    const single = encodeFrame(frameOf([x], { ...KEY, microbatch: 5 }), 64)[0]!;
    expect(r.accept(headerOf(single), single.data)).not.toBeNull();
  });

  it('keepOnly forgets other steps, older and later; clear forgets all', () => {
    const at = (step: number): WireMessage[] => encodeFrame(frameOf([x], { ...KEY, step }), 16);
    const [s4, s5, s6, s7] = [at(4), at(5), at(6), at(7)];
    const r = new Reassembler();
    for (const m of [s4[0]!, s5[0]!, s6[0]!, s7[0]!]) expect(r.accept(headerOf(m), m.data)).toBeNull();
    expect(r.heldBytes).toBe(4 * 40);
    r.keepOnly(6);
    expect(r.pending).toBe(1);
    expect(r.heldBytes).toBe(40);
    // Step 6 survives and completes.
    expect(r.accept(headerOf(s6[1]!), s6[1]!.data)).toBeNull();
    expect(r.accept(headerOf(s6[2]!), s6[2]!.data)?.key.step).toBe(6);
    // Step 5 was forgotten: its first chunk can be taken again without a DuplicateKeyError.
    expect(r.accept(headerOf(s5[0]!), s5[0]!.data)).toBeNull();
    r.clear();
    expect(r.pending).toBe(0);
    expect(r.accept(headerOf(s5[0]!), s5[0]!.data)).toBeNull();
  });
});

describe('encode-side checks', () => {
  const key = { job: 'j', step: 1, microbatch: 0, phase: 'FORWARD' as const };
  it('refuses a typed array that cannot carry the dtype', () => {
    expect(() => encodeFrame({ key, from: 't', tensors: [{ name: 'a0', dtype: 'float32', shape: [4], data: new Uint8Array(4) }] }, 1024)).toThrow(
      /Uint8Array cannot carry float32/,
    );
  });
  it('refuses negative or fractional dimensions', () => {
    expect(() => encodeFrame({ key, from: 't', tensors: [{ name: 'a0', dtype: 'float32', shape: [-1, -1], data: new Float32Array(1) }] }, 1024)).toThrow(
      /not a non-negative integer/,
    );
  });
  it('parseHeader refuses a tensor named twice', () => {
    const [m] = encodeFrame(
      {
        key,
        from: 't',
        tensors: [
          { name: 'a0', dtype: 'int32', shape: [1], data: new Int32Array(1) },
          { name: 'a1', dtype: 'int32', shape: [1], data: new Int32Array(1) },
        ],
      },
      1024,
    );
    const h: Record<string, string> = { ...m!.headers, 'Troupe-Tensors': 'a0:int32:1;a0:int32:1' };
    expect(() => parseHeader((k) => h[k], 'FORWARD', 1 << 20)).toThrow(/names a tensor twice/);
  });

  it('refuses a partial frame that would take the held bytes over the limit, and frees them when frames complete', () => {
    const x: WireTensor = { name: 'x', dtype: 'float32', shape: [10], data: new Float32Array(10) };
    const at = (mb: number): WireMessage[] => encodeFrame(frameOf([x], { ...KEY, microbatch: mb }), 16);
    const r = new Reassembler(64, 100); // 40-byte frames: two fit, a third does not
    const [a, b, c] = [at(0), at(1), at(2)];
    expect(r.accept(headerOf(a[0]!), a[0]!.data)).toBeNull();
    expect(r.accept(headerOf(b[0]!), b[0]!.data)).toBeNull();
    frameError(() => r.accept(headerOf(c[0]!), c[0]!.data), /needs 40 bytes and 80 are already held by partial frames \(limit 100\)/);
    for (const m of a.slice(1)) r.accept(headerOf(m), m.data);
    expect(r.heldBytes).toBe(40);
    expect(r.accept(headerOf(c[0]!), c[0]!.data)).toBeNull();
  });
});
