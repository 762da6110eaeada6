/**
 * Checkpoints: every stage's weights and optimizer state after a step, written atomically.
 *
 * ```
 * <dir>/LATEST                  "step-12"  (replaced by rename once step-12 is complete)
 * <dir>/step-12/meta.json       step, stages, job, schedule, microbatches, time
 * <dir>/step-12/stage-<r>.json  the state frame's headers, the weight / optimizer slot names
 *                               and the SHA-256 of the body
 * <dir>/step-12/stage-<r>.bin   the state frame's body (raw little-endian tensor bytes)
 * ```
 * A step directory is written under a temporary name, synced and renamed into place, and
 * only then does LATEST move: a crash at any moment leaves the previous checkpoint whole.
 * Loading checks every file (a truncated or altered body fails its length or its hash); a
 * faulty newest checkpoint is reported and the one before it is used.
 */
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, open, readFile, readdir, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { CheckpointError, messageOf } from '../errors.js';

export { CheckpointError } from '../errors.js';
import { decodeSingle, encodeFrame, parseHeader } from '../protocol/frame.js';
import { Phase } from '../protocol/phase.js';
import type { RankState } from '../runtime/stageStates.js';


/** What a checkpoint records besides the states. */
export interface CheckpointMeta {
  readonly step: number;
  readonly stages: number;
  readonly job: string;
  readonly schedule: string;
  readonly microbatches: number;
  readonly savedAt: string;
}

/** A loaded checkpoint. */
export interface Checkpoint {
  readonly meta: CheckpointMeta;
  readonly states: readonly RankState[];
  /** Newer checkpoints that were refused, newest first, and why. */
  readonly skipped: readonly { readonly name: string; readonly reason: string }[];
}

function sha256(data: Uint8Array): string {
  return createHash('sha256').update(data).digest('hex');
}

async function writeSynced(path: string, data: string | Uint8Array): Promise<void> {
  const f = await open(path, 'w');
  try {
    await f.writeFile(data);
    await f.sync();
  } finally {
    await f.close();
  }
}

async function syncDir(path: string): Promise<void> {
  const d = await open(path, 'r');
  try {
    await d.sync();
  } finally {
    await d.close();
  }
}

/** Writes a checkpoint of `states` (one per stage, all of step `meta.step`) and keeps the newest `keep`. */
export async function saveCheckpoint(dir: string, meta: Omit<CheckpointMeta, 'savedAt'>, states: readonly RankState[], keep = 2): Promise<string> {
  await mkdir(dir, { recursive: true });
  const name = `step-${meta.step}`;
  const tmp = join(dir, `.${name}.tmp-${process.pid}`);
  await rm(tmp, { recursive: true, force: true });
  await mkdir(tmp);
  await writeSynced(join(tmp, 'meta.json'), JSON.stringify({ ...meta, savedAt: new Date().toISOString() }, null, 2));
  for (const s of states) {
    // The states belong to training step meta.step (a replayed step ran under another step id).
    const [msg] = encodeFrame({ key: { job: meta.job, step: meta.step, microbatch: 0, phase: Phase.UPDATE }, from: `stage.${s.rank}`, tensors: s.tensors }, Number.MAX_SAFE_INTEGER);
    await writeSynced(join(tmp, `stage-${s.rank}.json`), JSON.stringify({ rank: s.rank, headers: msg!.headers, weightNames: s.weightNames, optimizerNames: s.optimizerNames, sha256: sha256(msg!.data) }, null, 1));
    await writeSynced(join(tmp, `stage-${s.rank}.bin`), msg!.data);
  }
  await syncDir(tmp);
  const final = join(dir, name);
  await rm(final, { recursive: true, force: true });
  await rename(tmp, final);
  await writeSynced(join(dir, '.LATEST.tmp'), name);
  await rename(join(dir, '.LATEST.tmp'), join(dir, 'LATEST'));
  await syncDir(dir);
  // Keep the new one and the newest keep-1 before it; later steps are left from an older run and go too.
  const others = (await readdir(dir)).filter((n) => /^step-\d+$/.test(n) && n !== name).map((n) => ({ n, step: Number(n.slice(5)) }));
  const earlier = others.filter((o) => o.step < meta.step).sort((a, b) => b.step - a.step);
  const drop = [...earlier.slice(Math.max(0, keep - 1)), ...others.filter((o) => o.step > meta.step)];
  await Promise.all(drop.map((o) => rm(join(dir, o.n), { recursive: true, force: true })));
  return final;
}

