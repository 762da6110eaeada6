/**
 * The job actor in memory: its actors are fakes that record what they are asked and wait
 * where a test holds them; its actions record what they would print or do.
 */
import { describe, expect, it } from 'vitest';
import { createActor, fromPromise, waitFor, type Actor } from 'xstate';
import { jobMachine, type JobInput, type RecoverInput, type StepInput, type WorkerLoss } from '../../actors/jobMachine.js';
import { StageError, StateError, TransportError } from '../../src/errors.js';
import { deferred, type Deferred } from '../../src/runtime/deferred.js';

const WAIT = { timeout: 3000 };

interface Harness {
  readonly actor: Actor<typeof jobMachine>;
  /** `step 3 ahead`, `keep 3`, `recover kept 3 (rank 1 WORKER_DIED)`, `restart worker 1 at step 4 round 1`, ... in order. */
  readonly log: string[];
  /** Each recovery round's signal, in order. */
  readonly rounds: AbortSignal[];
  /** Errors the host was given to keep, in order. */
  readonly errors: unknown[];
  /** Holds step `s` (its result or failure is the test's), when set before the step starts. */
  readonly held: Map<number, Deferred<{ loss: number; metric: number | null }>>;
  /** Holds the next recovery rounds, in order. */
  readonly roundGates: Deferred<void>[];
}

function harness(input: Partial<JobInput> = {}, grace = 100, keepEvery: (number | null)[] = []): Harness {
  const log: string[] = [];
  const rounds: AbortSignal[] = [];
  const errors: unknown[] = [];
  const held = new Map<number, Deferred<{ loss: number; metric: number | null }>>();
  const roundGates: Deferred<void>[] = [];
  const machine = jobMachine.provide({
    actors: {
      prepare: fromPromise<void>(async () => {
        log.push('prepare');
      }),
      awaitWorkers: fromPromise<void>(async () => {
        log.push('await workers');
      }),
      load: fromPromise<void>(async () => {
        log.push('load');
      }),
      step: fromPromise<{ loss: number; metric: number | null }, StepInput>(async ({ input }) => {
        log.push(`step ${input.step}${input.ahead ? ' ahead' : ''}`);
        const h = held.get(input.step);
        held.delete(input.step);
        return h ? h.promise : { loss: input.step, metric: null };
      }),
      keep: fromPromise<{ keepEvery: number | null }, { step: number }>(async ({ input }) => {
        log.push(`keep ${input.step}`);
        return { keepEvery: keepEvery.shift() ?? null };
      }),
      evaluate: fromPromise<void>(async () => {
        log.push('evaluate');
      }),
      finish: fromPromise<void>(async () => {
        log.push('finish');
      }),
      recover: fromPromise<void, RecoverInput>(async ({ input, signal }) => {
        rounds.push(signal);
        log.push(`recover kept ${input.kept} (rank ${input.cause.rank} ${input.cause.code})${input.serverDown ? ' server' : ''}`);
        const gate = roundGates.shift();
        if (gate) await gate.promise;
      }),
    },
    actions: {
      restartWorkers: (_, a) => {
        for (const l of a.losses) log.push(`restart worker ${l.worker} at ${a.at} round ${a.round} (${a.restarts} of ${a.limit})`);
        if (a.outage) log.push(`outage at ${a.at}: ${a.outage}`);
      },
      killSilent: (_, { rank }) => void log.push(`kill silent ${rank}`),
      recordStep: () => {},
      recovered: (_, { kept, at }) => void log.push(`recovered: kept ${kept}, was at ${at}`),
      keepError: (_, { error }) => void errors.push(error),
    },
    delays: { grace },
  });
  const actor = createActor(machine, { input: { step: 0, total: 6, keepEvery: 3, checkpoint: false, restartLimit: 2, evaluate: true, ...input } });
  return { actor, log, rounds, errors, held, roundGates };
}

const loss = (worker: number, ranks = [worker]): { type: 'WORKER_LOST'; loss: WorkerLoss } => ({
  type: 'WORKER_LOST',
  loss: { worker, why: `worker ${worker} exited with SIGKILL`, respawn: true, ranks },
});

