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
 * A step directory is written under a temporary name (`.step-12.tmp-<pid>`), synced and
 * renamed into place, and only then does LATEST move: a crash at any moment leaves the
 * previous checkpoint whole. A save that fails (a full disk, a read-only directory) removes its
 * temporary and throws a CheckpointError naming the step, the path and the cause; temporaries
 * of writers that died are removed when a run starts. Loading checks every file (a truncated
 * or altered body fails its length or its hash); a faulty newest checkpoint is reported and the
 * one before it is used, and without LATEST the newest whole step directory is.
 */
import { createHash } from 'node:crypto';
import { existsSync, readdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { CheckpointError, messageOf } from '../errors.js';
import { H, decodeSingle, encodeFrame, parseHeader } from '../protocol/frame.js';
import { Phase } from '../protocol/phase.js';
import type { RankState } from '../runtime/stageStates.js';
import { checkpointIo as io } from './checkpointIo.js';

export { CheckpointError } from '../errors.js';

const STEP_DIR = /^step-\d+$/;
/** What a writer leaves while it works: step directories, LATEST and the start-up probe, each suffixed with its pid. */
const TEMPORARY = /^\.(?:step-\d+|LATEST|probe)\.tmp-(\d+)$/;

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
  const f = await io.open(path, 'w');
  try {
    await f.writeFile(data);
    await f.sync();
  } finally {
    await f.close();
  }
}

async function syncDir(path: string): Promise<void> {
  const d = await io.open(path, 'r');
  try {
    await d.sync();
  } finally {
    await d.close();
  }
}

/** True while a process with this id exists (one of another user's counts). */
function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** A failed file operation as one line: the system's message, and the path when it does not say it. */
function describe(cause: unknown, at: string): string {
  const m = messageOf(cause);
  return m.includes(at) ? m : `${m} (${at})`;
}

/**
 * Removes what saves that can no longer finish left behind: temporaries whose writer process
 * is gone, or is this one (which is not saving while it calls this). A live writer's are kept
 * and listed in `inUse`.
 */
async function removeAbandonedTemporaries(dir: string): Promise<{ removed: string[]; inUse: string[] }> {
  const removed: string[] = [];
  const inUse: string[] = [];
  for (const name of await io.readdir(dir)) {
    const m = TEMPORARY.exec(name);
    if (!m) continue;
    const pid = Number(m[1]);
    if (pid !== process.pid && alive(pid)) {
      inUse.push(name);
      continue;
    }
    await io.rm(join(dir, name), { recursive: true, force: true });
    removed.push(name);
  }
  return { removed, inUse };
}

/**
 * Readies `dir` for a run's checkpoints before anything starts: creates it, removes abandoned
 * temporaries, and writes and syncs a probe file, so a read-only or unusable directory fails
 * the run at once with a CheckpointError naming the path and the cause, not after a step.
 */
export async function prepareCheckpointDir(dir: string): Promise<{ removed: string[]; inUse: string[] }> {
  let at = dir;
  try {
    await io.mkdir(dir, { recursive: true });
    const cleaned = await removeAbandonedTemporaries(dir);
    at = join(dir, `.probe.tmp-${process.pid}`);
    await writeSynced(at, 'troupe');
    await io.rm(at, { force: true });
    return cleaned;
  } catch (cause) {
    throw new CheckpointError(`checkpoint directory ${dir} cannot be written: ${describe(cause, at)}`, { cause, path: at });
  }
}

/** Each directory's last save begun by this process (settled, never rejecting): the next one there waits for it. */
const saving = new Map<string, Promise<unknown>>();

/**
 * Writes a checkpoint of `states` (one per stage, all of step `meta.step`) and keeps the newest
 * `keep`. On failure its temporary is removed and a CheckpointError names the step, the path
 * and the cause; the previous checkpoint stays in force. Saves of one directory in this
 * process run one after another: their temporaries are named by the process, so two at once
 * (an abandoned save and the replay's save of the same step) would take each other's.
 */
