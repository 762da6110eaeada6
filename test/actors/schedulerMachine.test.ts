/**
 * The scheduler actor in memory: beginStep / abortStep are fakes, and the feed, update,
 * resolve and reject actions only record what they are asked to do.
 */
import { describe, expect, it, vi } from 'vitest';
import { createActor, fromPromise, waitFor, type Actor } from 'xstate';
import { deferred, type Deferred } from '../../src/runtime/deferred.js';
import { livenessProbes } from '../../actors/liveness.js';
import { schedulerMachine, type SchedulerInput, type StepFailure, type StepOutcome, type StepRequest } from '../../actors/schedulerMachine.js';

const WAIT = { timeout: 2000 };

type SchedulerMachine = typeof schedulerMachine;

interface Harness {
  readonly actor: Actor<SchedulerMachine>;
  /** `begin S`, `feed S from-to`, `update S`, `resolve S`, `abort S`, `reject S CODE`, in order. */
  readonly log: string[];
  /** Microbatch indices fed, one entry per microbatch. */
  readonly fed: number[];
  readonly outcomes: StepOutcome[];
  readonly failures: { step: number; failure: StepFailure }[];
  /** What the queue and the watch did, in order: `starts S early|now`, `plan S`, `abortEarly S`, `drop S after F`, `cancel S: why`, `silence: first line`. */
  readonly queue: string[];
  /** Answers the early step's plans (PLANNED), or fails them. */
  planned(step: number, failure?: string): void;
}

interface HarnessOptions {
  readonly stages?: number;
  readonly begin?: () => Promise<void>;
  readonly abort?: () => Promise<void>;
  /** What beginStep resolves to: microbatches fed before START (a step begun early). */
  readonly alreadyFed?: number;
  readonly input?: Partial<SchedulerInput>;
}

function harness(o: HarnessOptions = {}): Harness {
  const log: string[] = [];
  const fed: number[] = [];
  const outcomes: StepOutcome[] = [];
  const failures: { step: number; failure: StepFailure }[] = [];
  const queue: string[] = [];
  const machine = schedulerMachine.provide({
    actors: {
      beginStep: fromPromise<number, StepRequest>(async ({ input }) => {
        log.push(`begin ${input.step}`);
        await o.begin?.();
        return o.alreadyFed ?? 0;
      }),
      abortStep: fromPromise<void, { step: number; skip?: readonly number[] }>(async ({ input }) => {
        log.push(`abort ${input.step}${input.skip?.length ? ` skip ${input.skip.join(',')}` : ''}`);
        await o.abort?.();
      }),
    },
    actions: {
      feedInputs: (_, { step, from, to }) => {
        if (to > from) log.push(`feed ${step} ${from}-${to}`);
        for (let mb = from; mb < to; mb++) fed.push(mb);
      },
      sendUpdate: (_, { step, except }) => void log.push(`update ${step}${except >= 0 ? ` except ${except}` : ''}`),
      grantUpdate: (_, { step, rank }) => void log.push(`grant ${step} ${rank}`),
      resolveStep: (_, outcome) => {
        log.push(`resolve ${outcome.step}`);
        outcomes.push(outcome);
      },
      rejectStep: (_, f) => {
        log.push(`reject ${f.step} ${f.failure.code}`);
        failures.push(f);
      },
      stepStarts: (_, { step, begunEarly }) => void queue.push(`starts ${step} ${begunEarly ? 'early' : 'now'}`),
      planEarly: (_, req) => void queue.push(`plan ${req.step}`),
      abortEarly: ({ self }, { step }) => {
        queue.push(`abortEarly ${step}`);
        setTimeout(() => self.send({ type: 'EARLY_ABORTED', step }), 0);
      },
      dropStep: (_, { step, failedStep }) => void queue.push(`drop ${step} after ${failedStep}`),
      cancelStep: (_, { step, message }) => void queue.push(`cancel ${step}: ${message}`),
      reportSilence: (_, { message }) => void queue.push(`silence: ${message.split('\n')[0]}`),
    },
  });
  const actor = createActor(machine, { input: { stages: o.stages ?? 3, ...o.input } });
  actor.start();
  const planned = (step: number, failure?: string) => actor.send(failure ? { type: 'PLAN_FAILED', step, message: failure } : { type: 'PLANNED', step });
  return { actor, log, fed, outcomes, failures, queue, planned };
}

function req(over: Partial<StepRequest> = {}): StepRequest {
  return {
    step: 1,
    microbatches: 6,
    forwardOnly: false,
    update: !over.forwardOnly,
    feedBound: 2,
    timeoutMs: 10_000,
    releasedBy: over.forwardOnly ? 'F' : 'B',
    grantInPlan: false,
    ...over,
  };
}

const inState = (h: Harness, child: 'starting' | 'feeding' | 'draining' | 'updating' | 'aborting') =>
  waitFor(h.actor, (s) => s.matches({ active: child }), WAIT);

