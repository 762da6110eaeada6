/** Runs the real `troupe` command in a child process and reads what it prints. */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { fileURLToPath } from 'node:url';

export const BIN = fileURLToPath(new URL('../../bin/troupe.mjs', import.meta.url));

export interface CliRun {
  readonly child: ChildProcess;
  /** Everything printed so far (stdout and stderr). */
  output(): string;
  /** What it printed on stdout alone, and on stderr alone. */
  stdout(): string;
  stderr(): string;
  /** Resolves when a line matching `re` has been printed (rejects if the process ends first). */
  waitFor(re: RegExp, timeoutMs?: number): Promise<RegExpExecArray>;
  /** Resolves with the exit code (or 128 + signal number style: the signal name). */
  exit: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/**
 * Starts `troupe <args>` (with extra environment variables). With `group`, it leads a process
 * group of its own, as a terminal's foreground job does, so a test can signal the whole group.
 */
export function troupe(args: readonly string[], env: Record<string, string> = {}, group = false): CliRun {
  const child = spawn(process.execPath, [BIN, ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, TROUPE_BACKEND: 'wasm', ...env },
    detached: group,
  });
  let out = '';
  const streams = { stdout: '', stderr: '' };
  const waiters: { re: RegExp; resolve: (m: RegExpExecArray) => void }[] = [];
  const onData = (b: Buffer) => {
    out += b.toString();
    for (const w of [...waiters]) {
      const m = w.re.exec(out);
      if (m) {
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve(m);
      }
    }
  };
  child.stdout.on('data', (b: Buffer) => {
    streams.stdout += b.toString();
    onData(b);
  });
  child.stderr.on('data', (b: Buffer) => {
    streams.stderr += b.toString();
    onData(b);
  });
  const exit = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once('exit', (code, signal) => resolve({ code, signal })),
  );
  return {
    child,
    output: () => out,
    stdout: () => streams.stdout,
    stderr: () => streams.stderr,
    exit,
    waitFor(re, timeoutMs = 60_000) {
      const m = re.exec(out);
      if (m) return Promise.resolve(m);
      return new Promise<RegExpExecArray>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`no line matching ${re} within ${timeoutMs} ms:\n${out}`)), timeoutMs);
        const done = (x: RegExpExecArray) => {
          clearTimeout(timer);
          resolve(x);
        };
        waiters.push({ re, resolve: done });
        void exit.then(() => {
          clearTimeout(timer);
          const last = re.exec(out);
          if (last) resolve(last);
          else reject(new Error(`troupe exited before printing ${re}:\n${out}`));
        });
      });
    },
  };
}

/** Runs `troupe <args>` to the end. */
export async function troupeToEnd(args: readonly string[]): Promise<{ code: number | null; output: string }> {
  const r = troupe(args);
  const { code } = await r.exit;
  return { code, output: r.output() };
}

/** Process ids `troupe up` printed: nats-server and every worker. */
export function printedPids(output: string): number[] {
  const pids = [...output.matchAll(/nats-server pid (\d+)|rank \d+: pid (\d+)/g)].map((m) => Number(m[1] ?? m[2]));
  return [...new Set(pids)];
}

/** True while a process with this id exists. */
export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Loads a model saved by `troupe up --save` (model.json + weights.bin). */
export async function loadSaved(dir: string): Promise<tf.LayersModel> {
  const json = JSON.parse(readFileSync(join(dir, 'model.json'), 'utf8'));
  const weights = readFileSync(join(dir, 'weights.bin'));
  return tf.loadLayersModel(
    tf.io.fromMemory({
      modelTopology: json.modelTopology,
      weightSpecs: json.weightsManifest[0].weights,
      weightData: weights.buffer.slice(weights.byteOffset, weights.byteOffset + weights.byteLength),
    }),
  );
}
