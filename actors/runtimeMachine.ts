/**
 * A module runtime (hivemind's Runtime): serves batched requests for its modules, one batch
 * at a time. serving.idle -> serving.processing (a batch of one pool) -> serving.idle;
 * a batch that fails with several requests is split (BATCH_SPLIT: each runs alone) within
 * `processing`; STOP drains: no new requests, the queued ones are served, then stopped.
 */
import { assign, setup } from 'xstate';

export interface RuntimeContext {
  readonly name: string;
  /** The pool of the batch being processed (`module.op`), or null. */
  readonly pool: string | null;
  readonly batchSize: number;
  readonly batches: number;
  readonly examples: number;
  /** Failed batches run again request by request. */
  readonly splits: number;
}

export type RuntimeEvent =
  | { type: 'BATCH_START'; pool: string; size: number }
  | { type: 'BATCH_SPLIT'; requests: number }
  | { type: 'BATCH_END' }
  | { type: 'STOP' }
  | { type: 'DRAINED' };

export const runtimeMachine = setup({
  types: { context: {} as RuntimeContext, events: {} as RuntimeEvent, input: {} as { name: string } },
  actions: {
    countSplit: assign({ splits: ({ context }) => context.splits + 1 }),
  },
}).createMachine({
  id: 'runtime',
  context: ({ input }) => ({ name: input.name, pool: null, batchSize: 0, batches: 0, examples: 0, splits: 0 }),
  initial: 'serving',
  states: {
    serving: {
      initial: 'idle',
      on: { STOP: '#runtime.stopping' },
      states: {
        idle: { on: { BATCH_START: { target: 'processing', actions: assign({ pool: ({ event }) => event.pool, batchSize: ({ event }) => event.size }) } } },
        processing: {
          on: {
            BATCH_SPLIT: { actions: 'countSplit' },
            BATCH_END: {
              target: 'idle',
              actions: assign({ pool: null, batches: ({ context }) => context.batches + 1, examples: ({ context }) => context.examples + context.batchSize }),
            },
          },
        },
      },
    },
    stopping: {
      on: {
        BATCH_START: { actions: assign({ pool: ({ event }) => event.pool, batchSize: ({ event }) => event.size }) },
        BATCH_SPLIT: { actions: 'countSplit' },
        BATCH_END: {
          actions: assign({ pool: null, batches: ({ context }) => context.batches + 1, examples: ({ context }) => context.examples + context.batchSize }),
        },
        DRAINED: 'stopped',
      },
    },
    stopped: { type: 'final' },
  },
});