describe('schedulerMachine: feeding', () => {
  it('feeds [0, feedBound) at start, then one microbatch per backward of stage 0 (m=6, bound 2)', async () => {
    const h = harness();
    h.actor.send({ type: 'START', req: req() });
    await inState(h, 'feeding');
    expect(h.fed).toEqual([0, 1]);
    expect(h.log).toEqual(['begin 1', 'feed 1 0-2']);

    // Forwards of stage 0 and actions of the other stages free nothing.
    h.actor.send({ type: 'ACTION', rank: 0, step: 1, action: 'F0' });
    h.actor.send({ type: 'ACTION', rank: 0, step: 1, action: 'F1' });
    h.actor.send({ type: 'ACTION', rank: 1, step: 1, action: 'F0' });
    h.actor.send({ type: 'ACTION', rank: 2, step: 1, action: 'B0' });
    h.actor.send({ type: 'ACTION', rank: 1, step: 1, action: 'B0' });
    expect(h.fed).toEqual([0, 1]);

    const afterEachB: number[][] = [];
    for (let mb = 0; mb < 4; mb++) {
      h.actor.send({ type: 'ACTION', rank: 0, step: 1, action: `B${mb}` });
      afterEachB.push([...h.fed]);
      h.actor.send({ type: 'ACTION', rank: 0, step: 1, action: `F${mb + 2}` });
    }
    expect(afterEachB).toEqual([
      [0, 1, 2],
      [0, 1, 2, 3],
      [0, 1, 2, 3, 4],
      [0, 1, 2, 3, 4, 5],
    ]);
    expect(h.actor.getSnapshot().matches({ active: 'draining' })).toBe(true);
    // The last backwards feed nothing more: all 6 are out.
    h.actor.send({ type: 'ACTION', rank: 0, step: 1, action: 'B4' });
    h.actor.send({ type: 'ACTION', rank: 0, step: 1, action: 'B5' });
    expect(h.fed).toEqual([0, 1, 2, 3, 4, 5]);
    expect(h.log).toEqual(['begin 1', 'feed 1 0-2', 'feed 1 2-3', 'feed 1 3-4', 'feed 1 4-5', 'feed 1 5-6']);
    expect(h.actor.getSnapshot().context.stage0Done).toBe(6);
  });

  it('a step begun early (first inputs already fed) feeds from there, and backwards that came first count', async () => {
    const h = harness({ alreadyFed: 2 });
    h.actor.send({ type: 'START', req: req() });
    // Stage 0 finished B0 before the step started here: its event is handed over right after START.
    h.actor.send({ type: 'ACTION', rank: 0, step: 1, action: 'B0' });
    await inState(h, 'feeding');
    expect(h.fed).toEqual([2]);
    expect(h.log).toEqual(['begin 1', 'feed 1 2-3']);
    h.actor.send({ type: 'ACTION', rank: 0, step: 1, action: 'B1' });
    expect(h.fed).toEqual([2, 3]);
  });

  it('a bound of m feeds everything at once (GPipe) and goes straight to draining', async () => {
    const h = harness();
    h.actor.send({ type: 'START', req: req({ feedBound: 6 }) });
    await inState(h, 'draining');
    expect(h.fed).toEqual([0, 1, 2, 3, 4, 5]);
    expect(h.log).toEqual(['begin 1', 'feed 1 0-6']);
  });

  it('a bound above m feeds only m', async () => {
    const h = harness();
    h.actor.send({ type: 'START', req: req({ microbatches: 2, feedBound: 5 }) });
    await inState(h, 'draining');
    expect(h.fed).toEqual([0, 1]);
  });

  it('forward-only: stage 0 frees a microbatch at its forward', async () => {
    const h = harness();
    h.actor.send({ type: 'START', req: req({ microbatches: 3, feedBound: 1, forwardOnly: true }) });
    await inState(h, 'feeding');
    expect(h.fed).toEqual([0]);
    h.actor.send({ type: 'ACTION', rank: 0, step: 1, action: 'F0' });
    expect(h.fed).toEqual([0, 1]);
    h.actor.send({ type: 'ACTION', rank: 0, step: 1, action: 'F1' });
    expect(h.fed).toEqual([0, 1, 2]);
  });

  it('feeds nothing before every stage acknowledged the step', async () => {
    const gate = deferred<void>();
    const h = harness({ begin: () => gate.promise });
    h.actor.send({ type: 'START', req: req() });
    expect(h.actor.getSnapshot().matches({ active: 'starting' })).toBe(true);
    expect(h.fed).toEqual([]);
    gate.resolve();
    await inState(h, 'feeding');
    expect(h.fed).toEqual([0, 1]);
  });

  it('ignores events of another step', async () => {
    const h = harness({ stages: 2 });
    h.actor.send({ type: 'START', req: req({ step: 7, microbatches: 2, feedBound: 1 }) });
    await inState(h, 'feeding');
    h.actor.send({ type: 'ACTION', rank: 0, step: 6, action: 'B0' });
    h.actor.send({ type: 'ACTION', rank: 0, step: 8, action: 'B0' });
    expect(h.fed).toEqual([0]);
    h.actor.send({ type: 'ACTION', rank: 0, step: 7, action: 'B0' });
    await inState(h, 'draining');
    for (const step of [6, 8]) {
      h.actor.send({ type: 'LOSS', step, microbatch: 0, loss: 9, metric: null });
      h.actor.send({ type: 'LOSS', step, microbatch: 1, loss: 9, metric: null });
      h.actor.send({ type: 'DONE', rank: 0, step, peakHeld: 9 });
      h.actor.send({ type: 'DONE', rank: 1, step, peakHeld: 9 });
      h.actor.send({ type: 'STAGE_ERROR', rank: 1, step, failure: { key: 'x', code: 'OLD', message: 'old' } });
    }
    let s = h.actor.getSnapshot();
    expect(s.matches({ active: 'draining' })).toBe(true);
    expect(s.context.losses).toEqual([null, null]);
    expect(s.context.done).toEqual([false, false]);
    expect(s.context.failure).toBeNull();

    h.actor.send({ type: 'LOSS', step: 7, microbatch: 0, loss: 0.1, metric: null });
    h.actor.send({ type: 'LOSS', step: 7, microbatch: 1, loss: 0.2, metric: null });
    h.actor.send({ type: 'DONE', rank: 0, step: 7, peakHeld: 1 });
    h.actor.send({ type: 'DONE', rank: 1, step: 7, peakHeld: 1 });
    await inState(h, 'updating');
    h.actor.send({ type: 'UPDATED', rank: 0, step: 6 });
    h.actor.send({ type: 'UPDATED', rank: 1, step: 8 });
    s = h.actor.getSnapshot();
    expect(s.matches({ active: 'updating' })).toBe(true);
    expect(s.context.updated).toEqual([false, false]);
    h.actor.send({ type: 'UPDATED', rank: 0, step: 7 });
    h.actor.send({ type: 'UPDATED', rank: 1, step: 7 });
    await waitFor(h.actor, (x) => x.matches('idle'), WAIT);
    expect(h.outcomes).toHaveLength(1);
    expect(h.outcomes[0]!.lossShares).toEqual([0.1, 0.2]);
    expect(h.failures).toEqual([]);
  });
});