export function saveCheckpoint(dir: string, meta: Omit<CheckpointMeta, 'savedAt'>, states: readonly RankState[], keep = 2): Promise<string> {
  const key = resolve(dir);
  const saved = (saving.get(key) ?? Promise.resolve()).then(() => writeCheckpoint(dir, meta, states, keep));
  const over = saved.catch(() => {});
  saving.set(key, over);
  void over.then(() => saving.get(key) === over && saving.delete(key));
  return saved;
}

async function writeCheckpoint(dir: string, meta: Omit<CheckpointMeta, 'savedAt'>, states: readonly RankState[], keep: number): Promise<string> {
  const name = `step-${meta.step}`;
  const tmp = join(dir, `.${name}.tmp-${process.pid}`);
  const latestTmp = join(dir, `.LATEST.tmp-${process.pid}`);
  const final = join(dir, name);
  let at = dir;
  let moved = false;
  try {
    await io.mkdir(dir, { recursive: true });
    at = tmp;
    await io.rm(tmp, { recursive: true, force: true });
    await io.mkdir(tmp);
    at = join(tmp, 'meta.json');
    await writeSynced(at, JSON.stringify({ ...meta, savedAt: new Date().toISOString() }, null, 2));
    for (const s of states) {
      // The states belong to training step meta.step (a replayed step ran under another step id).
      const [msg] = encodeFrame(
        { key: { job: meta.job, step: meta.step, microbatch: 0, phase: Phase.STATE }, from: `stage.${s.rank}`, tensors: s.tensors },
        Number.MAX_SAFE_INTEGER,
      );
      at = join(tmp, `stage-${s.rank}.json`);
      await writeSynced(
        at,
        JSON.stringify(
          { rank: s.rank, headers: msg!.headers, weightNames: s.weightNames, optimizerNames: s.optimizerNames, sha256: sha256(msg!.data) },
          null,
          1,
        ),
      );
      at = join(tmp, `stage-${s.rank}.bin`);
      await writeSynced(at, msg!.data);
    }
    at = tmp;
    await syncDir(tmp);
    at = final;
    await io.rm(final, { recursive: true, force: true });
    await io.rename(tmp, final);
    at = latestTmp;
    await writeSynced(latestTmp, name);
    at = join(dir, 'LATEST');
    await io.rename(latestTmp, at);
    moved = true;
    at = dir;
    await syncDir(dir);
    // Keep the new one and the newest keep-1 before it; later steps are left from an older run and go too.
    const others = (await io.readdir(dir)).filter((n) => STEP_DIR.test(n) && n !== name).map((n) => ({ n, step: Number(n.slice(5)) }));
    const earlier = others.filter((o) => o.step < meta.step).sort((a, b) => b.step - a.step);
    const drop = [...earlier.slice(Math.max(0, keep - 1)), ...others.filter((o) => o.step > meta.step)];
    for (const o of drop) {
      at = join(dir, o.n);
      await io.rm(at, { recursive: true, force: true });
    }
    return final;
  } catch (cause) {
    // A full disk stays full if the half-written step stays: it goes, whatever failed.
    await io.rm(tmp, { recursive: true, force: true }).catch(() => {});
    await io.rm(latestTmp, { force: true }).catch(() => {});
    const state = moved ? `LATEST names step ${meta.step}, which is whole` : 'the previous checkpoint is still the latest';
    throw new CheckpointError(`checkpoint of step ${meta.step} could not be written to ${dir}: ${describe(cause, at)}; ${state}`, {
      cause,
      step: meta.step,
      path: at,
    });
  }
}

/** True when `dir` holds a checkpoint: LATEST, or a step directory (LATEST lost). */
export function hasCheckpoint(dir: string): boolean {
  if (existsSync(join(dir, 'LATEST'))) return true;
  try {
    return readdirSync(dir).some((n) => STEP_DIR.test(n));
  } catch {
    return false;
  }
}

