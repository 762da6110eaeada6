import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { CheckpointError, hasCheckpoint, loadCheckpoint, prepareCheckpointDir, saveCheckpoint } from '../../src/fleet/checkpoint.js';
import { checkpointIo } from '../../src/fleet/checkpointIo.js';
import { deferred } from '../../src/runtime/deferred.js';
import type { RankState } from '../../src/runtime/stageStates.js';

let dir = '';
afterEach(() => {
  vi.restoreAllMocks();
  rmSync(dir, { recursive: true, force: true });
});
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
      expect(s.tensors.map((t) => [t.name, t.dtype, t.shape, Array.from(t.data)])).toEqual(
        want.tensors.map((t) => [t.name, t.dtype, t.shape, Array.from(t.data)]),
      );
    });
  });

  it('keeps the newest two step directories', async () => {
    fresh();
    for (let s = 1; s <= 4; s++) await saveCheckpoint(dir, meta(s), states(s));
    expect(
      readdirSync(dir)
        .filter((n) => n.startsWith('step-'))
        .sort(),
    ).toEqual(['step-3', 'step-4']);
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

  it('a full disk (a real ENOSPC from /dev/full) fails the save with CheckpointError naming step, file and cause; nothing half-written stays', async () => {
    fresh();
    await saveCheckpoint(dir, meta(2), states(2));
    // The seam: stage 1's body goes to /dev/full, which refuses every write as a full disk does.
    vi.spyOn(checkpointIo, 'open').mockImplementation(((path: string, flags: string) =>
      open(String(path).endsWith('stage-1.bin') ? '/dev/full' : path, flags)) as typeof checkpointIo.open);
    const err = await saveCheckpoint(dir, meta(3), states(3)).then(
      () => null,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(CheckpointError);
    const e = err as CheckpointError;
    expect(e.step).toBe(3);
    expect(e.path).toBe(join(dir, `.step-3.tmp-${process.pid}`, 'stage-1.bin'));
    expect((e.cause as NodeJS.ErrnoException).code).toBe('ENOSPC');
    expect(e.message).toMatch(
      /^checkpoint of step 3 could not be written to .*: ENOSPC: no space left on device.*stage-1\.bin.*; the previous checkpoint is still the latest$/,
    );
    vi.restoreAllMocks();
    expect(readdirSync(dir).sort()).toEqual(['LATEST', 'step-2']);
    expect((await loadCheckpoint(dir)).meta.step).toBe(2);
  });

  it(`two saves of one step at once (a keep abandoned mid-save, and the replay's keep): the second touches nothing until the first \
is done, and both succeed`, async () => {
    fresh();
    await saveCheckpoint(dir, meta(2), states(2));
    // The first save is held as it moves its step directory into place.
    const entered = deferred<void>();
    const release = deferred<void>();
    const calls: string[] = [];
    let held = false;
    const real = { ...checkpointIo };
    for (const k of Object.keys(real) as (keyof typeof checkpointIo)[]) {
      vi.spyOn(checkpointIo, k).mockImplementation((async (...a: unknown[]) => {
        calls.push(`${k} ${String(a[0])}`);
        if (k === 'rename' && !held) {
          held = true;
          entered.resolve();
          await release.promise;
        }
        return (real[k] as (...b: unknown[]) => Promise<unknown>)(...a);
      }) as never);
    }
    const first = saveCheckpoint(dir, meta(3), states(3));
    await entered.promise;
    const before = calls.length;
    const second = saveCheckpoint(dir, meta(3), states(3));
    await new Promise<void>((r) => setImmediate(r));
    expect(calls.slice(before)).toEqual([]);
    release.resolve();
    expect(await first).toBe(join(dir, 'step-3'));
    expect(await second).toBe(join(dir, 'step-3'));
    vi.restoreAllMocks();
    expect(readdirSync(dir).sort()).toEqual(['LATEST', 'step-2', 'step-3']);
    const c = await loadCheckpoint(dir);
    expect(c.meta.step).toBe(3);
    expect(c.skipped).toEqual([]);
  });

  it('a directory that cannot be made (a file where it should be) fails at once with CheckpointError naming the path', async () => {
    fresh();
    const blocked = join(dir, 'file');
    writeFileSync(blocked, 'not a directory');
    const at = join(blocked, 'ckpt');
    await expect(prepareCheckpointDir(at)).rejects.toThrow(CheckpointError);
    await expect(prepareCheckpointDir(at)).rejects.toThrow(new RegExp(`^checkpoint directory ${at} cannot be written: ENOTDIR`));
    const err = (await saveCheckpoint(at, meta(1), states(1)).catch((e: unknown) => e)) as CheckpointError;
    expect(err).toBeInstanceOf(CheckpointError);
    expect([err.step, (err.cause as NodeJS.ErrnoException).code]).toEqual([1, 'ENOTDIR']);
    expect(err.message).toMatch(new RegExp(`^checkpoint of step 1 could not be written to ${at}: ENOTDIR`));
  });

  it("removes abandoned temporaries (their writer is dead, or is this process) and keeps a live writer's", async () => {
    fresh();
    await saveCheckpoint(dir, meta(4), states(4));
    const dead = spawnSync(process.execPath, ['-e', '']).pid; // a process that has exited
    const live = process.ppid; // the test runner: alive, and not this process
    mkdirSync(join(dir, `.step-5.tmp-${dead}`));
    writeFileSync(join(dir, `.step-5.tmp-${dead}`, 'stage-0.bin'), new Uint8Array(1 << 20));
    writeFileSync(join(dir, `.LATEST.tmp-${dead}`), 'step-5');
    mkdirSync(join(dir, `.step-6.tmp-${live}`));
    mkdirSync(join(dir, `.step-7.tmp-${process.pid}`));
    const r = await prepareCheckpointDir(dir);
    expect(r.removed.sort()).toEqual([`.LATEST.tmp-${dead}`, `.step-5.tmp-${dead}`, `.step-7.tmp-${process.pid}`]);
    expect(r.inUse).toEqual([`.step-6.tmp-${live}`]);
    expect(readdirSync(dir).sort()).toEqual([`.step-6.tmp-${live}`, 'LATEST', 'step-4']);
    expect((await loadCheckpoint(dir)).meta.step).toBe(4);
  });

  it('without LATEST, the newest whole step directory is used (an altered one is skipped), and it is reported', async () => {
    fresh();
    await saveCheckpoint(dir, meta(3), states(3));
    await saveCheckpoint(dir, meta(4), states(4));
    rmSync(join(dir, 'LATEST'));
    expect(hasCheckpoint(dir)).toBe(true);
    const c = await loadCheckpoint(dir);
    expect(c.meta.step).toBe(4);
    expect(c.skipped).toEqual([{ name: 'LATEST', reason: 'missing: the newest whole step directory is used' }]);
    const bin = join(dir, 'step-4', 'stage-1.bin');
    const bytes = readFileSync(bin);
    bytes[0] = bytes[0]! ^ 0xff;
    writeFileSync(bin, bytes);
    const older = await loadCheckpoint(dir);
    expect(older.meta.step).toBe(3);
    expect(older.skipped.map((s) => s.name)).toEqual(['LATEST', 'step-4']);
    expect(Array.from(older.states[0]!.tensors[0]!.data)).toEqual([1, 2, 3, 4, 5, 6]);
    // An empty directory, or none, still has no checkpoint.
    rmSync(join(dir, 'step-3'), { recursive: true });
    rmSync(join(dir, 'step-4'), { recursive: true });
    expect(hasCheckpoint(dir)).toBe(false);
    await expect(loadCheckpoint(dir)).rejects.toThrow(/neither LATEST nor a step directory/);
    expect(existsSync(join(dir, 'nope'))).toBe(false);
    await expect(loadCheckpoint(join(dir, 'nope'))).rejects.toThrow(CheckpointError);
  });
});
