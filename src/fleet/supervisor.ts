/** Worker processes of a local fleet: started together, watched, and ended by whoever started them. */
import { fork, type ChildProcess } from 'node:child_process';
import { StateError } from '../errors.js';
import { packagePath } from '../packagePath.js';
import { withoutCredentials } from '../transport/credentials.js';

/** The `troupe` executable the workers run. */
export const TROUPE_BIN = packagePath('bin', 'troupe.mjs');

const live = new Set<ChildProcess>();
process.once('exit', () => {
  for (const c of live) c.kill('SIGKILL');
});

/** A worker that ended while the fleet still needed it. */
export interface WorkerExit {
  readonly rank: number;
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
}

/**
 * Starts `troupe worker` processes (one per rank), reports an exit nobody asked for, and
 * ends them all on `stopAll` (SIGTERM, then SIGKILL after a grace period).
 */
export class Supervisor {
  private readonly children = new Map<number, ChildProcess>();
  private readonly exits = new Map<number, Promise<void>>();
  private readonly launches = new Map<number, { args: readonly string[]; env: Record<string, string> }>();
  private stopping = false;

  constructor(private readonly onUnexpectedExit: (e: WorkerExit) => void) {}

  /**
   * Forks `troupe worker <args>` for `rank` with extra environment variables. No NATS password
   * of this process reaches it: it gets those `env` gives it (its own role's).
   */
  spawn(rank: number, args: readonly string[], env: Record<string, string> = {}): ChildProcess {
    // Once stopping, nobody would watch or end it.
    if (this.stopping) throw new StateError(`worker ${rank} not started: the fleet is stopping`);
    this.launches.set(rank, { args, env });
    const child = fork(TROUPE_BIN, ['worker', ...args], {
      env: { ...withoutCredentials(process.env), ...env },
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    });
    live.add(child);
    this.children.set(rank, child);
    this.exits.set(
      rank,
      new Promise<void>((resolve) => {
        let over = false;
        const ended = (code: number | null, signal: NodeJS.Signals | null) => {
          if (over) return;
          over = true;
          live.delete(child);
          if (!this.stopping) this.onUnexpectedExit({ rank, code, signal });
          resolve();
        };
        child.once('exit', ended);
        // A fork that fails (EAGAIN, ENOMEM) never exits: it errors, without a pid (Node sets its exitCode to the errno).
        // An error of a running one (a failed kill) is not its end: its exit is still to come.
        child.on('error', () => child.pid === undefined && ended(null, null));
      }),
    );
    return child;
  }

  /** Starts worker `rank` again with the arguments it was first started with (after it died). */
  respawn(rank: number): ChildProcess {
    const l = this.launches.get(rank);
    if (!l) throw new Error(`no worker ${rank} was ever started`);
    return this.spawn(rank, l.args, l.env);
  }

  /** Ends worker `rank` now (a hung one: SIGKILL works on a stopped process too) and waits for its exit. */
  async kill(rank: number): Promise<void> {
    const c = this.children.get(rank);
    if (c && c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    await this.exits.get(rank);
  }

  /** Process ids by rank. */
  get pids(): number[] {
    return [...this.children.entries()].sort((a, b) => a[0] - b[0]).map(([, c]) => c.pid!);
  }

  /** Waits for every worker to exit after the driver told them to stop; signals the ones that do not. */
  async stopAll(graceMs = 5_000): Promise<void> {
    this.stopping = true;
    const all = [...this.exits.values()];
    const timer = setTimeout(() => {
      for (const c of this.children.values()) {
        if (c.exitCode !== null || c.signalCode !== null) continue;
        c.kill('SIGTERM');
        c.kill('SIGCONT'); // a stopped (hung) worker only acts on SIGTERM once it runs
      }
    }, graceMs);
    const killer = setTimeout(() => {
      for (const c of this.children.values()) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    }, graceMs * 2);
    await Promise.all(all);
    clearTimeout(timer);
    clearTimeout(killer);
  }

  /** Signals every worker now (Ctrl-C), then waits as `stopAll` does. */
  async killAll(graceMs = 5_000): Promise<void> {
    this.stopping = true;
    for (const c of this.children.values()) if (c.exitCode === null && c.signalCode === null) c.kill('SIGTERM');
    await this.stopAll(graceMs);
  }
}
