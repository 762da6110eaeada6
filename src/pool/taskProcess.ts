/**
 * A child process that runs a task module's function, one task at a time: a pool worker's
 * slot. A task that runs past its deadline, or that the worker must drop, is stopped by
 * killing the process (SIGKILL ends a synchronous loop too); the worker starts another.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { createRequire } from 'node:module';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { ConfigError } from '../errors.js';
import type { RemoteError } from './poolProtocol.js';

/** Parent -> child: run a task. */
export interface ParentMessage {
  readonly seq: number;
  readonly index: number;
  /** The input as JSON text. */
  readonly input: string;
}

/** Child -> parent: loaded, could not load, or a task's result (output as JSON text). */
export type ChildMessage =
  | { readonly type: 'ready' }
  | { readonly type: 'failed'; readonly message: string }
  | { readonly type: 'result'; readonly seq: number; readonly ok: true; readonly json: string }
  | { readonly type: 'result'; readonly seq: number; readonly ok: false; readonly error: RemoteError };

/** A task's result as the child gave it. */
export type TaskResult = { readonly ok: true; readonly json: string } | { readonly ok: false; readonly error: RemoteError };

// Compiled (the installed package) the child is JavaScript and needs nothing; in the repository
// it is TypeScript and runs through tsx, as `troupe` does. A task module in TypeScript is
// loaded by importDefault, which registers tsx when it must.
const COMPILED = import.meta.url.endsWith('.js');
const CHILD = fileURLToPath(new URL(COMPILED ? './taskChild.js' : './taskChild.ts', import.meta.url));
const childArgv = (): string[] => (COMPILED ? [] : ['--import', pathToFileURL(createRequire(import.meta.url).resolve('tsx')).href]);

const live = new Set<ChildProcess>();
process.once('exit', () => {
  for (const c of live) c.kill('SIGKILL');
});

export class TaskProcess {
  private seq = 0;
  private pending: { seq: number; resolve(r: TaskResult): void; reject(e: Error): void } | null = null;
  private readonly exited: Promise<void>;

  private constructor(private readonly child: ChildProcess) {
    live.add(child);
    this.exited = new Promise((resolve) => child.once('exit', () => resolve()));
    void this.exited.then(() => {
      live.delete(child);
      const p = this.pending;
      this.pending = null;
      p?.reject(new Error(`the task's process (pid ${child.pid}) exited with ${child.signalCode ?? `code ${child.exitCode}`}`));
    });
    child.on('message', (m: ChildMessage) => {
      if (m.type !== 'result' || !this.pending || m.seq !== this.pending.seq) return;
      const p = this.pending;
      this.pending = null;
      p.resolve(m.ok ? { ok: true, json: m.json } : { ok: false, error: m.error });
    });
  }

  /** Starts a process on `module` and resolves once the module is loaded (a ConfigError when it cannot be). */
  static async start(module: string): Promise<TaskProcess> {
    const child = fork(CHILD, [module], { execArgv: childArgv(), stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    const t = new TaskProcess(child);
    const first = await new Promise<ChildMessage | null>((resolve) => {
      child.once('message', (m: ChildMessage) => resolve(m));
      void t.exited.then(() => resolve(null));
    });
    if (first?.type === 'ready') return t;
    await t.kill();
    throw new ConfigError(first?.type === 'failed' ? first.message : `task module ${module}: its process exited while loading it`);
  }

  get pid(): number {
    return this.child.pid!;
  }

  /** Whether a task runs in it now. */
  get busy(): boolean {
    return this.pending !== null;
  }

  /** Runs one task; rejects if the process ends first (killed, or the task ended it). */
  run(index: number, input: string): Promise<TaskResult> {
    if (this.pending) return Promise.reject(new Error(`the task process ${this.pid} already runs a task`));
    const seq = ++this.seq;
    return new Promise<TaskResult>((resolve, reject) => {
      this.pending = { seq, resolve, reject };
      this.child.send({ seq, index, input } satisfies ParentMessage, (err) => {
        if (err && this.pending?.seq === seq) {
          this.pending = null;
          reject(err);
        }
      });
    });
  }

  /** Kills the process (a task spinning in it too) and waits until it is gone. */
  async kill(): Promise<void> {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill('SIGKILL');
    await this.exited;
  }
}