describe('schedulerMachine: closing a step', () => {
  /** Starts a step of m=3 with everything fed at once and returns in draining. */
  async function draining(over: Partial<StepRequest> = {}): Promise<Harness> {
    const h = harness();
    h.actor.send({ type: 'START', req: req({ microbatches: 3, feedBound: 3, ...over }) });
    await inState(h, 'draining');
    return h;
  }

  it(`after every LOSS and DONE it sends UPDATE (early to the last stage running), \
and resolves after every UPDATED with losses in microbatch order`, async () => {
    const h = await draining();
    // Losses out of order, interleaved with DONEs.
    h.actor.send({ type: 'LOSS', step: 1, microbatch: 2, loss: 0.3, metric: 0.5 });
    h.actor.send({ type: 'DONE', rank: 2, step: 1, peakHeld: 1 });
    expect(h.log.filter((l) => l.startsWith('grant'))).toEqual([]); // two stages still run
    h.actor.send({ type: 'LOSS', step: 1, microbatch: 0, loss: 0.1, metric: 1 });
    h.actor.send({ type: 'DONE', rank: 0, step: 1, peakHeld: 3 });
    // Stage 1 is the last one running: it gets its UPDATE now and applies it when its list ends.
    expect(h.log.at(-1)).toBe('grant 1 1');
    h.actor.send({ type: 'REJECT', rank: 1 });
    expect(h.actor.getSnapshot().matches({ active: 'draining' })).toBe(true);
    h.actor.send({ type: 'DONE', rank: 1, step: 1, peakHeld: 2 });
    // All stages done but one loss missing: no UPDATE yet.
    expect(h.actor.getSnapshot().matches({ active: 'draining' })).toBe(true);
    expect(h.log).not.toContain('update 1');
    h.actor.send({ type: 'LOSS', step: 1, microbatch: 1, loss: 0.2, metric: 0 });
    await inState(h, 'updating');
    expect(h.log.at(-1)).toBe('update 1 except 1');

    h.actor.send({ type: 'UPDATED', rank: 2, step: 1 });
    h.actor.send({ type: 'UPDATED', rank: 0, step: 1 });
    expect(h.actor.getSnapshot().matches({ active: 'updating' })).toBe(true);
    expect(h.outcomes).toEqual([]);
    h.actor.send({ type: 'UPDATED', rank: 1, step: 1 });
    await waitFor(h.actor, (s) => s.matches('idle'), WAIT);
    expect(h.log).toEqual(['begin 1', 'feed 1 0-3', 'grant 1 1', 'update 1 except 1', 'resolve 1']);
    expect(h.outcomes).toEqual([{ step: 1, lossShares: [0.1, 0.2, 0.3], metricShares: [1, 0, 0.5], peakHeld: [3, 2, 1], rejected: 1 }]);
    expect(h.failures).toEqual([]);
  });

  it('a DONE that comes before the last loss still closes the step (order of LOSS and DONE does not matter)', async () => {
    const h = await draining();
    for (let r = 0; r < 3; r++) h.actor.send({ type: 'DONE', rank: r, step: 1, peakHeld: 1 });
    for (let i = 0; i < 3; i++) h.actor.send({ type: 'LOSS', step: 1, microbatch: i, loss: i, metric: null });
    await inState(h, 'updating');
    expect(h.log.filter((l) => l.startsWith('update') || l.startsWith('grant'))).toEqual(['grant 1 2', 'update 1 except 2']);
  });

  it('a lone stage is granted its UPDATE as the step begins; the grant counts its UPDATED, and no step without an update gets one', async () => {
    const h = harness({ stages: 1 });
    h.actor.send({ type: 'START', req: req({ microbatches: 2, feedBound: 2 }) });
    await inState(h, 'draining');
    expect(h.log).toEqual(['begin 1', 'feed 1 0-2', 'grant 1 0']);
    for (let i = 0; i < 2; i++) h.actor.send({ type: 'LOSS', step: 1, microbatch: i, loss: i, metric: null });
    h.actor.send({ type: 'DONE', rank: 0, step: 1, peakHeld: 1 });
    // The stage applied the update as its list ended, without waiting for the scheduler.
    h.actor.send({ type: 'UPDATED', rank: 0, step: 1 });
    await waitFor(h.actor, (s) => s.matches('idle'), WAIT);
    expect(h.log).toEqual(['begin 1', 'feed 1 0-2', 'grant 1 0', 'update 1 except 0', 'resolve 1']);
    for (const [step, over] of [
      [2, { forwardOnly: true }],
      [3, { update: false }],
    ] as const) {
      h.actor.send({ type: 'START', req: req({ step, microbatches: 1, feedBound: 1, ...over }) });
      await inState(h, 'draining');
      expect(h.log.filter((l) => l.startsWith('grant'))).toEqual(['grant 1 0']);
      h.actor.send({ type: 'LOSS', step, microbatch: 0, loss: 1, metric: null });
      h.actor.send({ type: 'DONE', rank: 0, step, peakHeld: 0 });
      await waitFor(h.actor, (s) => s.matches('idle'), WAIT);
    }
    expect(h.outcomes.map((o) => o.step)).toEqual([1, 2, 3]);
  });

  it("a grant in the lone stage's plan is noted, not sent: no UPDATE goes out, and a timeout's failure still names the stage", async () => {
    const h = harness({ stages: 1 });
    h.actor.send({ type: 'START', req: req({ microbatches: 2, feedBound: 2, grantInPlan: true }) });
    await inState(h, 'draining');
    expect(h.actor.getSnapshot().context.granted).toBe(0);
    for (let i = 0; i < 2; i++) h.actor.send({ type: 'LOSS', step: 1, microbatch: i, loss: i, metric: null });
    h.actor.send({ type: 'DONE', rank: 0, step: 1, peakHeld: 1 });
    h.actor.send({ type: 'UPDATED', rank: 0, step: 1 });
    await waitFor(h.actor, (s) => s.matches('idle'), WAIT);
    // `update 1 except 0` publishes to no stage: there is only stage 0.
    expect(h.log).toEqual(['begin 1', 'feed 1 0-2', 'update 1 except 0', 'resolve 1']);
    h.actor.send({ type: 'START', req: req({ step: 2, microbatches: 1, feedBound: 1, grantInPlan: true, timeoutMs: 30 }) });
    await waitFor(h.actor, (s) => s.matches('idle') && h.failures.length > 0, WAIT);
    expect(h.log.slice(4)).toEqual(['begin 2', 'feed 2 0-1', 'abort 2', 'reject 2 STEP_TIMEOUT']);
    expect(h.failures[0]!.failure.message).toContain('stage 0 had its UPDATE early');
  });

  it('forward-only resolves without sendUpdate', async () => {
    const h = await draining({ forwardOnly: true });
    for (let i = 0; i < 3; i++) h.actor.send({ type: 'LOSS', step: 1, microbatch: i, loss: 0.5 + i, metric: null });
    for (let r = 0; r < 3; r++) h.actor.send({ type: 'DONE', rank: r, step: 1, peakHeld: 0 });
    await waitFor(h.actor, (s) => s.matches('idle'), WAIT);
    expect(h.log).toEqual(['begin 1', 'feed 1 0-3', 'resolve 1']);
    expect(h.outcomes[0]!.lossShares).toEqual([0.5, 1.5, 2.5]);
  });

  it('runs consecutive steps with fresh counters', async () => {
    const h = harness({ stages: 1 });
    for (const step of [1, 2]) {
      h.actor.send({ type: 'START', req: req({ step, microbatches: 2, feedBound: 1 }) });
      await inState(h, 'feeding');
      h.actor.send({ type: 'ACTION', rank: 0, step, action: 'B0' });
      h.actor.send({ type: 'LOSS', step, microbatch: 0, loss: step, metric: null });
      h.actor.send({ type: 'LOSS', step, microbatch: 1, loss: step, metric: null });
      h.actor.send({ type: 'DONE', rank: 0, step, peakHeld: 1 });
      await inState(h, 'updating');
      h.actor.send({ type: 'UPDATED', rank: 0, step });
      await waitFor(h.actor, (s) => s.matches('idle'), WAIT);
    }
    expect(h.fed).toEqual([0, 1, 0, 1]);
    expect(h.outcomes.map((o) => o.lossShares)).toEqual([
      [1, 1],
      [2, 2],
    ]);
  });
});