/**
 * Reads the newest whole checkpoint: the one LATEST names, or, when that one is missing a
 * file, truncated or altered, the newest earlier one that is whole (reported in `skipped`).
 * Without LATEST (lost, or a crash before the first one moved), the newest whole step
 * directory. CheckpointError when none is.
 */
export async function loadCheckpoint(dir: string): Promise<Checkpoint> {
  let latest: string | null = null;
  let entries: string[];
  try {
    entries = await io.readdir(dir);
    if (entries.includes('LATEST')) latest = (await io.readFile(join(dir, 'LATEST'), 'utf8')).trim();
  } catch (cause) {
    throw new CheckpointError(`no checkpoint in ${dir}: ${messageOf(cause)}`, { cause, path: dir });
  }
  const steps = entries.filter((n) => STEP_DIR.test(n)).sort((a, b) => Number(b.slice(5)) - Number(a.slice(5)));
  if (latest === null && steps.length === 0) throw new CheckpointError(`no checkpoint in ${dir}: neither LATEST nor a step directory`, { path: dir });
  const skipped: { name: string; reason: string }[] = [];
  if (latest === null) skipped.push({ name: 'LATEST', reason: 'missing: the newest whole step directory is used' });
  else if (!STEP_DIR.test(latest)) skipped.push({ name: 'LATEST', reason: `names "${latest}", not a step directory` });
  // LATEST first, then the others newest first; never one newer than LATEST (an interrupted later write).
  const named = latest !== null && STEP_DIR.test(latest) ? latest : null;
  const candidates = named ? [named, ...steps.filter((n) => Number(n.slice(5)) < Number(named.slice(5)))] : steps;
  for (const name of candidates) {
    try {
      return { ...(await loadStepDir(join(dir, name))), skipped };
    } catch (err) {
      skipped.push({ name, reason: messageOf(err) });
    }
  }
  throw new CheckpointError(`no whole checkpoint in ${dir}: ${skipped.map((s) => `${s.name}: ${s.reason}`).join('; ')}`, { path: dir });
}

/** Reads one step directory, checking every file; CheckpointError on any fault. */
async function loadStepDir(at: string): Promise<Omit<Checkpoint, 'skipped'>> {
  try {
    const meta = JSON.parse(await io.readFile(join(at, 'meta.json'), 'utf8')) as CheckpointMeta;
    if (!Number.isInteger(meta.step) || !Number.isInteger(meta.stages) || meta.stages < 1) throw new Error('meta.json lacks step or stages');
    const states: RankState[] = [];
    for (let rank = 0; rank < meta.stages; rank++) {
      const info = JSON.parse(await io.readFile(join(at, `stage-${rank}.json`), 'utf8')) as {
        headers: Record<string, string>;
        weightNames: string[];
        optimizerNames: string[];
        sha256?: string;
      };
      const body = new Uint8Array(await io.readFile(join(at, `stage-${rank}.bin`)));
      // A STATE frame; checkpoints of an older Troupe named their state frames UPDATE.
      const h = parseHeader((k) => info.headers[k], info.headers[H.phase] === Phase.UPDATE ? Phase.UPDATE : Phase.STATE, Number.MAX_SAFE_INTEGER);
      const frame = decodeSingle(h, body);
      if (info.sha256 !== undefined && sha256(body) !== info.sha256) throw new Error(`stage-${rank}.bin does not match its SHA-256 (altered)`);
      if (h.key.step !== meta.step) throw new Error(`stage-${rank} is of step ${h.key.step}, meta says ${meta.step}`);
      states.push({ rank, step: meta.step, weightNames: info.weightNames, optimizerNames: info.optimizerNames, tensors: frame.tensors });
    }
    return { meta, states };
  } catch (cause) {
    throw new CheckpointError(`checkpoint ${at} is unreadable: ${messageOf(cause)}`, { cause, path: at });
  }
}
