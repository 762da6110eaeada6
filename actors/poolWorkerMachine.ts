/**
 * A pool worker: takes independent tasks one at a time (from a NATS queue group) and
 * answers each. idle -> busy -> idle; STOP ends it after the task in hand.
 *
 * ```
 * idle --TASK--> busy --DONE/FAILED--> idle
 *   \--STOP--> stopped <--STOP (after the task)-- busy
 * ```
 */
import { assign, setup } from 'xstate';

export interface PoolWorkerContext {
  readonly pool: string;
  /** The task being run (its caller's input index), or null. */
  readonly current: number | null;
  readonly done: number;
  readonly failed: number;
  readonly stopRequested: boolean;
}

export type PoolWorkerEvent =
  | { type: 'TASK'; index: number }
  | { type: 'DONE' }
  | { type: 'FAILED'; message: string }
  | { type: 'STOP' };

export const poolWorkerMachine = setup({
  types: {
    context: {} as PoolWorkerContext,
    events: {} as PoolWorkerEvent,
    input: {} as { pool: string },
  },
  guards: {
    stopRequested: ({ context }) => context.stopRequested,
  },
}).createMachine({
  id: 'poolWorker',
  context: ({ input }) => ({ pool: input.pool, current: null, done: 0, failed: 0, stopRequested: false }),
  initial: 'idle',
  states: {
    idle: {
      on: {
        TASK: { target: 'busy', actions: assign({ current: ({ event }) => event.index }) },
        STOP: 'stopped',
      },
    },
    busy: {
      on: {
        DONE: [
          { guard: 'stopRequested', target: 'stopped', actions: assign({ current: null, done: ({ context }) => context.done + 1 }) },
          { target: 'idle', actions: assign({ current: null, done: ({ context }) => context.done + 1 }) },
        ],
        FAILED: [
          { guard: 'stopRequested', target: 'stopped', actions: assign({ current: null, failed: ({ context }) => context.failed + 1 }) },
          { target: 'idle', actions: assign({ current: null, failed: ({ context }) => context.failed + 1 }) },
        ],
        STOP: { actions: assign({ stopRequested: true }) },
      },
    },
    stopped: { type: 'final' },
  },
});