describe('schedulerMachine: failures', () => {
  it('a STAGE_ERROR aborts the step, then rejects with the FIRST failure', async () => {
    const gate: Deferred<void> = deferred<void>();
    const h = harness({ abort: () => gate.promise });
    h.actor.send({ type: 'START', req: req({ step: 4 }) });
    await inState(h, 'feeding');
    h.actor.send({ type: 'STAGE_ERROR', rank: 1, step: 4, failure: { key: 'j/4/1F1', code: 'COMPUTE', message: 'first' } });
    await inState(h, 'aborting');
    h.actor.send({ type: 'STAGE_ERROR', rank: 2, step: 4, failure: { key: 'j/4/2F0', code: 'SHAPE', message: 'second' } });
    // Events of the dying step feed nothing more.
    h.actor.send({ type: 'ACTION', rank: 0, step: 4, action: 'B0' });
    expect(h.fed).toEqual([0, 1]);
    expect(h.failures).toEqual([]);
    gate.resolve();
    await waitFor(h.actor, (s) => s.matches('idle'), WAIT);
    expect(h.log).toEqual(['begin 4', 'feed 4 0-2', 'abort 4', 'reject 4 COMPUTE']);
    expect(h.failures).toEqual([{ step: 4, failure: { rank: 1, key: 'j/4/1F1', code: 'COMPUTE', message: 'first' } }]);
    expect(h.outcomes).toEqual([]);
  });

  it('rejects with the first failure even when the abort itself fails', async () => {
    const h = harness({ abort: () => Promise.reject(new Error('no ack')) });
    h.actor.send({ type: 'START', req: req() });
    await inState(h, 'feeding');
    h.actor.send({ type: 'STAGE_ERROR', rank: 0, step: 1, failure: { key: 'j/1/UPDATE', code: 'COMPUTE', message: 'x' } });
    await waitFor(h.actor, (s) => s.matches('idle'), WAIT);
    expect(h.failures).toEqual([{ step: 1, failure: { rank: 0, key: 'j/1/UPDATE', code: 'COMPUTE', message: 'x' } }]);
  });

  it('a STAGE_ERROR while updating rejects without an abort, naming the stages that had updated', async () => {
    const h = harness({ stages: 2 });
    h.actor.send({ type: 'START', req: req({ microbatches: 1, feedBound: 1 }) });
    await inState(h, 'draining');
    h.actor.send({ type: 'LOSS', step: 1, microbatch: 0, loss: 1, metric: null });
    h.actor.send({ type: 'DONE', rank: 0, step: 1, peakHeld: 1 });
    h.actor.send({ type: 'DONE', rank: 1, step: 1, peakHeld: 1 });
    await inState(h, 'updating');
    h.actor.send({ type: 'UPDATED', rank: 0, step: 1 });
    h.actor.send({ type: 'STAGE_ERROR', rank: 1, step: 1, failure: { key: 'j/1/UPDATE', code: 'COMPUTE', message: 'nan' } });
    await waitFor(h.actor, (s) => s.matches('idle'), WAIT);
    // An abort cannot take back stage 0's update: the step fails as it is.
    expect(h.log).toEqual(['begin 1', 'feed 1 0-1', 'grant 1 1', 'update 1 except 1', 'reject 1 COMPUTE']);
    expect(h.failures[0]!.failure.message).toMatch(/during UPDATE: stages 0 had applied it; restore a checkpoint/);
    expect(h.outcomes).toEqual([]);
  });

  it('ignores events naming a rank or microbatch the step does not have', async () => {
    const h = harness({ stages: 2 });
    h.actor.send({ type: 'START', req: req({ microbatches: 2, feedBound: 2 }) });
    await inState(h, 'draining');
    h.actor.send({ type: 'LOSS', step: 1, microbatch: 5, loss: 100, metric: null });
    h.actor.send({ type: 'DONE', rank: 7, step: 1, peakHeld: 1 });
    expect(h.actor.getSnapshot().context.losses).toEqual([null, null]);
    expect(h.actor.getSnapshot().context.done).toEqual([false, false]);
  });

  it('a beginStep that fails aborts and rejects with TRANSPORT', async () => {
    const h = harness({ begin: () => Promise.reject(new Error('stage 2 refused STEP')) });
    h.actor.send({ type: 'START', req: req({ step: 3 }) });
    await waitFor(h.actor, (s) => s.matches('idle') && h.failures.length > 0, WAIT);
    expect(h.log).toEqual(['begin 3', 'abort 3', 'reject 3 TRANSPORT']);
    expect(h.fed).toEqual([]);
    expect(h.failures[0]!.failure).toMatchObject({ rank: -1, code: 'TRANSPORT', message: 'stage 2 refused STEP' });
  });

  it('a step that never completes is aborted and rejected with STEP_TIMEOUT', async () => {
    const h = harness({ stages: 3 });
    h.actor.send({ type: 'START', req: req({ step: 2, microbatches: 2, feedBound: 2, timeoutMs: 50 }) });
    await inState(h, 'draining');
    h.actor.send({ type: 'LOSS', step: 2, microbatch: 0, loss: 1, metric: null });
    h.actor.send({ type: 'DONE', rank: 0, step: 2, peakHeld: 1 });
    h.actor.send({ type: 'DONE', rank: 2, step: 2, peakHeld: 1 });
    await waitFor(h.actor, (s) => s.matches('idle') && h.failures.length > 0, WAIT);
    expect(h.log).toEqual(['begin 2', 'feed 2 0-2', 'grant 2 1', 'abort 2', 'reject 2 STEP_TIMEOUT']);
    const f = h.failures[0]!;
    // Stage 1 had its UPDATE: had it finished with its DONE on the way, it applied it.
    expect(f.failure.message).toContain('stage 1 had its UPDATE early');
    expect(f.step).toBe(2);
    expect(f.failure.code).toBe('STEP_TIMEOUT');
    expect(f.failure.rank).toBe(1); // the first stage not done
    expect(f.failure.message).toContain('50 ms');
    expect(f.failure.message).toContain('stages not done: 1');
    expect(f.failure.message).toContain('microbatches without loss: 1');
    expect(h.outcomes).toEqual([]);
  });

  it('a timeout during an abort neither restarts abortStep nor replaces the first failure', async () => {
    vi.useFakeTimers();
    try {
      const gate = deferred<void>();
      const h = harness({ stages: 1, abort: () => gate.promise });
      h.actor.send({ type: 'START', req: req({ microbatches: 1, feedBound: 1, timeoutMs: 50 }) });
      // xstate's waitFor without a timeout sets no timer, so it does not race the fake clock.
      await waitFor(h.actor, (x) => x.matches({ active: 'draining' }), { timeout: Infinity });
      h.actor.send({ type: 'STAGE_ERROR', rank: 0, step: 1, failure: { key: 'j/1/0F0', code: 'COMPUTE', message: 'first' } });
      expect(h.actor.getSnapshot().matches({ active: 'aborting' })).toBe(true);
      await vi.advanceTimersByTimeAsync(200); // the step timer is due while aborting
      expect(h.log.filter((l) => l.startsWith('abort'))).toEqual(['abort 1']);
      gate.resolve();
      await waitFor(h.actor, (x) => x.matches('idle'), { timeout: Infinity });
      expect(h.log).toEqual(['begin 1', 'feed 1 0-1', 'grant 1 0', 'abort 1', 'reject 1 COMPUTE']);
      // The granted stage's own action failed: it applied nothing, and the failure does not say it may have.
      expect(h.failures[0]!.failure.message).toBe('first');
    } finally {
      vi.useRealTimers();
    }
  });

  it('the timeout does not fire once the step has resolved', async () => {
    const h = harness({ stages: 1 });
    h.actor.send({ type: 'START', req: req({ microbatches: 1, feedBound: 1, forwardOnly: true, timeoutMs: 30 }) });
    await inState(h, 'draining');
    h.actor.send({ type: 'LOSS', step: 1, microbatch: 0, loss: 1, metric: null });
    h.actor.send({ type: 'DONE', rank: 0, step: 1, peakHeld: 0 });
    await waitFor(h.actor, (s) => s.matches('idle'), WAIT);
    // A second step that times out: only its own timer fires, once.
    h.actor.send({ type: 'START', req: req({ step: 2, microbatches: 1, feedBound: 1, timeoutMs: 30 }) });
    await waitFor(h.actor, (s) => s.matches('idle') && h.failures.length > 0, WAIT);
    expect(h.log).toEqual(['begin 1', 'feed 1 0-1', 'resolve 1', 'begin 2', 'feed 2 0-1', 'grant 2 0', 'abort 2', 'reject 2 STEP_TIMEOUT']);
  });
});