/** True when `dir` holds a complete checkpoint. */
export function hasCheckpoint(dir: string): boolean {
  return existsSync(join(dir, 'LATEST'));
}

/**
 * Reads the newest whole checkpoint: the one LATEST names, or, when that one is missing a
 * file, truncated or altered, the newest earlier one that is whole (reported in `skipped`).
 * CheckpointError when none is.
 */
export async function loadCheckpoint(dir: string): Promise<Checkpoint> {
  let latest: string;
  try {
    latest = (await readFile(join(dir, 'LATEST'), 'utf8')).trim();
  } catch (cause) {
    throw new CheckpointError(`no checkpoint in ${dir}: ${messageOf(cause)}`, { cause });
  }
  const skipped: { name: string; reason: string }[] = [];
  if (!/^step-\d+$/.test(latest)) skipped.push({ name: 'LATEST', reason: `names "${latest}", not a step directory` });
  const steps = (await readdir(dir)).filter((n) => /^step-\d+$/.test(n)).sort((a, b) => Number(b.slice(5)) - Number(a.slice(5)));
  // LATEST first, then the others newest first; never one newer than LATEST (an interrupted later write).
  const candidates = /^step-\d+$/.test(latest) ? [latest, ...steps.filter((n) => Number(n.slice(5)) < Number(latest.slice(5)))] : steps;
  for (const name of candidates) {
    try {
      return { ...(await loadStepDir(join(dir, name))), skipped };
    } catch (err) {
      skipped.push({ name, reason: messageOf(err) });
    }
  }
  throw new CheckpointError(`no whole checkpoint in ${dir}: ${skipped.map((s) => `${s.name}: ${s.reason}`).join('; ')}`);
}

/** Reads one step directory, checking every file; CheckpointError on any fault. */
async function loadStepDir(at: string): Promise<Omit<Checkpoint, 'skipped'>> {
  try {
    const meta = JSON.parse(await readFile(join(at, 'meta.json'), 'utf8')) as CheckpointMeta;
    if (!Number.isInteger(meta.step) || !Number.isInteger(meta.stages) || meta.stages < 1) throw new Error('meta.json lacks step or stages');
    const states: RankState[] = [];
    for (let rank = 0; rank < meta.stages; rank++) {
      const info = JSON.parse(await readFile(join(at, `stage-${rank}.json`), 'utf8')) as { headers: Record<string, string>; weightNames: string[]; optimizerNames: string[]; sha256?: string };
      const body = new Uint8Array(await readFile(join(at, `stage-${rank}.bin`)));
      const h = parseHeader((k) => info.headers[k], Phase.UPDATE, Number.MAX_SAFE_INTEGER);
      const frame = decodeSingle(h, body);
      if (info.sha256 !== undefined && sha256(body) !== info.sha256) throw new Error(`stage-${rank}.bin does not match its SHA-256 (altered)`);
      if (h.key.step !== meta.step) throw new Error(`stage-${rank} is of step ${h.key.step}, meta says ${meta.step}`);
      states.push({ rank, step: meta.step, weightNames: info.weightNames, optimizerNames: info.optimizerNames, tensors: frame.tensors });
    }
    return { meta, states };
  } catch (cause) {
    throw new CheckpointError(`checkpoint ${at} is unreadable: ${messageOf(cause)}`, { cause });
  }
}
