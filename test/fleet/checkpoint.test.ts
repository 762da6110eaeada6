import { mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { CheckpointError, loadCheckpoint, saveCheckpoint } from '../../src/fleet/checkpoint.js';
import type { RankState } from '../../src/runtime/stageStates.js';

let dir = '';
afterEach(() => rmSync(dir, { recursive: true, force: true }));
const fresh = () => (dir = mkdtempSync(join(tmpdir(), 'troupe-ckpt-')));

function states(step: number, scale = 1): RankState[] {
  return [0, 1].map((rank) => ({
    rank,
    step,
    weightNames: [`d${rank}/kernel`, `d${rank}/bias`],
    optimizerNames: ['iter'],
    tensors: [
      { name: 'w0', dtype: 'float32', shape: [2, 3], data: Float32Array.from([1, 2, 3, 4, 5, 6].map((v) => v * scale + rank)) },
      { name: 'w1', dtype: 'float32', shape: [3], data: Float32Array.from([0.5, -0.5, 0.25]) },
      { name: 'o0', dtype: 'int32', shape: [], data: Int32Array.from([step]) },
    ],
  }));
}
const meta = (step: number) => ({ step, stages: 2, job: 'j', schedule: '1f1b', microbatches: 4 });

describe('checkpoints', () => {
  it('round-trip every stage: names, dtypes, shapes and bytes', async () => {
    fresh();
    await saveCheckpoint(dir, meta(3), states(3));
    const c = await loadCheckpoint(dir);
    expect(c.meta).toMatchObject(meta(3));
    expect(c.states.map((s) => s.rank)).toEqual([0, 1]);
    c.states.forEach((s, r) => {
      const want = states(3)[r]!;
      expect(s.weightNames).toEqual(want.weightNames);
      expect(s.tensors.map((t) => [t.name, t.dtype, t.shape, Array.from(t.data)])).toEqual(want.tensors.map((t) => [t.name, t.dtype, t.shape, Array.from(t.data)]));
    });
  });

  it('keeps the newest two step directories', async () => {
    fresh();
    for (let s = 1; s <= 4; s++) await saveCheckpoint(dir, meta(s), states(s));
    expect(readdirSync(dir).filter((n) => n.startsWith('step-')).sort()).toEqual(['step-3', 'step-4']);
    expect(readFileSync(join(dir, 'LATEST'), 'utf8')).toBe('step-4');
  });

  it('a new run in an old directory never prunes the checkpoint it just wrote', async () => {
    fresh();
    for (let s = 1; s <= 5; s++) await saveCheckpoint(dir, meta(s), states(s));
    await saveCheckpoint(dir, meta(1), states(1, 3)); // a fresh run from step 1, same directory
    const c = await loadCheckpoint(dir);
    expect(c.meta.step).toBe(1);
    expect(Array.from(c.states[0]!.tensors[0]!.data)).toEqual([3, 6, 9, 12, 15, 18]);
    expect(readdirSync(dir).filter((n) => n.startsWith('step-'))).toEqual(['step-1']);
  });

  it('a crash before LATEST moves leaves the previous checkpoint in force', async () => {
    fresh();
    await saveCheckpoint(dir, meta(4), states(4));
    // A save of step 5 that died half-way: a temporary directory with a truncated stage file.
    const tmp = join(dir, '.step-5.tmp-999');
    mkdirSync(tmp);
    writeFileSync(join(tmp, 'stage-0.bin'), new Uint8Array(3));
    // And one that died after renaming its directory but before moving LATEST.
    await saveCheckpoint(join(dir, 'other'), meta(5), states(5, 2));
    renameSync(join(dir, 'other', 'step-5'), join(dir, 'step-5'));
    const c = await loadCheckpoint(dir);
    expect(c.meta.step).toBe(4);
    expect(Array.from(c.states[0]!.tensors[0]!.data)).toEqual([1, 2, 3, 4, 5, 6]);
  });

  it('refuses a missing, misnamed or corrupt checkpoint with CheckpointError naming the problem', async () => {
    fresh();
    await expect(loadCheckpoint(dir)).rejects.toThrow(CheckpointError);
    await saveCheckpoint(dir, meta(2), states(2));
    truncateSync(join(dir, 'step-2', 'stage-1.bin'), 10);
    await expect(loadCheckpoint(dir)).rejects.toThrow(/step-2: checkpoint .*step-2 is unreadable: 10 bytes received, the headers announce \d+/);
    writeFileSync(join(dir, 'LATEST'), '../../etc');
    await expect(loadCheckpoint(dir)).rejects.toThrow(/LATEST: names "..\/..\/etc"/);
  });

  it('a truncated or altered newest checkpoint is refused, naming why, and the one before it is used', async () => {
    fresh();
    await saveCheckpoint(dir, meta(3), states(3));
    await saveCheckpoint(dir, meta(4), states(4));
    // One flipped byte in the body keeps its length: only the hash tells.
    const bin = join(dir, 'step-4', 'stage-0.bin');
    const bytes = readFileSync(bin);
    bytes[bytes.length - 1] = bytes[bytes.length - 1]! ^ 0xff;
    writeFileSync(bin, bytes);
    const c = await loadCheckpoint(dir);
    expect(c.meta.step).toBe(3);
    expect(c.skipped).toEqual([{ name: 'step-4', reason: expect.stringMatching(/stage-0\.bin does not match its SHA-256 \(altered\)/) }]);
    // A truncated meta.json: refused the same way.
    writeFileSync(join(dir, 'step-4', 'meta.json'), '{"step": 4, "sta');
    expect((await loadCheckpoint(dir)).skipped[0]!.reason).toMatch(/meta\.json|JSON/);
  });
});