describe('schedulerMachine: refused frames', () => {
  const refused = (over: Partial<{ step: number; phase: string; key: string; code: string; message: string }> = {}) => ({
    step: 1,
    phase: 'INPUT',
    key: 'j/1/0/INPUT',
    code: 'SHAPE',
    message: 'j/1/0/INPUT inputs tensor 0: got float32[2,7], expected float32[2,8]',
    ...over,
  });

  it("a SHAPE refusal of the running step's INPUT aborts the step at once and rejects it with the stage's reason", async () => {
    const h = harness({ stages: 2 });
    // A step timeout far beyond the test's: only the refusal can end this step.
    h.actor.send({ type: 'START', req: req({ microbatches: 2, feedBound: 2, timeoutMs: 600_000 }) });
    await inState(h, 'draining');
    h.actor.send({ type: 'REJECT', rank: 0, refused: refused() });
    await waitFor(h.actor, (s) => s.matches('idle') && h.failures.length > 0, WAIT);
    expect(h.log).toEqual(['begin 1', 'feed 1 0-2', 'abort 1', 'reject 1 SHAPE']);
    expect(h.failures[0]!.failure).toEqual({ rank: 0, key: 'j/1/0/INPUT', code: 'SHAPE', message: `refused INPUT frame: ${refused().message}` });
  });

  it('a chunk of a FORWARD of the running step received twice with different bytes aborts the step, naming the conflict', async () => {
    const h = harness({ stages: 2 });
    h.actor.send({ type: 'START', req: req({ microbatches: 2, feedBound: 2, timeoutMs: 600_000 }) });
    await inState(h, 'draining');
    const conflict = refused({
      phase: 'FORWARD',
      key: 'j/1/0/FORWARD',
      code: 'CONFLICTING_FRAME',
      message: 'chunk 1/3 of j/1/0/FORWARD from stage.0: received twice',
    });
    h.actor.send({ type: 'REJECT', rank: 1, refused: conflict });
    await waitFor(h.actor, (s) => s.matches('idle') && h.failures.length > 0, WAIT);
    expect(h.log).toEqual(['begin 1', 'feed 1 0-2', 'abort 1', 'reject 1 CONFLICTING_FRAME']);
    expect(h.failures[0]!.failure).toEqual({ rank: 1, key: 'j/1/0/FORWARD', code: 'CONFLICTING_FRAME', message: `refused FORWARD frame: ${conflict.message}` });
  });

  it('a refusal of another step, another phase, a duplicate or a frame without a key is only counted', async () => {
    const h = harness({ stages: 2 });
    h.actor.send({ type: 'START', req: req({ microbatches: 1, feedBound: 1, timeoutMs: 600_000 }) });
    await inState(h, 'draining');
    h.actor.send({ type: 'REJECT', rank: 0, refused: refused({ step: 0, code: 'STALE_STEP' }) });
    h.actor.send({ type: 'REJECT', rank: 0, refused: refused({ step: 2 }) });
    h.actor.send({ type: 'REJECT', rank: 1, refused: refused({ phase: 'FORWARD' }) });
    h.actor.send({ type: 'REJECT', rank: 0, refused: refused({ code: 'DUPLICATE_KEY' }) });
    h.actor.send({ type: 'REJECT', rank: 0, refused: refused({ code: 'FRAME' }) });
    h.actor.send({ type: 'REJECT', rank: 5, refused: refused() }); // no such stage
    h.actor.send({ type: 'REJECT', rank: 0 });
    expect(h.actor.getSnapshot().matches({ active: 'draining' })).toBe(true);
    h.actor.send({ type: 'LOSS', step: 1, microbatch: 0, loss: 0.5, metric: null });
    h.actor.send({ type: 'DONE', rank: 0, step: 1, peakHeld: 1 });
    h.actor.send({ type: 'DONE', rank: 1, step: 1, peakHeld: 1 });
    h.actor.send({ type: 'UPDATED', rank: 0, step: 1 });
    h.actor.send({ type: 'UPDATED', rank: 1, step: 1 });
    await waitFor(h.actor, (s) => s.matches('idle') && h.outcomes.length > 0, WAIT);
    expect(h.failures).toEqual([]);
    expect(h.outcomes[0]!.rejected).toBe(7);
  });

  it('while aborting, a refused INPUT neither restarts abortStep nor replaces the first failure', async () => {
    const gate = deferred<void>();
    const h = harness({ stages: 2, abort: () => gate.promise });
    h.actor.send({ type: 'START', req: req({ microbatches: 2, feedBound: 2, timeoutMs: 600_000 }) });
    await inState(h, 'draining');
    h.actor.send({ type: 'STAGE_ERROR', rank: 1, step: 1, failure: { key: 'j/1/1F0', code: 'COMPUTE', message: 'first' } });
    h.actor.send({ type: 'REJECT', rank: 0, refused: refused() });
    gate.resolve();
    await waitFor(h.actor, (s) => s.matches('idle') && h.failures.length > 0, WAIT);
    expect(h.log).toEqual(['begin 1', 'feed 1 0-2', 'abort 1', 'reject 1 COMPUTE']);
  });
});

