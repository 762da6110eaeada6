/**
 * What --restarts costs while nothing fails (#20.7): the driver keeps the stages' state every
 * few steps, not after every one, so stage 0 sends little more than without restarts (the
 * time is compared side by side in bench/restarts.ts, not here).
 */
import { describe, expect, it } from 'vitest';
import { fileURLToPath } from 'node:url';
import type { RunSummary } from '../../src/fleet/summary.js';
import { keepCadence, keepCadenceByTime } from '../../src/fleet/keepCadence.js';
import type { StagePartition } from '../../src/compute/partition.js';
import { troupe } from '../helpers/troupeCli.js';

const CONFIG = fileURLToPath(new URL('../fixtures/tiny.job.ts', import.meta.url));

async function summary(args: readonly string[]): Promise<RunSummary> {
  const r = troupe(['up', CONFIG, '--json', '-q', ...args]);
  const { code } = await r.exit;
  expect(code, r.output()).toBe(0);
  return JSON.parse(r.stdout()) as RunSummary;
}

const stage = (inputs: number[][], outputs: number[][]) =>
  ({
    inputs: inputs.map((shape) => ({ shape, dtype: 'float32' })),
    outputs: outputs.map((shape) => ({ shape, dtype: 'float32' })),
  }) as unknown as StagePartition;

describe('--restarts keeps state every few steps', () => {
  it('keepCadence: keeping moves at most a quarter of the bytes the steps move, at least every step, at most every 100', () => {
    // Two stages, 16 rows: 16 x (8 inputs + 2 x 16 across the cut + 3 labels) x 4 bytes = 2,752 bytes a step.
    const parts = [stage([[8]], [[16]]), stage([[16]], [[3]])];
    expect(keepCadence(parts, 16, 2_752 / 4)).toBe(1);
    expect(keepCadence(parts, 16, 2_752 / 4 + 1)).toBe(2);
    expect(keepCadence(parts, 16, 5_600)).toBe(9);
    expect(keepCadence(parts, 16, 1e12)).toBe(100);
    expect(keepCadence(parts, 16, 0)).toBe(1);
  });

  it('keepCadenceByTime: after a keep, rarely enough that keeping takes at most 4 % of the steps between, never more often than the bytes allow', () => {
    // A keep of 500 ms against steps of 200 ms (the median of the recent ones): 500 / (0.04 x 200) = 62.5 -> 63.
    expect(keepCadenceByTime(11, 500, [210, 190, 200, 5_000, 200])).toBe(63);
    expect(keepCadenceByTime(11, 10, [200, 200])).toBe(11);
    expect(keepCadenceByTime(11, 1e6, [1])).toBe(100);
    expect(keepCadenceByTime(3, 500, [])).toBe(3);
  });

  it('stage 0 sends at most 1.5x the bytes of a run without --restarts (it sent its whole state after every step), and the weights are the same', async () => {
    const without = await summary([]);
    const withRestarts = await summary(['--restarts', '2']);
    const bytes = (s: RunSummary) => s.stages.find((st) => st.rank === 0)!.bytesOut;
    const ratio = bytes(withRestarts) / bytes(without);
    console.log(`stage 0 sent ${bytes(without)} bytes without --restarts, ${bytes(withRestarts)} with (${ratio.toFixed(2)}x)`);
    expect(ratio).toBeLessThanOrEqual(1.5);
    expect(withRestarts.losses).toEqual(without.losses);
    // --keep-every 1 keeps the state after every step, as --restarts used to: it costs more.
    const everyStep = await summary(['--restarts', '2', '--keep-every', '1']);
    expect(bytes(everyStep)).toBeGreaterThan(bytes(withRestarts));
    expect(everyStep.losses).toEqual(without.losses);
  }, 90_000);
});
