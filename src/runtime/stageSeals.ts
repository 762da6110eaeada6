/**
 * A stage's seals: the key it seals its frames with (made here, told only to the driver in
 * the reply to `key`, which tells the neighbours), and its neighbours' keys (from `peers`),
 * without which their frames are refused. Another connection of the stage's user cannot seal.
 */
import { ForgedFrameError, FrameError } from '../errors.js';
import type { Frame, FrameHeader } from '../protocol/frame.js';
import { formatKey } from '../protocol/key.js';
import type { KeyReply } from '../protocol/messages.js';
import { Phase } from '../protocol/phase.js';
import { checkSeal, newSealKey, parseSealKey, sealFrame, sealKeyText } from '../protocol/seal.js';

export class StageSeals {
  private readonly key = newSealKey();
  private peers: { prev: Uint8Array | null; next: Uint8Array | null } = { prev: null, next: null };

  constructor(
    private readonly rank: number,
    private readonly stages: number,
  ) {}

  /** The reply to `key`: this stage's key, for the driver alone. */
  keyReply(): KeyReply {
    return { key: sealKeyText(this.key) };
  }

  /** Takes the neighbours' keys ('' where there is none); a key for a stage that does not exist is refused. */
  takePeers(p: { prev: string; next: string }): void {
    if (this.rank === 0 && p.prev !== '') throw new FrameError('stage 0 has no stage before it to take a seal key of');
    if (this.rank === this.stages - 1 && p.next !== '') throw new FrameError(`stage ${this.rank} is the last; it takes no seal key of a stage after it`);
    this.peers = { prev: p.prev === '' ? null : parseSealKey(p.prev), next: p.next === '' ? null : parseSealKey(p.next) };
  }

  /**
   * Why a neighbour's frame chunk on `subject` is refused (null: its seal is the neighbour's,
   * or it is no neighbour's frame). The subject says which neighbour: FORWARD comes from the
   * stage before, BACKWARD from the one after; the header's sender is not trusted.
   */
  refusal(h: FrameHeader, subject: string): ForgedFrameError | null {
    if (h.key.phase !== Phase.FORWARD && h.key.phase !== Phase.BACKWARD) return null;
    const forward = h.key.phase === Phase.FORWARD;
    const peer = forward ? this.rank - 1 : this.rank + 1;
    const key = forward ? this.peers.prev : this.peers.next;
    if (!key)
      return new ForgedFrameError(`${formatKey(h.key)} from ${h.from}: stage ${this.rank} holds no seal key of stage ${peer}, so takes no frame from it`);
    if (!checkSeal(h, subject, key))
      return new ForgedFrameError(`${formatKey(h.key)} from ${h.from}: ${h.seal === undefined ? 'no seal' : 'its seal is not'} stage ${peer}'s`);
    return null;
  }

  /** `frame` sealed for `subject` (a seal covers headers only: a device wire seals as its bytes would). */
  seal(frame: Frame, subject: string): Frame {
    return sealFrame(frame, subject, this.key);
  }
}