/** Reports every loss and DONE of step `step` (m microbatches, `stages` stages), then every UPDATED when it updates. */
function finish(h: Harness, step: number, m: number, stages: number, update = true): void {
  for (let i = 0; i < m; i++) h.actor.send({ type: 'LOSS', step, microbatch: i, loss: 1, metric: null });
  for (let r = 0; r < stages; r++) h.actor.send({ type: 'DONE', rank: r, step, peakHeld: 1 });
  if (update) for (let r = 0; r < stages; r++) h.actor.send({ type: 'UPDATED', rank: r, step });
}

describe('schedulerMachine: the queue of steps (#21 item 1)', () => {
  const two = (step: number, over: Partial<StepRequest> = {}) => req({ step, microbatches: 2, feedBound: 1, ...over });

  it('a step called while one runs is queued, begins early once every stage holds the running plan, and starts fed when the running step ends', async () => {
    const gate = deferred<void>();
    const h = harness({ stages: 2, begin: () => gate.promise });
    h.actor.send({ type: 'RUN', req: two(1) });
    h.actor.send({ type: 'RUN', req: two(2) });
    // Step 1's plans are not acked yet: step 2 waits, its plans unsent.
    expect(h.actor.getSnapshot().context.queue.map((q) => q.step)).toEqual([2]);
    expect(h.queue).toEqual(['starts 1 now']);
    gate.resolve();
    await inState(h, 'feeding');
    expect(h.queue).toEqual(['starts 1 now', 'plan 2']);
    expect(h.actor.getSnapshot().context.early).toEqual({ step: 2, fed: null, failed: null, cancelled: null, held: [] });
    // Step 2's plans acked: its first inputs (its bound) go out at once, while step 1 runs.
    h.planned(2);
    expect(h.log).toEqual(['begin 1', 'feed 1 0-1', 'feed 2 0-1']);
    // Stage 0 finished B0 of step 2 before step 2 started here: held, and counted once it starts.
    h.actor.send({ type: 'ACTION', rank: 0, step: 2, action: 'B0' });
    expect(h.actor.getSnapshot().context.early?.held).toHaveLength(1);
    h.actor.send({ type: 'ACTION', rank: 0, step: 1, action: 'B0' });
    finish(h, 1, 2, 2);
    await waitFor(h.actor, (s) => s.context.req?.step === 2 && s.matches({ active: 'draining' }), WAIT);
    // Step 2 never asked beginStep: it started fed, and its held B0 fed microbatch 1.
    expect(h.log).toEqual(['begin 1', 'feed 1 0-1', 'feed 2 0-1', 'feed 1 1-2', 'grant 1 1', 'update 1 except 1', 'resolve 1', 'feed 2 1-2']);
    expect(h.queue).toEqual(['starts 1 now', 'plan 2', 'starts 2 early']);
    expect(h.actor.getSnapshot().context).toMatchObject({ early: null, queue: [], stage0Done: 1 });
  });

  it('a step queued behind a step whose plans are still being acked early waits for them, then feeds', async () => {
    const h = harness({ stages: 1 });
    h.actor.send({ type: 'RUN', req: two(1, { feedBound: 2 }) });
    await inState(h, 'draining');
    h.actor.send({ type: 'RUN', req: two(2) });
    expect(h.queue).toEqual(['starts 1 now', 'plan 2']);
    finish(h, 1, 2, 1);
    await waitFor(h.actor, (s) => s.context.req?.step === 2, WAIT);
    expect(h.actor.getSnapshot().matches({ active: { starting: 'awaitingPlans' } })).toBe(true);
    expect(h.fed).toEqual([0, 1]);
    h.planned(2);
    await inState(h, 'feeding');
    expect(h.fed).toEqual([0, 1, 0]);
    expect(h.log.filter((l) => l.startsWith('begin'))).toEqual(['begin 1']);
  });

  it('after a step without UPDATE on shared devices the next does not begin early; on devices of their own it does', async () => {
    for (const ordered of [true, false]) {
      const h = harness({ stages: 2 });
      h.actor.send({ type: 'RUN', req: two(1, { forwardOnly: true, update: false, releasedBy: 'F', ordered }) });
      await inState(h, 'feeding');
      h.actor.send({ type: 'RUN', req: two(2) });
      expect(h.queue).toEqual(ordered ? ['starts 1 now'] : ['starts 1 now', 'plan 2']);
    }
  });

  it(`a failure drops the steps queued behind it: a begun one is aborted once its plans are acked, then each is told; \
a step called meanwhile runs after`, async () => {
    const gate = deferred<void>();
    const h = harness({ stages: 2, abort: () => gate.promise });
    h.actor.send({ type: 'RUN', req: two(1) });
    await inState(h, 'feeding');
    h.actor.send({ type: 'RUN', req: two(2) });
    h.actor.send({ type: 'RUN', req: two(3) });
    h.actor.send({ type: 'STAGE_ERROR', rank: 1, step: 1, failure: { key: 'j/1/1F0', code: 'COMPUTE', message: 'boom' } });
    // Step 1 is aborting; step 2's plans are still out.
    gate.resolve();
    await waitFor(h.actor, (s) => s.matches({ settling: 'awaitingPlans' }), WAIT);
    expect(h.log).toEqual(['begin 1', 'feed 1 0-1', 'abort 1', 'reject 1 COMPUTE']);
    h.actor.send({ type: 'RUN', req: two(4) });
    h.planned(2);
    await waitFor(h.actor, (s) => s.context.req?.step === 4, WAIT);
    // Step 2 was aborted on the stages before anyone was told; no input of it went out.
    expect(h.log).toEqual(['begin 1', 'feed 1 0-1', 'abort 1', 'reject 1 COMPUTE', 'abort 2', 'begin 4']);
    expect(h.queue).toEqual(['starts 1 now', 'plan 2', 'drop 2 after 1', 'drop 3 after 1', 'starts 4 now']);
  });

  it('the early plans failing fail that step as it starts (TRANSPORT), after the running one succeeds', async () => {
    const h = harness({ stages: 1 });
    h.actor.send({ type: 'RUN', req: two(1, { feedBound: 2 }) });
    await inState(h, 'draining');
    h.actor.send({ type: 'RUN', req: two(2) });
    h.planned(2, 'stage 0 refused step: STATE: no');
    finish(h, 1, 2, 1);
    await waitFor(h.actor, (s) => s.matches('idle') && h.failures.length > 0, WAIT);
    expect(h.outcomes.map((o) => o.step)).toEqual([1]);
    expect(h.failures[0]).toEqual({ step: 2, failure: { rank: -1, key: 'step 2', code: 'TRANSPORT', message: 'stage 0 refused step: STATE: no' } });
    expect(h.log.slice(-2)).toEqual(['abort 2', 'reject 2 TRANSPORT']);
  });

  it('CANCEL: the running step is aborted with the reason; a queued one is told at once; a begun one is aborted on the stages first', async () => {
    const h = harness({ stages: 2 });
    h.actor.send({ type: 'RUN', req: two(1) });
    await inState(h, 'feeding');
    h.actor.send({ type: 'RUN', req: two(2) });
    h.actor.send({ type: 'RUN', req: two(3) });
    h.actor.send({ type: 'CANCEL', step: 3, code: 'REPLICA_FAILED', message: 'replica 1 failed step 3' });
    expect(h.queue.at(-1)).toBe('cancel 3: replica 1 failed step 3');
    h.actor.send({ type: 'CANCEL', step: 2, code: 'REPLICA_FAILED', message: 'replica 1 failed step 2' });
    expect(h.actor.getSnapshot().context.queue).toEqual([]);
    // Its plans are still out: the abort waits for them.
    expect(h.queue).toEqual(['starts 1 now', 'plan 2', 'cancel 3: replica 1 failed step 3']);
    h.planned(2);
    await vi.waitFor(() => expect(h.queue.at(-1)).toBe('cancel 2: replica 1 failed step 2'));
    expect(h.queue).toContain('abortEarly 2');
    expect(h.fed).toEqual([0]); // nothing of step 2 was fed
    h.actor.send({ type: 'CANCEL', step: 1, code: 'REPLICA_FAILED', message: 'replica 1 failed step 1' });
    await waitFor(h.actor, (s) => s.matches('idle') && h.failures.length > 0, WAIT);
    expect(h.failures[0]).toEqual({ step: 1, failure: { rank: -1, key: 'step 1', code: 'REPLICA_FAILED', message: 'replica 1 failed step 1' } });
    expect(h.log.slice(-2)).toEqual(['abort 1', 'reject 1 REPLICA_FAILED']);
  });

  it('CANCEL while updating aborts the step (stages may wait in an all-reduce), naming who had applied it', async () => {
    const h = harness({ stages: 2 });
    h.actor.send({ type: 'RUN', req: two(1, { feedBound: 2 }) });
    await inState(h, 'draining');
    finish(h, 1, 2, 2, false);
    await inState(h, 'updating');
    h.actor.send({ type: 'UPDATED', rank: 0, step: 1 });
    h.actor.send({ type: 'CANCEL', step: 1, code: 'REPLICA_FAILED', message: 'replica 0 failed' });
    await waitFor(h.actor, (s) => s.matches('idle') && h.failures.length > 0, WAIT);
    expect(h.log.slice(-2)).toEqual(['abort 1', 'reject 1 REPLICA_FAILED']);
    expect(h.failures[0]!.failure.message).toBe('replica 0 failed (during UPDATE: stages 0 had applied it; restore a checkpoint)');
  });
});

