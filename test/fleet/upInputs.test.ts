/** `troupe up` with inputs that do not fit the model: refused at once, naming them, and nothing left running. */
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { alive, printedPids, troupe } from '../helpers/troupeCli.js';

const MISMATCH = fileURLToPath(new URL('../fixtures/tiny-mismatch.job.ts', import.meta.url));

describe('troupe up with inputs the model does not take', () => {
  it('a data set of the wrong width fails before any process starts, naming the tensor and both shapes', async () => {
    const run = troupe(['up', MISMATCH], { TINY_DATA_WIDTH: '7' });
    const { code } = await run.exit;
    expect(code, run.output()).toBe(1);
    expect(run.output()).toMatch(/field "data": train: input x0: got float32\[32,7\], expected float32\[32,8\] \(the model's input 0\)/);
    expect(printedPids(run.output())).toEqual([]); // no nats-server, no worker
  });

  it("an INPUT frame the workers' stage refuses fails the first step at once with the stage's reason, and every process ends", async () => {
    // The workers' model takes [2, 4] inputs; the driver's (and its check) 8 features; the step timeout is ten minutes.
    const run = troupe(['up', MISMATCH]);
    const { code } = await run.exit;
    const out = run.output();
    expect(code, out).toBe(1);
    expect(out).toMatch(
      /stage 0 failed at tiny-mismatch\/1\/[01]\/INPUT: SHAPE: refused INPUT frame: .*inputs tensor 0: got float32\[8,8\], expected float32\[8,2,4\]/,
    );
    expect(out).not.toMatch(/StepTimeoutError|did not finish within/);
    const pids = printedPids(out);
    expect(pids).toHaveLength(3); // nats-server and two workers
    for (const pid of pids) expect(alive(pid), `pid ${pid} still running`).toBe(false);
  });
});
