/** Reassembles chunked frames into one preallocated buffer per frame. */
import { DuplicateKeyError, FrameError } from '../errors.js';
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
 * for a chunk that does not fit. At most `maxPartial` frames are assembled at once.
 */
export class Reassembler {
  private readonly partial = new Map<string, Partial>();
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
    if (p.got[h.chunk]) throw new DuplicateKeyError(`chunk ${h.chunk}/${h.chunks} of ${name} received twice`);
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
  }

  /** Forgets every partial frame. */
  clear(): void {
    this.partial.clear();
    this.pendingBytes = 0;
  }
}
