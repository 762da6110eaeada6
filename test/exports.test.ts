/**
 * The package's surface: a small root entry, subpath entries for the internals, every error
 * class in errors.ts, and machines a user can run with implementations of their own, using
 * nothing but what `troupe/actors` and `troupe/protocol` export.
 */
import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { createActor, waitFor } from 'xstate';
import { actionRunner, stageMachine, updateRunner, type ExecuteInput, type Frame, type StageEvent, type StepPlan, type WireTensor } from '../actors/index.js';
import { Phase } from '../src/protocol/index.js';

const ROOT = new URL('../', import.meta.url);
const pkg = JSON.parse(readFileSync(new URL('package.json', ROOT), 'utf8')) as {
  exports: Record<string, string | { types: string; import: string; default: string }>;
};
/** Each subpath of package.json's exports with the source file its compiled entry comes from. */
const entries = Object.entries(pkg.exports)
  .filter((e): e is [string, { types: string; import: string; default: string }] => typeof e[1] !== 'string')
  .map(([sub, e]) => ({ sub, ...e, source: fileURLToPath(new URL(e.import.replace(/^\.\/dist\//, '').replace(/\.js$/, '.ts'), ROOT)) }));

describe('package entries', () => {
  it('the root exports at most 30 runtime names, among them what a user needs', async () => {
    const root = await import('../src/index.js');
    const names = Object.keys(root);
    expect(names.length, names.join(', ')).toBeLessThanOrEqual(30);
    for (const n of ['createPipeline', 'defineJob', 'runJob', 'startNatsServer', 'loadModel', 'buildSchedule', 'simulate', 'ConfigError', 'StageError'])
      expect(names).toContain(n);
  });

  it('every subpath names its types and compiled module, built from a source entry that exists and exports something', async () => {
    expect(entries.map((e) => e.sub)).toEqual(expect.arrayContaining(['.', './actors', './protocol', './transport', './runtime', './fleet', './errors']));
    for (const e of entries) {
      expect(e.types, e.sub).toBe(e.import.replace(/\.js$/, '.d.ts'));
      expect(e.default, e.sub).toBe(e.import);
      expect(existsSync(e.source), `${e.sub}: ${e.source}`).toBe(true);
      expect(Object.keys(await import(e.source)).length, e.sub).toBeGreaterThan(0);
    }
  });

  it('every error class an entry exports is defined in errors.ts, and the root exports them all', async () => {
    const errors: Record<string, unknown> = await import('../src/errors.js');
    const root: Record<string, unknown> = await import('../src/index.js');
    const defined = new Set(Object.values(errors));
    for (const e of entries) {
      for (const [name, v] of Object.entries((await import(e.source)) as Record<string, unknown>)) {
        if (typeof v === 'function' && v.prototype instanceof Error) expect(defined.has(v), `${e.sub} exports ${name}, not from errors.ts`).toBe(true);
      }
    }
    for (const [name, v] of Object.entries(errors)) if (typeof v === 'function' && v.prototype instanceof Error) expect(root[name], name).toBe(v);
  });
});

describe('troupe/actors', () => {
  it("runs the stage machine with a user's own compute and update, and reports through the user's actions", async () => {
    const tensor = (name: string, shape: number[]): WireTensor => ({ name, dtype: 'float32', shape, data: new Float32Array(shape[0]! * shape[1]!) });
    const frame: Frame = {
      key: { job: 'mine', step: 1, microbatch: 0, phase: Phase.INPUT },
      from: 'me',
      tensors: [tensor('x0', [2, 3]), tensor('y0', [2, 1])],
    };
    const plan: StepPlan = {
      step: 1,
      microbatches: 1,
      batchSize: 2,
      totalBatch: 2,
      forwardOnly: false,
      predict: false,
      update: true,
      granted: true,
      actions: 'F0 B0',
      order: '',
    };
    const log: string[] = [];
    const machine = stageMachine.provide({
      actions: {
        startRun: actionRunner(
          async (input: ExecuteInput) => void log.push(`${input.action.kind}${input.action.microbatch} with ${input.frames.length} frame`),
        ),
        startUpdate: updateRunner(async (step) => void log.push(`update ${step}`)),
        reportDone: (_, { step }) => void log.push(`done ${step}`),
        reportUpdated: (_, { step }) => void log.push(`updated ${step}`),
      },
    });
    const actor = createActor(machine, {
      input: { job: 'mine', rank: 0, stages: 1, inputs: [{ shape: [3], dtype: 'float32' }], outputs: [{ shape: [1], dtype: 'float32' }] },
    });
    actor.start();
    await waitFor(actor, (s) => s.matches('idle'), { timeout: 2000 });
    const events: StageEvent[] = [
      { type: 'STEP', plan },
      { type: 'FRAME', frame },
    ];
    for (const e of events) actor.send(e);
    await waitFor(actor, (s) => s.matches('idle') && s.context.step === 1, { timeout: 2000 });
    expect(log).toEqual(['F0 with 1 frame', 'B0 with 0 frame', 'done 1', 'update 1', 'updated 1']);
    actor.stop();
  });
});