describe('job machine', () => {
  it('trains every step, keeping the state every keepEvery steps and at the end; steps run ahead only when no keep follows', async () => {
    const h = harness({ total: 7, keepEvery: 3 });
    h.actor.start();
    const end = await waitFor(h.actor, (s) => s.status === 'done', WAIT);
    expect(end.value).toBe('done');
    expect(h.log).toEqual([
      'prepare',
      'await workers',
      'load',
      'step 1 ahead',
      'step 2 ahead',
      'step 3',
      'keep 3',
      'step 4 ahead',
      'step 5 ahead',
      'step 6',
      'keep 6',
      'step 7',
      'keep 7',
      'evaluate',
      'finish',
    ]);
  });

  it('a keep may revise the cadence of the next ones (the host measures what a keep costs)', async () => {
    const h = harness({ total: 12, keepEvery: 2 }, 100, [5]);
    h.actor.start();
    await waitFor(h.actor, (s) => s.status === 'done', WAIT);
    expect(h.log.filter((l) => l.startsWith('keep'))).toEqual(['keep 2', 'keep 7', 'keep 12']);
  });

  it('without restarts the state is kept at the end only, and with a checkpoint directory after every step', async () => {
    const none = harness({ total: 3, restartLimit: 0 });
    none.actor.start();
    await waitFor(none.actor, (s) => s.status === 'done', WAIT);
    expect(none.log.filter((l) => l.startsWith('keep') || l.startsWith('step'))).toEqual(['step 1 ahead', 'step 2 ahead', 'step 3', 'keep 3']);
    const every = harness({ total: 3, checkpoint: true });
    every.actor.start();
    await waitFor(every.actor, (s) => s.status === 'done', WAIT);
    expect(every.log.filter((l) => l.startsWith('keep') || l.startsWith('step'))).toEqual(['step 1', 'keep 1', 'step 2', 'keep 2', 'step 3', 'keep 3']);
  });

  it('a lost worker: restarted, the kept state loaded, and the steps since replayed', async () => {
    const h = harness({ total: 6, keepEvery: 3 });
    const step5 = deferred<{ loss: number; metric: number | null }>();
    h.held.set(5, step5);
    h.actor.start();
    await waitFor(h.actor, (s) => s.matches({ live: 'stepping' }) && s.context.step === 4, WAIT);
    h.actor.send(loss(1));
    step5.reject(new StageError(1, 'rank 1', 'WORKER_DIED: gone', { reason: 'WORKER_DIED' }));
    const end = await waitFor(h.actor, (s) => s.status === 'done', WAIT);
    expect(end.context.restarts).toBe(1);
    const from = h.log.indexOf('restart worker 1 at step 5 round 1 (1 of 2)');
    expect(h.log.slice(from)).toEqual([
      'restart worker 1 at step 5 round 1 (1 of 2)',
      'recover kept 3 (rank 1 WORKER_DIED)',
      'recovered: kept 3, was at step 5',
      'step 4 ahead',
      'step 5 ahead',
      'step 6',
      'keep 6',
      'evaluate',
      'finish',
    ]);
  });

  it(`a loss during a recovery starts it over: the abandoned round is stopped (its signal aborted) before the next begins; \
two losses at once are two restarts`, async () => {
    const h = harness({ restartLimit: 3 });
    const first = deferred<void>();
    const second = deferred<void>();
    h.roundGates.push(first, second);
    const step2 = deferred<{ loss: number; metric: number | null }>();
    h.held.set(2, step2);
    h.actor.start();
    await waitFor(h.actor, (s) => s.matches({ live: 'stepping' }) && s.context.step === 1, WAIT);
    h.actor.send(loss(0));
    h.actor.send(loss(2));
    await waitFor(h.actor, () => h.rounds.length === 2, WAIT);
    expect(h.rounds[0]!.aborted).toBe(true);
    // The replacement dies while the second round runs: a third round.
    h.actor.send(loss(0));
    await waitFor(h.actor, () => h.rounds.length === 3, WAIT);
    expect(h.rounds.map((r) => r.aborted)).toEqual([true, true, false]);
    // The abandoned rounds ending now change nothing.
    first.resolve();
    second.resolve();
    const end = await waitFor(h.actor, (s) => s.status === 'done', WAIT);
    expect(end.context.restarts).toBe(3);
    expect(h.log.filter((l) => l.startsWith('restart') || l.startsWith('recover'))).toEqual([
      'restart worker 0 at step 2 round 1 (1 of 3)',
      'recover kept 0 (rank 0 WORKER_DIED)',
      'restart worker 2 at step 2 round 2 (2 of 3)',
      'recover kept 0 (rank 0 WORKER_DIED)',
      'restart worker 0 at step 2 round 3 (3 of 3)',
      'recover kept 0 (rank 0 WORKER_DIED)',
      'recovered: kept 0, was at step 2',
    ]);
  });

  it('past the restart limit the run fails, naming the worker and the limit', async () => {
    const h = harness({ restartLimit: 1 });
    h.roundGates.push(deferred<void>());
    h.actor.start();
    await waitFor(h.actor, (s) => s.matches({ live: 'stepping' }), WAIT);
    h.actor.send(loss(0));
    await waitFor(h.actor, (s) => s.matches({ live: 'recovering' }), WAIT);
    h.actor.send(loss(1));
    const end = await waitFor(h.actor, (s) => s.status === 'done', WAIT);
    expect(end.value).toBe('failed');
    expect(h.errors.at(-1)).toBeInstanceOf(StateError);
    expect((h.errors.at(-1) as Error).message).toBe('worker 1 exited with SIGKILL during the run (restart limit 1 reached)');
  });

  it('a failed step waits the grace for the death that caused it; a silent stage is killed first; with no death it fails with the step error', async () => {
    const h = harness({}, 200);
    const step1 = deferred<{ loss: number; metric: number | null }>();
    h.held.set(1, step1);
    h.actor.start();
    await waitFor(h.actor, (s) => s.matches({ live: 'stepping' }), WAIT);
    step1.reject(new StageError(1, 'rank 1', 'STAGE_SILENT: stage 1 answered no liveness probe', { reason: 'STAGE_SILENT' }));
    await waitFor(h.actor, (s) => s.matches({ live: { troubled: 'killing' } }), WAIT);
    expect(h.log).toContain('kill silent 1');
    h.actor.send(loss(1));
    await waitFor(h.actor, (s) => s.status === 'done', WAIT);
    expect(h.log).toContain('restart worker 1 at step 1 round 1 (1 of 2)');

    const f = harness({}, 50);
    const broken = deferred<{ loss: number; metric: number | null }>();
    f.held.set(2, broken);
    f.actor.start();
    await waitFor(f.actor, (s) => s.matches({ live: 'stepping' }) && s.context.step === 1, WAIT);
    const why = new StageError(0, 'x', 'SHAPE: bad');
    broken.reject(why);
    const end = await waitFor(f.actor, (s) => s.status === 'done', WAIT);
    expect(end.value).toBe('failed');
    expect(f.errors.at(-1)).toBe(why);
  });

  it('a silent stage with no restart left is not killed: the run fails with the silence (STAGE_SILENT), not with the kill', async () => {
    const h = harness({ restartLimit: 1, total: 3 }, 30);
    h.held.set(1, deferred());
    const round = deferred<void>();
    h.roundGates.push(round);
    h.actor.start();
    await waitFor(h.actor, (s) => s.matches({ live: 'stepping' }), WAIT);
    h.actor.send(loss(0)); // the one restart is spent on step 1
    await waitFor(h.actor, (s) => s.matches({ live: 'recovering' }), WAIT);
    const step2 = deferred<{ loss: number; metric: number | null }>();
    h.held.set(2, step2);
    round.resolve();
    await waitFor(h.actor, (s) => s.matches({ live: 'stepping' }) && s.context.step === 1 && s.context.restarts === 1, WAIT);
    const silent = new StageError(1, 'rank 1', 'STAGE_SILENT: stage 1 answered no liveness probe', { reason: 'STAGE_SILENT' });
    step2.reject(silent);
    const end = await waitFor(h.actor, (s) => s.status === 'done', WAIT);
    expect(end.value).toBe('failed');
    expect(h.log).not.toContain('kill silent 1');
    expect(h.errors.at(-1)).toBe(silent);
  });

  it('a stage that reconnected to NATS, or the driver reconnecting, replays the step without a restart; a dead nats-server counts as one', async () => {
    const h = harness();
    const step1 = deferred<{ loss: number; metric: number | null }>();
    h.held.set(1, step1);
    h.held.set(3, deferred());
    h.actor.start();
    await waitFor(h.actor, (s) => s.matches({ live: 'stepping' }), WAIT);
    step1.reject(new StageError(1, 'r', 'NATS_RECONNECT: lost', { reason: 'NATS_RECONNECT' }));
    await waitFor(h.actor, (s) => s.matches({ live: 'stepping' }) && s.context.step === 2, WAIT);
    expect(h.log).toContain('outage at step 1: stage 1 lost its NATS connection');
    expect(h.actor.getSnapshot().context.restarts).toBe(0);
    h.actor.send({ type: 'NATS_LOST', why: 'nats-server (pid 7) exited', server: true });
    const end = await waitFor(h.actor, (s) => s.status === 'done', WAIT);
    expect(end.context.restarts).toBe(1);
    expect(h.log.some((l) => / server$/.test(l))).toBe(true);
  });

  it.each([
    ['before', true],
    ['after', false],
  ])(
    'without restarts a lost NATS connection fails the run at once, naming it (a dead server, told %s the disconnect, named instead)',
    async (_, serverFirst) => {
      const h = harness({ restartLimit: 0 }, 100);
      h.held.set(2, deferred());
      h.actor.start();
      await waitFor(h.actor, (s) => s.matches({ live: 'stepping' }) && s.context.step === 1, WAIT);
      const disconnect = { type: 'NATS_LOST', why: 'the driver lost its NATS connection to 127.0.0.1:4222', server: false } as const;
      const died = { type: 'NATS_LOST', why: 'nats-server (pid 7) exited', server: true } as const;
      for (const e of serverFirst ? [died, disconnect] : [disconnect, died]) h.actor.send(e);
      const end = await waitFor(h.actor, (s) => s.status === 'done', WAIT);
      expect(end.value).toBe('failed');
      const err = h.errors.at(-1) as Error;
      expect(err).toBeInstanceOf(TransportError);
      expect(err.message).toBe(
        'nats-server (pid 7) exited during step 2: frames in flight may be lost; troupe up --restarts replays such a step on a nats-server started again',
      );
    },
  );

  it('without restarts a disconnect alone fails the run, naming the server it was connected to', async () => {
    const h = harness({ restartLimit: 0 }, 50);
    h.held.set(2, deferred());
    h.actor.start();
    await waitFor(h.actor, (s) => s.matches({ live: 'stepping' }) && s.context.step === 1, WAIT);
    h.actor.send({ type: 'NATS_LOST', why: 'the driver lost its NATS connection to 127.0.0.1:4222', server: false });
    await waitFor(h.actor, (s) => s.status === 'done', WAIT);
    expect((h.errors.at(-1) as Error).message).toBe(
      'the driver lost its NATS connection to 127.0.0.1:4222 during step 2: frames in flight may be lost; troupe up --restarts replays such a step',
    );
  });

  it('a failed step with no loss told: a census of the remote workers finds one gone, and the run waits for its replacement', async () => {
    const h = harness({}, 30);
    const machine = h.actor.logic.provide({
      actors: {
        census: fromPromise<WorkerLoss[]>(async () => [{ worker: 1, why: "rank 1's worker (pid 9 on b) answers no ping", respawn: false, ranks: [1] }]),
      },
    });
    const actor = createActor(machine, { input: { step: 0, total: 3, keepEvery: 3, checkpoint: false, restartLimit: 1, evaluate: false } });
    const step2 = deferred<{ loss: number; metric: number | null }>();
    h.held.set(2, step2);
    actor.start();
    await waitFor(actor, (s) => s.matches({ live: 'stepping' }) && s.context.step === 1, WAIT);
    step2.reject(new TransportError('request to troupe.j.ctl.1.step failed: 503'));
    const end = await waitFor(actor, (s) => s.status === 'done', WAIT);
    expect(end.value).toBe('done');
    expect(end.context.restarts).toBe(1);
    expect(h.log).toContain('restart worker 1 at step 2 round 1 (1 of 1)');
  });

  it('INTERRUPT ends the run from any state', async () => {
    const h = harness();
    h.held.set(1, deferred());
    h.actor.start();
    await waitFor(h.actor, (s) => s.matches({ live: 'stepping' }), WAIT);
    h.actor.send({ type: 'INTERRUPT' });
    expect(h.actor.getSnapshot().value).toBe('interrupted');
  });
});
