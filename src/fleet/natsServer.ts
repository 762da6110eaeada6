/** Starts and stops a nats-server process from the project's nats.conf. */
import type { ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, delimiter, join } from 'node:path';
import { ConfigError, TransportError } from '../errors.js';
import { checkJobId } from '../protocol/subjects.js';
import { ensureCredentials } from '../transport/credentials.js';
import { packagePath } from '../packagePath.js';
import { natsConfText } from './natsConf.js';
import { removeWithThisProcess, tieToThisProcess } from './tiedProcess.js';

/** The project's nats.conf. */
export const DEFAULT_NATS_CONF = packagePath('nats.conf');

/** Options of `startNatsServer`. */
export interface NatsServerOptions {
  /** Configuration file (default the project's nats.conf). */
  readonly config?: string;
  /** Client port; 0 (default) lets the server pick a free one. */
  readonly port?: number;
  /** Milliseconds to wait for "Server is ready" (default 10 s). */
  readonly readyTimeoutMs?: number;
  /** Extra command-line arguments. */
  readonly args?: readonly string[];
  /**
   * Confine every user to this job's subjects: the server runs on nats.conf's users generated
   * for the job (natsConfText), under the given configuration when it includes ./nats.conf
   * (nats-tls.conf, nats-cluster.conf). A stage user of another job can then do nothing here.
   */
  readonly job?: string;
  /** Variables the server's configuration reads besides the passwords (nats-cluster.conf's listen and routes). */
  readonly env?: Readonly<Record<string, string>>;
}

/** A running nats-server. */
export interface NatsServer {
  readonly url: string;
  readonly port: number;
  readonly pid: number;
  /** Everything the server logged so far. */
  log(): string;
  /** Resolves when the server has exited, whoever ended it (`stop`, a signal, a crash). */
  readonly exited: Promise<void>;
  /** Ends the server (SIGTERM, then SIGKILL after 5 s) and waits for it to exit. It also ends with this process, however that ends. */
  stop(): Promise<void>;
}

/** Finds nats-server on PATH or where Debian's package puts it. */
export function findNatsServer(): string {
  const dirs = [...(process.env['PATH'] ?? '').split(delimiter), '/usr/sbin', '/usr/bin', '/usr/local/bin'];
  for (const d of dirs) {
    if (d && existsSync(join(d, 'nats-server'))) return join(d, 'nats-server');
  }
  throw new ConfigError('nats-server is not installed: run `npm run setup` or `apt-get install nats-server` (Debian package nats-server)');
}

/** Servers still running: at exit they are killed at once (their keepers would a moment later). */
const live = new Set<{ keeper: ChildProcess; pid: number }>();
/** Generated configurations still in use (no secrets: they name password variables), removed at exit too. */
const configs = new Set<() => void>();
process.once('exit', () => {
  for (const s of live) if (s.keeper.exitCode === null && s.keeper.signalCode === null) process.kill(s.pid, 'SIGKILL');
  for (const remove of configs) remove();
});

/**
 * Starts nats-server and resolves once it accepts clients.
 *
 * @example
 * const server = await startNatsServer();
 * const pipe = await createPipeline({ ..., nats: { servers: server.url } });
 * await server.stop();
 */
export async function startNatsServer(opts: NatsServerOptions = {}): Promise<NatsServer> {
  const given = opts.config ?? DEFAULT_NATS_CONF;
  if (!existsSync(given)) throw new ConfigError(`NATS configuration ${given} does not exist`);
  const bin = findNatsServer();
  const scoped = opts.job === undefined ? null : jobConfig(given, checkJobId(opts.job));
  const config = scoped?.config ?? given;
  // nats.conf reads every role's password from the environment: random ones for those unset,
  // shared with this process's clients and the workers it forks.
  ensureCredentials();
  const args = ['-c', config, '-p', String(opts.port && opts.port > 0 ? opts.port : -1), ...(opts.args ?? [])];
  // Tied to this process: the server dies with it, even on SIGKILL. Its own process group:
  // a terminal's Ctrl-C reaches the driver, which stops the server last.
  const tied = tieToThisProcess(bin, args, opts.env);
  const child = tied.keeper;
  let out = '';
  // In `live` (for the exit handler's SIGKILL) from the moment its pid is known until it exits.
  const entry = { keeper: child, pid: 0 };
  const exited = new Promise<void>((resolve) =>
    child.once('exit', () => {
      live.delete(entry);
      scoped?.remove();
      resolve();
    }),
  );
  const port = await new Promise<number>((resolve, reject) => {
    let found = 0;
    const timer = setTimeout(() => fail(`did not start within ${opts.readyTimeoutMs ?? 10_000} ms`), opts.readyTimeoutMs ?? 10_000);
    const fail = (why: string) => {
      clearTimeout(timer);
      tied.cut();
      reject(new TransportError(`nats-server ${args.join(' ')} ${why}:\n${out.slice(-2000)}`));
    };
    const onData = (b: Buffer) => {
      out += b.toString();
      const m = /Listening for client connections on [^\s]*:(\d+)/.exec(out);
      if (m) found = Number(m[1]);
      if (found && out.includes('Server is ready')) {
        clearTimeout(timer);
        resolve(found);
      }
    };
    child.stdout!.on('data', onData);
    child.stderr!.on('data', onData);
    child.once('exit', (code) => fail(`exited with code ${String(code)}`));
    child.once('error', (err) => fail(`could not run: ${err.message}`));
  });
  const pid = await tied.pid;
  entry.pid = pid;
  if (child.exitCode === null && child.signalCode === null) live.add(entry);
  return {
    url: `nats://127.0.0.1:${port}`,
    port,
    pid,
    log: () => out,
    exited,
    stop: async () => {
      if (child.exitCode !== null || child.signalCode !== null) return;
      // The server is the keeper's unreaped child until it exits: its pid is still its own.
      try {
        process.kill(pid, 'SIGTERM');
      } catch {
        // It exited a moment ago; the keeper is exiting too.
      }
      const t = setTimeout(() => tied.cut(), 5_000);
      await exited;
      clearTimeout(t);
      tied.cut();
    },
  };
}

/**
 * The configuration of a server for job `job`: nats.conf's users confined to the job, in a
 * directory of its own, with the given configuration beside it when that one includes
 * ./nats.conf (it then includes the job's). The files hold no secrets (password variables).
 */
function jobConfig(given: string, job: string): { config: string; remove(): void } {
  const dir = mkdtempSync(join(tmpdir(), 'troupe-natsconf-'));
  // Gone with this process too, however it ends (SIGKILL runs no exit hook).
  const drop = removeWithThisProcess(dir);
  const remove = () => {
    configs.delete(remove);
    rmSync(dir, { recursive: true, force: true });
    drop();
  };
  configs.add(remove);
  try {
    writeFileSync(join(dir, 'nats.conf'), natsConfText({ job }));
    if (given === DEFAULT_NATS_CONF) return { config: join(dir, 'nats.conf'), remove };
    const text = readFileSync(given, 'utf8');
    if (!/^\s*include\s+"?\.\/nats\.conf"?\s*$/m.test(text)) return { config: given, remove };
    const config = join(dir, `main-${basename(given)}`);
    writeFileSync(config, text);
    return { config, remove };
  } catch (err) {
    remove();
    throw err;
  }
}
