/**
 * A pool worker: takes a task only into a free slot, so no task ever waits behind another it
 * cannot finish. An offered task is started at once when a slot is free (the host
 * acknowledges it, heartbeats while it runs, stops it at its deadline), and refused as busy
 * when none is. A task ends done, failed, timed out or cancelled (its caller gave up on it).
 * STOP takes no more tasks and waits for the running ones; RELEASE (the grace period over)
 * stops them, and the host hands them back to their callers.
 *
 * ```
 * idle --TASK (slot free)--> busy --(last task ended)--> idle; a TASK it already runs is ignored
 *        busy: TASK -> start (a slot free) or refuse (full); END -> a slot free again
 * idle, busy --STOP--> draining --(nothing running)--> stopped
 *                      draining --RELEASE--> stopped (the running tasks handed back)
 * ```
 */
import { assign, setup } from 'xstate';

export interface PoolWorkerContext {
  readonly pool: string;
  /** Tasks this worker runs at once. */
  readonly capacity: number;
  /** Tasks running, by key (`<caller>/<offer>`): the caller's input index. */
  readonly running: Readonly<Record<string, number>>;
  /** The input index of the task started last, or null before the first. */
  readonly current: number | null;
  readonly done: number;
  readonly failed: number;
  readonly timedOut: number;
  readonly cancelled: number;
  /** Tasks refused for want of a free slot. */
  readonly refused: number;
  /** Tasks handed back unfinished when the worker left (their callers send them again). */
  readonly released: number;
}

/** How a task ended. */
export type TaskOutcome = 'done' | 'failed' | 'timeout' | 'cancelled';

export type PoolWorkerEvent =
  | { type: 'TASK'; key: string; index: number }
  | { type: 'CANCEL'; key: string }
  | { type: 'END'; key: string; outcome: TaskOutcome }
  | { type: 'STOP' }
  | { type: 'RELEASE' };

type KeyEvent = Extract<PoolWorkerEvent, { key: string }>;
const key = ({ event }: { event: PoolWorkerEvent }) => ({ key: (event as KeyEvent).key });

const notProvided = (name: string) => () => {
  throw new Error(`pool worker machine: ${name} is not provided`);
};

/** Tasks while the worker serves (idle or busy). */
const serving = {
  TASK: [
    // A task it already runs, offered again under its key: it runs once (its answer will come).
    { guard: 'running' },
    {
      guard: 'hasRoom',
      target: '#poolWorker.busy',
      actions: ['start', { type: 'startTask', params: ({ event }: { event: PoolWorkerEvent }) => event as Extract<PoolWorkerEvent, { type: 'TASK' }> }],
    },
    { actions: ['countRefused', { type: 'refuseTask', params: key }] },
  ],
  CANCEL: { guard: 'running', actions: { type: 'stopTask', params: key } },
  END: { guard: 'running', actions: 'end' },
  STOP: '#poolWorker.draining',
} as const;

export const poolWorkerMachine = setup({
  types: {
    context: {} as PoolWorkerContext,
    events: {} as PoolWorkerEvent,
    input: {} as { pool: string; capacity?: number },
  },
  actions: {
    /** Acknowledge and run the task (heartbeats while it runs, stopped at its deadline); the host sends END. */
    startTask: (_, _params: { key: string; index: number }) => notProvided('startTask')(),
    /** Tell the caller this worker has no free slot (it offers the task elsewhere). */
    refuseTask: (_, _params: { key: string }) => notProvided('refuseTask')(),
    /** Stop a running task its caller gave up on; the host sends END (cancelled). */
    stopTask: (_, _params: { key: string }) => notProvided('stopTask')(),
    /** Stop every running task and tell their callers to send them again. */
    releaseTasks: (_, _params: { keys: readonly string[] }) => notProvided('releaseTasks')(),
    start: assign(({ context, event }) => {
      const { key: k, index } = event as Extract<PoolWorkerEvent, { type: 'TASK' }>;
      return { running: { ...context.running, [k]: index }, current: index };
    }),
    countRefused: assign({ refused: ({ context }) => context.refused + 1 }),
    end: assign(({ context, event }) => {
      const { key: k, outcome } = event as Extract<PoolWorkerEvent, { type: 'END' }>;
      const running = { ...context.running };
      delete running[k];
      const count = { done: 'done', failed: 'failed', timeout: 'timedOut', cancelled: 'cancelled' } as const;
      return { running, [count[outcome]]: context[count[outcome]] + 1 };
    }),
  },
  guards: {
    hasRoom: ({ context }) => Object.keys(context.running).length < context.capacity,
    running: ({ context, event }) => 'key' in event && event.key in context.running,
    nothingRunning: ({ context }) => Object.keys(context.running).length === 0,
  },
}).createMachine({
  id: 'poolWorker',
  context: ({ input }) => ({
    pool: input.pool,
    capacity: input.capacity ?? 1,
    running: {},
    current: null,
    done: 0,
    failed: 0,
    timedOut: 0,
    cancelled: 0,
    refused: 0,
    released: 0,
  }),
  initial: 'idle',
  states: {
    idle: { on: serving },
    busy: {
      always: { guard: 'nothingRunning', target: 'idle' },
      on: serving,
    },
    draining: {
      always: { guard: 'nothingRunning', target: 'stopped' },
      on: {
        TASK: { actions: ['countRefused', { type: 'refuseTask', params: key }] },
        CANCEL: { guard: 'running', actions: { type: 'stopTask', params: key } },
        END: { guard: 'running', actions: 'end' },
        RELEASE: {
          target: 'stopped',
          actions: [
            { type: 'releaseTasks', params: ({ context }) => ({ keys: Object.keys(context.running) }) },
            assign(({ context }) => ({ running: {}, released: context.released + Object.keys(context.running).length })),
          ],
        },
      },
    },
    stopped: { type: 'final' },
  },
});
