/**
 * Stages of this process that take frames by hand: a neighbour (or the driver) in the same
 * process gives them the frame itself, whose tensors may stay on their device (device wires),
 * instead of reading them back, framing them and sending them through nats-server. Frames to
 * every other stage go on the bus as bytes. Registration is per stage host and off unless it
 * asks (`StageHostOptions.handoff`).
 */
import { releaseDevice, toBytes } from '../compute/wire.js';
import type { Frame } from '../protocol/frame.js';
import type { Phase } from '../protocol/phase.js';
import { stageSubject } from '../protocol/subjects.js';
import type { Bus } from '../transport/bus.js';

/** How a stage of this process takes a frame handed to it. */
export type TakeFrame = (frame: Frame) => void;

const stages = new Map<string, TakeFrame>();

const keyOf = (job: string, rank: number) => `${job}\u0000${rank}`;

/** Makes stage `rank` of `job` take frames by hand; returns the call that stops it. */
function registerLocalStage(job: string, rank: number, take: TakeFrame): () => void {
  const k = keyOf(job, rank);
  stages.set(k, take);
  return () => {
    if (stages.get(k) === take) stages.delete(k);
  };
}

/** Whether stage `rank` of `job` lives in this process and takes frames by hand. */
export function isLocalStage(job: string, rank: number): boolean {
  return stages.has(keyOf(job, rank));
}

/**
 * Sends `frame` to stage `rank`'s `phase`: by hand when that stage is in this process and
 * takes frames so, else on the bus as bytes (device wires are read back first).
 */
export async function sendFrame(bus: Bus, job: string, rank: number, phase: Phase, frame: Frame): Promise<void> {
  const take = stages.get(keyOf(job, rank));
  if (take) return take(frame);
  const tensors = await Promise.all(frame.tensors.map(toBytes));
  await bus.publishFrame(stageSubject(job, rank, phase), { ...frame, tensors });
}

/**
 * A stage host's side of the handoff: its registration, and the frames handed to it whose
 * device tensors may still be unclaimed (a frame the machine refuses or drops never reaches
 * `toTensor`), freed once their step is over.
 */
export class HandedFrames {
  private handed: Frame[] = [];
  private off: () => void = () => {};

  /** Takes frames by hand as stage `rank` of `job`, each passed on to `take` (which judges it like one from the bus). */
  register(job: string, rank: number, take: TakeFrame): void {
    this.off = registerLocalStage(job, rank, (frame) => {
      this.handed.push(frame);
      take(frame);
    });
  }

  /** Frees the unclaimed device tensors of frames handed over for steps before `step` (all: Infinity). */
  release(step: number): void {
    const keep: Frame[] = [];
    for (const f of this.handed) {
      if (f.key.step < step) releaseDevice(f.tensors);
      else keep.push(f);
    }
    this.handed = keep;
  }

  /** Stops taking frames by hand and frees every unclaimed one. */
  close(): void {
    this.off();
    this.release(Infinity);
  }
}
