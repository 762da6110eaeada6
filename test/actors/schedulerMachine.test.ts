/**
 * The scheduler actor in memory: beginStep / abortStep are fakes, and the feed, update,
 * resolve and reject actions only record what they are asked to do.
 */
import { describe, expect, it, vi } from 'vitest';
import { createActor, fromPromise, waitFor, type Actor } from 'xstate';
import { deferred, type Deferred } from '../../src/runtime/deferred.js';
import { schedulerMachine, type StepFailure, type StepOutcome, type StepRequest } from '../../actors/schedulerMachine.js';

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
}

interface HarnessOptions {
  readonly stages?: number;
  readonly begin?: () => Promise<void>;
  readonly abort?: () => Promise<void>;
  /** What beginStep resolves to: microbatches fed before START (a step begun early). */
  readonly alreadyFed?: number;
}

function harness(o: HarnessOptions = {}): Harness {
  const log: string[] = [];
  const fed: number[] = [];
  const outcomes: StepOutcome[] = [];
  const failures: { step: number; failure: StepFailure }[] = [];
  const machine = schedulerMachine.provide({
    actors: {
      beginStep: fromPromise<number, StepRequest>(async ({ input }) => {
        log.push(`begin ${input.step}`);
        await o.begin?.();
        return o.alreadyFed ?? 0;
      }),
      abortStep: fromPromise<void, { step: number }>(async ({ input }) => {
        log.push(`abort ${input.step}`);
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
    },
  });
  const actor = createActor(machine, { input: { stages: o.stages ?? 3 } });
  actor.start();
  return { actor, log, fed, outcomes, failures };
}

function req(over: Partial<StepRequest> = {}): StepRequest {
  return { step: 1, microbatches: 6, forwardOnly: false, update: !over.forwardOnly, feedBound: 2, timeoutMs: 10_000, releasedBy: over.forwardOnly ? 'F' : 'B', grantInPlan: false, ...over };
}

const inState = (h: Harness, child: 'starting' | 'feeding' | 'draining' | 'updating' | 'aborting') => waitFor(h.actor, (s) => s.matches({ active: child }), WAIT);

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

  it('after every LOSS and DONE it sends UPDATE (early to the last stage running), and resolves after every UPDATED with losses in microbatch order', async () => {
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
    for (const [step, over] of [[2, { forwardOnly: true }], [3, { update: false }]] as const) {
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
    expect(h.outcomes.map((o) => o.lossShares)).toEqual([[1, 1], [2, 2]]);
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
  const refused = (over: Partial<{ step: number; phase: string; code: string }> = {}) => ({
    step: 1, phase: 'INPUT', key: 'j/1/0/INPUT', code: 'SHAPE', message: 'j/1/0/INPUT inputs tensor 0: got float32[2,7], expected float32[2,8]', ...over,
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