describe('schedulerMachine: liveness (#21 item 1)', () => {
  const tick = (now: number, lastAction = now, ran: string[][] = []) => ({ type: 'TICK' as const, now, lastAction, ran });
  const probe = (rank: number, state: string, action: string, awaiting: string[] = []) => ({ rank, step: 1, state, action, awaiting });
  const actions = ['F0 F1 B0 B1', 'F0 B0 F1 B1'];

  it('a stage silent past the liveness timeout fails the step as STAGE_SILENT, naming where it was last seen, and is not asked to abort', async () => {
    const h = harness({ stages: 2, input: { livenessTimeoutMs: 1000 } });
    h.actor.send({ type: 'RUN', req: req({ microbatches: 2, feedBound: 2, actions }) });
    await inState(h, 'draining');
    h.actor.send(tick(100));
    h.actor.send({ type: 'PROBED', rank: 0, reply: probe(0, 'running.waiting', 'B0', ['BACKWARD:0']), at: 150 });
    h.actor.send({ type: 'PROBED', rank: 1, reply: probe(1, 'running.computing', 'F0'), at: 150 });
    h.actor.send({ type: 'PROBED', rank: 0, reply: probe(0, 'running.waiting', 'B0', ['BACKWARD:0']), at: 1050 });
    h.actor.send(tick(1100, 1100, [['F0', 'F1'], []]));
    expect(h.failures).toEqual([]); // stage 1 last answered 950 ms ago
    h.actor.send(tick(1150, 1150, [['F0', 'F1'], []]));
    await waitFor(h.actor, (s) => s.matches('idle') && h.failures.length > 0, WAIT);
    const f = h.failures[0]!.failure;
    expect(f).toMatchObject({ rank: 1, key: 'rank 1', code: 'STAGE_SILENT' });
    expect(f.message).toMatch(
      /^stage 1 answered no liveness probe for 1000 ms; last seen in step 1, state running\.computing at F0\nstep 1, 2 microbatches:\n/,
    );
    expect(f.message).toMatch(/stage 0 {2}running\.waiting {4}F0 F1 \[B0\] ·· {3}waiting for BACKWARD:0/);
    expect(f.message).toMatch(/stage 1 {2}running\.computing {2}\[F0\] ·· ·· ·· {3}at F0/);
    expect(h.log).toEqual(['begin 1', 'feed 1 0-2', 'abort 1 skip 1', 'reject 1 STAGE_SILENT']);
    expect(h.queue).toEqual(['starts 1 now', 'silence: stage 1 answered no liveness probe for 1000 ms; last seen in step 1, state running.computing at F0']);
    expect(h.actor.getSnapshot().context.watch.silent).toEqual([{ rank: 1, step: 1, state: 'running.computing', action: 'F0', awaiting: [] }]);
  });

  it("a stage that never answered is timed from the watch's start; after the silence the watch is over", async () => {
    const h = harness({ stages: 2, input: { livenessTimeoutMs: 500 }, abort: () => new Promise(() => {}) });
    h.actor.send({ type: 'RUN', req: req({ microbatches: 2, feedBound: 2, actions }) });
    await inState(h, 'draining');
    h.actor.send(tick(0));
    h.actor.send({ type: 'PROBED', rank: 1, reply: probe(1, 'running.waiting', 'F0'), at: 400 });
    h.actor.send(tick(500));
    await inState(h, 'aborting');
    expect(h.queue.at(-1)).toBe('silence: stage 0 answered no liveness probe for 500 ms; never answered a probe');
    h.actor.send(tick(5000));
    expect(h.queue.filter((q) => q.startsWith('silence'))).toHaveLength(1);
    expect(h.actor.getSnapshot().context.watch.watching).toBe(false);
  });

  it('a step whose actions stop ending fails as STEP_STALLED with its grid, naming the first stage not done; never while updating', async () => {
    const h = harness({ stages: 2, input: { stallTimeoutMs: 600 } });
    h.actor.send({ type: 'RUN', req: req({ microbatches: 2, feedBound: 2, actions }) });
    await inState(h, 'draining');
    h.actor.send(tick(0));
    h.actor.send({ type: 'PROBED', rank: 0, reply: probe(0, 'running.waiting', 'B0', ['BACKWARD:0']), at: 10 });
    h.actor.send(tick(500, 100, [['F0', 'F1'], []]));
    expect(h.failures).toEqual([]);
    h.actor.send(tick(700, 100, [['F0', 'F1'], []]));
    await waitFor(h.actor, (s) => s.matches('idle') && h.failures.length > 0, WAIT);
    const f = h.failures[0]!.failure;
    expect(f).toMatchObject({ rank: 0, code: 'STEP_STALLED' });
    expect(f.message).toMatch(/^step 1 made no progress for 600 ms\n/);
    expect(f.message).toMatch(/stage 1 {2}\(no answer\) {6}\[F0\] ·· ·· ·· {3}at F0/);
    expect(h.queue.at(-1)).toBe('silence: step 1 made no progress for 600 ms');

    const u = harness({ stages: 1, input: { stallTimeoutMs: 600 } });
    u.actor.send({ type: 'RUN', req: req({ microbatches: 1, feedBound: 1, actions: ['F0 B0'] }) });
    await inState(u, 'draining');
    finish(u, 1, 1, 1, false);
    await inState(u, 'updating');
    u.actor.send(tick(0));
    u.actor.send(tick(10_000, 0));
    expect(u.actor.getSnapshot().matches({ active: 'updating' })).toBe(true);
    expect(u.failures).toEqual([]);
  });
});

