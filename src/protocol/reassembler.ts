/** Reassembles chunked frames into one preallocated buffer per frame. */
import { ConflictingFrameError, DuplicateKeyError, FrameError } from '../errors.js';
import { bodyBuffer, chunkLength, decodeSingle, tensorsFromBody, type Frame, type FrameHeader } from './frame.js';
import { formatKey } from './key.js';

interface Partial {
  readonly header: FrameHeader;
  readonly body: Uint8Array;
  readonly got: Uint8Array;
  count: number;
}

/**
 * Collects the chunks of frames. `accept` returns the whole frame when its last chunk
 * arrives, `null` while chunks are missing, and throws a FrameError or DuplicateKeyError
 * for a chunk that does not fit. A chunk received again with other bytes is a
 * ConflictingFrameError: one of the two is not what the sender computed (a seal covers the
 * headers, not the bytes), so the frame is dropped and its further chunks refused; it is
 * never delivered. At most `maxPartial` frames are assembled at once.
 */
export class Reassembler {
  private readonly partial = new Map<string, Partial>();
  /** Frames dropped for a conflicting chunk, by id, with their step (forgotten with it). */
  private readonly conflicted = new Map<string, number>();
  private pendingBytes = 0;

  /**
   * @param maxPartial frames assembled at once
   * @param maxPendingBytes bytes all partial frames may hold together (each is allocated whole on its first chunk)
   */
  constructor(
    private readonly maxPartial = 64,
    private readonly maxPendingBytes = 1024 * 1024 * 1024,
  ) {}

  /** Number of frames with chunks still missing. */
  get pending(): number {
    return this.partial.size;
  }

  /** `owned`: the data are a buffer of their own (see decodeSingle), which a whole frame in one message keeps. */
  accept(h: FrameHeader, data: Uint8Array, owned = false): Frame | null {
    const len = chunkLength(h);
    if (data.byteLength !== len) {
      throw new FrameError(`chunk ${h.chunk}/${h.chunks} of ${formatKey(h.key)} has ${data.byteLength} bytes, expected ${len}`);
    }
    if (h.chunks === 1) return decodeSingle(h, data, owned);
    const name = formatKey(h.key);
    // Keyed by sender too: two stages may send frames of the same key at once (state dumps).
    const id = `${name} from ${h.from}`;
    if (this.conflicted.has(id)) throw new FrameError(`chunk ${h.chunk}/${h.chunks} of ${name}: the frame was dropped for a conflicting chunk`);
    let p = this.partial.get(id);
    if (!p) {
      if (this.partial.size >= this.maxPartial) {
        throw new FrameError(`${this.maxPartial} frames are already being reassembled; ${name} refused`);
      }
      if (this.pendingBytes + h.totalBytes > this.maxPendingBytes) {
        throw new FrameError(`${name} needs ${h.totalBytes} bytes and ${this.pendingBytes} are already held by partial frames (limit ${this.maxPendingBytes})`);
      }
      p = { header: h, body: bodyBuffer(h.totalBytes), got: new Uint8Array(h.chunks), count: 0 };
      this.partial.set(id, p);
      this.pendingBytes += h.totalBytes;
    } else if (p.header.chunks !== h.chunks || p.header.chunkSize !== h.chunkSize || p.header.tensorsSpec !== h.tensorsSpec) {
      throw new FrameError(`chunk ${h.chunk} of ${name} disagrees with the frame's earlier chunks`);
    }
    if (p.got[h.chunk]) {
      const at = h.chunk * h.chunkSize;
      if (!sameBytes(p.body.subarray(at, at + len), data)) {
        this.forget(id);
        this.conflicted.set(id, h.key.step);
        throw new ConflictingFrameError(`chunk ${h.chunk}/${h.chunks} of ${name} from ${h.from}: received twice with different bytes; the frame is not used`);
      }
      throw new DuplicateKeyError(`chunk ${h.chunk}/${h.chunks} of ${name} received twice`);
    }
    p.body.set(data, h.chunk * h.chunkSize);
    p.got[h.chunk] = 1;
    p.count++;
    if (p.count < h.chunks) return null;
    this.forget(id);
    return { key: h.key, from: h.from, tensors: tensorsFromBody(p.header, p.body) };
  }

  private forget(id: string): void {
    const p = this.partial.get(id);
    if (!p) return;
    this.pendingBytes -= p.header.totalBytes;
    this.partial.delete(id);
  }

  /** Bytes held by partial frames. */
  get heldBytes(): number {
    return this.pendingBytes;
  }

  /** Forgets the partial frames of every step but `step` (older ones will never complete, later ones are not due). */
  keepOnly(step: number): void {
    for (const [id, p] of this.partial) if (p.header.key.step !== step) this.forget(id);
    for (const [id, s] of this.conflicted) if (s !== step) this.conflicted.delete(id);
  }

  /** Forgets every partial frame. */
  clear(): void {
    this.partial.clear();
    this.conflicted.clear();
    this.pendingBytes = 0;
  }
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.byteLength === b.byteLength && Buffer.compare(a, b) === 0;
}
