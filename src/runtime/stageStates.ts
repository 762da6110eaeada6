/** Moving stages' weights and optimizer state over NATS: dump from running stages, load into them. */
import { ForgedFrameError, StateError, TransportError, UnexpectedFrameError } from '../errors.js';
import type { StageState } from '../compute/stageState.js';
import type { Frame } from '../protocol/frame.js';
import { decodeAck, decodeReply, encodeJson } from '../protocol/messages.js';
import { Phase } from '../protocol/phase.js';
import { checkSeal } from '../protocol/seal.js';
import { CtlVerb, ctlSubject, lastToken, snapshotWildcard, stateSubject } from '../protocol/subjects.js';
import type { Bus } from '../transport/bus.js';
import { abortable, unlessAborted } from './abortable.js';

/** The sender a state frame must name: only the driver loads states into stages. */
export const STATE_SENDER = 'driver';

/** Largest state frame taken (a stage's weights and optimizer state), in bytes. */
const MAX_STATE_BYTES = 1024 * 1024 * 1024;

/** One stage's state and the step it belongs to. */
export interface RankState extends StageState {
  readonly rank: number;
  readonly step: number;
}

/**
 * Asks every stage for its state and collects the frames they publish. Replies come after
 * the frames on the same connection, so each reply finds its frame already assembled. Given
 * the stages' seal keys (SchedulerHost.sealKeys), a frame without its stage's seal is refused.
 */
export async function dumpStates(
  bus: Bus,
  job: string,
  stages: number,
  timeoutMs = 30_000,
  keys: readonly Uint8Array[] | null = null,
  signal?: AbortSignal,
): Promise<RankState[]> {
  const frames = new Map<number, Frame>();
  const errors: string[] = [];
  const sub = bus.subscribeFrames(snapshotWildcard(job), {
    maxBytes: MAX_STATE_BYTES,
    phase: Phase.STATE,
    maxPartial: stages * 2,
    admit: (h, m) => {
      const rank = Number(lastToken(m.subject));
      if (h.key.job !== job) return new UnexpectedFrameError(`state of job ${h.key.job}, not ${job}`);
      if (keys && !(keys[rank] && checkSeal(h, m.subject, keys[rank])))
        return new ForgedFrameError(`state ${h.key.step} on ${m.subject} does not carry stage ${rank}'s seal`);
      return null;
    },
    onFrame: (f, m) => frames.set(Number(lastToken(m.subject)), f),
    onRefuse: (subject, err) => errors.push(`${subject}: ${err.message}`),
  });
  try {
    await bus.flush();
    unlessAborted(signal);
    return await abortable(
      Promise.all(
        Array.from({ length: stages }, async (_, rank) => {
          const info = decodeReply('state', await bus.request(ctlSubject(job, rank, CtlVerb.DUMP), encodeJson({}), timeoutMs));
          const f = frames.get(rank);
          if (!f || f.key.step !== info.step) {
            throw new TransportError(
              `stage ${rank} answered dump for step ${info.step} but its state frame ${f ? `is of step ${f.key.step}` : 'did not arrive'}` +
                `${errors.length ? ` (${errors.join('; ')})` : ''}`,
            );
          }
          return { rank, step: info.step, weightNames: info.weightNames, optimizerNames: info.optimizerNames, tensors: f.tensors };
        }),
      ),
      signal,
    );
  } finally {
    await sub.drain();
  }
}

/**
 * Sends each state to its stage and waits until every stage has applied it. Once `signal`
 * aborts, nothing more is sent and the call rejects: a load started after it (a new recovery
 * round) finds its frames and requests after this one's on the same connection, never among them.
 */
export async function loadStates(bus: Bus, job: string, states: readonly RankState[], timeoutMs = 30_000, signal?: AbortSignal): Promise<void> {
  await abortable(
    Promise.all(
      states.map(async (s) => {
        unlessAborted(signal);
        await bus.publishFrame(stateSubject(job, s.rank), {
          key: { job, step: s.step, microbatch: 0, phase: Phase.STATE },
          from: STATE_SENDER,
          tensors: s.tensors,
        });
        unlessAborted(signal);
        const reply = await bus.request(
          ctlSubject(job, s.rank, CtlVerb.LOAD),
          encodeJson({ step: s.step, weightNames: s.weightNames, optimizerNames: s.optimizerNames }),
          timeoutMs,
        );
        const ack = decodeAck(reply);
        if (!ack.ok) throw new StateError(`stage ${s.rank} could not load state of step ${s.step}: ${ack.code}: ${ack.message}`);
      }),
    ),
    signal,
  );
}

/**
 * Brings every stage back to idle, whatever step it is in: each stage is asked where it is
 * (probe), and one in a step is asked to abort that step, until every stage answers idle.
 * What the driver sent while a stage could not be reached (an abort during a NATS outage)
 * may never have arrived, and what it sent while itself disconnected (a plan begun ahead)
 * may arrive late; this asks each stage rather than trusting either.
 */
export async function idleStages(bus: Bus, job: string, stages: number, timeoutMs = 30_000, signal?: AbortSignal): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  const ranks = Array.from({ length: stages }, (_, r) => r);
  for (;;) {
    unlessAborted(signal);
    const where = await abortable(
      Promise.all(ranks.map(async (r) => decodeReply('probe', await bus.request(ctlSubject(job, r, CtlVerb.PROBE), encodeJson({}), timeoutMs)))),
      signal,
    );
    const busy = where.filter((w) => w.state !== 'idle');
    if (busy.length === 0) return;
    if (performance.now() > deadline)
      throw new StateError(`stages did not become idle within ${timeoutMs} ms: ${busy.map((w) => `stage ${w.rank} ${w.state} in step ${w.step}`).join(', ')}`);
    unlessAborted(signal);
    // An abort of a step the stage has just left is refused as stale: it is probed again.
    await abortable(Promise.all(busy.map((w) => bus.request(ctlSubject(job, w.rank, CtlVerb.ABORT), encodeJson({ step: w.step }), timeoutMs))), signal);
  }
}