describe('livenessProbes: the watch the scheduler invokes', () => {
  it('probes every stage at once and each heartbeat, one probe out per stage at most; the machine fails the silent one, and the watch stops', async () => {
    const asked: number[] = [];
    const never = new Promise<never>(() => {});
    const machine = schedulerMachine.provide({
      actors: {
        beginStep: fromPromise(async () => 0),
        abortStep: fromPromise(async () => {}),
        liveness: livenessProbes({
          probe: async (rank) => {
            asked.push(rank);
            // Stage 1 never answers (a hung process); stage 0 answers at once.
            return rank === 1 ? never : { rank, step: 1, state: 'running.waiting', action: 'F0', awaiting: [] };
          },
          progress: () => ({ lastAction: performance.now(), ran: [] }),
        }),
      },
    });
    const failures: StepFailure[] = [];
    const actor = createActor(machine.provide({ actions: { rejectStep: (_, f) => void failures.push(f.failure) } }), {
      input: { stages: 2, heartbeatMs: 20, livenessTimeoutMs: 150 },
    });
    actor.start();
    actor.send({ type: 'START', req: req({ microbatches: 1, feedBound: 1, timeoutMs: 60_000, actions: ['F0 B0', 'F0 B0'] }) });
    await waitFor(actor, (s) => s.matches('idle') && failures.length > 0, WAIT);
    expect(failures[0]).toMatchObject({ rank: 1, code: 'STAGE_SILENT' });
    expect(failures[0]!.message).toMatch(/^stage 1 answered no liveness probe for \d+ ms; never answered a probe/);
    // Stage 0 was asked at every heartbeat, stage 1 once: its probe never came back.
    expect(asked.filter((r) => r === 1)).toHaveLength(1);
    expect(asked.filter((r) => r === 0).length).toBeGreaterThan(3);
    expect(actor.getSnapshot().context.watch.probes[0]).toMatchObject({ rank: 0, state: 'running.waiting' });
    // The watch ended with the step (its timer cleared as it stopped).
    expect(actor.getSnapshot().children['liveness']).toBeUndefined();
    actor.stop();
  });
});
