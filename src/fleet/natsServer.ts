/** Starts and stops a nats-server process from the project's nats.conf. */
import type { ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { delimiter, join } from 'node:path';
import { ConfigError, TransportError } from '../errors.js';
import { ensureCredentials } from '../transport/credentials.js';
import { packagePath } from '../packagePath.js';
import { tieToThisProcess } from './tiedProcess.js';

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
}

/** A running nats-server. */
export interface NatsServer {
  readonly url: string;
  readonly port: number;
  readonly pid: number;
  /** Everything the server logged so far. */
  log(): string;
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
process.once('exit', () => {
  for (const s of live) if (s.keeper.exitCode === null && s.keeper.signalCode === null) process.kill(s.pid, 'SIGKILL');
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
  const config = opts.config ?? DEFAULT_NATS_CONF;
  if (!existsSync(config)) throw new ConfigError(`NATS configuration ${config} does not exist`);
  const bin = findNatsServer();
  // nats.conf reads every role's password from the environment: random ones for those unset,
  // shared with this process's clients and the workers it forks.
  ensureCredentials();
  const args = ['-c', config, '-p', String(opts.port && opts.port > 0 ? opts.port : -1), ...(opts.args ?? [])];
  // Tied to this process: the server dies with it, even on SIGKILL. Its own process group:
  // a terminal's Ctrl-C reaches the driver, which stops the server last.
  const tied = tieToThisProcess(bin, args);
  const child = tied.keeper;
  let out = '';
  let entry: { keeper: ChildProcess; pid: number } | undefined;
  const exited = new Promise<void>((resolve) => child.once('exit', () => {
    if (entry) live.delete(entry);
    resolve();
  }));
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
  entry = { keeper: child, pid };
  if (child.exitCode === null && child.signalCode === null) live.add(entry);
  return {
    url: `nats://127.0.0.1:${port}`,
    port,
    pid,
    log: () => out,
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
