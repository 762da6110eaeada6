/**
 * Receiving frames on a subject, the one way Troupe does it: each message's headers parsed
 * and checked (parseHeader), judged by the receiver's `admit` before any byte is assembled,
 * chunks reassembled into one buffer under a size limit, and every refusal counted and
 * reported.
 */
import { FrameError, TroupeError, messageOf } from '../errors.js';
import { parseHeader, type Frame, type FrameHeader } from '../protocol/frame.js';
import type { Key } from '../protocol/key.js';
import type { Phase } from '../protocol/phase.js';
import { Reassembler } from '../protocol/reassembler.js';
import { lastToken } from '../protocol/subjects.js';
import type { Bus, BusMessage } from './bus.js';

/** Options of `subscribeFrames`. */
export interface SubscribeFramesOptions {
  /** Largest whole frame taken, in bytes. */
  readonly maxBytes: number;
  /** The kind every frame on the subject must name; default the subject's last token (a stage subject ends in its phase). */
  readonly phase?: Phase;
  /**
   * Judges a message by its headers before its bytes are assembled (a chunk of another job or
   * step allocates nothing): return or throw a TroupeError to refuse it. Called for every
   * chunk. Where senders seal their frames, this is where the seal is checked.
   */
  readonly admit?: (h: FrameHeader, m: BusMessage) => TroupeError | null | undefined | void;
  /** Frames assembled at once, and the bytes they may hold together (Reassembler's defaults: 64, 1 GiB). */
  readonly maxPartial?: number;
  readonly maxPendingBytes?: number;
  /** Each whole frame; an error it throws refuses the frame like any other. */
  readonly onFrame: (frame: Frame, m: BusMessage) => void;
  /** Each refusal, once counted: the subject, why (a TroupeError; anything else as a FrameError), and the frame's key when its headers were read. */
  readonly onRefuse?: (subject: string, error: TroupeError, key?: Key) => void;
  /** Runs the handling of each message (a host times it). */
  readonly around?: (handle: () => void) => void;
}

/** A subscription to frames. */
export interface FrameSubscription {
  /** Messages refused so far. */
  readonly refused: number;
  /** Bytes held by partial frames. */
  readonly heldBytes: number;
  /** Forgets the partial frames of every step but `step`. */
  keepOnly(step: number): void;
  /** Forgets every partial frame. */
  clear(): void;
  drain(): Promise<void>;
}

/**
 * Subscribes to the frames on `subject` (wildcards allowed).
 *
 * @example
 * const sub = subscribeFrames(bus, stageWildcard(job, 1), {
 *   maxBytes: 256 << 20,
 *   admit: (h) => (h.key.job === job ? null : new UnexpectedFrameError(`job ${h.key.job}`)),
 *   onFrame: (f) => take(f),
 *   onRefuse: (subject, err) => report(subject, err),
 * });
 */
export function subscribeFrames(bus: Bus, subject: string, o: SubscribeFramesOptions): FrameSubscription {
  const reassembler = new Reassembler(o.maxPartial, o.maxPendingBytes);
  let refused = 0;
  const handle = (m: BusMessage) => {
    let key: Key | undefined;
    try {
      const h = parseHeader(m.header, o.phase ?? lastToken(m.subject), o.maxBytes);
      key = h.key;
      const no = o.admit?.(h, m);
      if (no) throw no;
      // A message in a buffer of its own (a direct link's) is kept as the frame's body, not copied.
      const frame = reassembler.accept(h, m.data, m.owned);
      if (frame) o.onFrame(frame, m);
    } catch (err) {
      refused++;
      o.onRefuse?.(m.subject, err instanceof TroupeError ? err : new FrameError(messageOf(err), { cause: err }), key);
    }
  };
  const sub = bus.subscribe(subject, o.around ? (m) => o.around!(() => handle(m)) : handle);
  return {
    get refused() {
      return refused;
    },
    get heldBytes() {
      return reassembler.heldBytes;
    },
    keepOnly: (step) => reassembler.keepOnly(step),
    clear: () => reassembler.clear(),
    drain: () => sub.drain(),
  };
}
