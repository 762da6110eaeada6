/**
 * Stage events to the scheduler (`sched.<rank>.<event>`) read as the scheduler machine's
 * events. The sender is the subject's rank, which only that stage's user may publish on: a
 * body naming another rank is refused, and a loss comes from the last stage only.
 */
import type { SchedulerEvent } from '../../actors/schedulerMachine.js';
import { FrameError } from '../errors.js';
import { decodeMessage, type ErrorEvent, type RejectEvent } from '../protocol/messages.js';
import { SchedEvent, parseSchedSubject } from '../protocol/subjects.js';
import type { BusMessage } from '../transport/bus.js';

/** A stage event as the machine takes it, with the rank that sent it and, for errors and refusals, the body to keep. */
export interface ReadEvent {
  readonly rank: number;
  readonly event: SchedulerEvent;
  readonly error?: ErrorEvent;
  readonly reject?: RejectEvent;
}

/** Reads one message; a FrameError names what is wrong with it. */
export function readSchedEvent(m: BusMessage, job: string, stages: number): ReadEvent {
  const from = parseSchedSubject(m.subject);
  if (!from || from.rank >= stages) throw new FrameError(`unknown scheduler event subject ${m.subject}`);
  const { rank } = from;
  const mine = <T extends { rank: number }>(e: T): T => {
    if (e.rank !== rank) throw new FrameError(`${m.subject}: the event names stage ${e.rank}, the subject stage ${rank}`);
    return e;
  };
  switch (from.event) {
    case SchedEvent.ACTION: {
      const e = mine(decodeMessage('action', m.data));
      return { rank, event: { type: 'ACTION', rank, step: e.step, action: e.action } };
    }
    case SchedEvent.LOSS:
      if (rank !== stages - 1) throw new FrameError(`${m.subject}: a loss from stage ${rank}, not the last`);
      return { rank, event: { type: 'LOSS', ...decodeMessage('loss', m.data) } };
    case SchedEvent.DONE:
      return { rank, event: { type: 'DONE', ...mine(decodeMessage('done', m.data)) } };
    case SchedEvent.UPDATED:
      return { rank, event: { type: 'UPDATED', ...mine(decodeMessage('updated', m.data)) } };
    case SchedEvent.ERROR: {
      const e = mine(decodeMessage('error', m.data));
      return { rank, error: e, event: { type: 'STAGE_ERROR', rank, step: e.step, failure: { key: e.key, code: e.code, message: e.message } } };
    }
    case SchedEvent.REJECT: {
      const e = mine(decodeMessage('reject', m.data));
      // With its key the machine judges it (a refused INPUT fails its step).
      if (e.step === null || e.phase === null) return { rank, reject: e, event: { type: 'REJECT', rank } };
      const key = `${job}/${e.step}/${e.microbatch ?? '?'}/${e.phase}`;
      return { rank, reject: e, event: { type: 'REJECT', rank, refused: { step: e.step, phase: e.phase, key, code: e.code, message: e.message } } };
    }
    default:
      throw new FrameError(`unknown scheduler event subject ${m.subject}`);
  }
}
