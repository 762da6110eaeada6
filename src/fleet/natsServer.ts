/** Starts and stops a nats-server process from the project's nats.conf. */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { delimiter, join } from 'node:path';
import { ConfigError, TransportError } from '../errors.js';
import { ensureCredentials } from '../transport/credentials.js';
import { packagePath } from '../packagePath.js';

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
  /** Resolves when the server has exited, whoever ended it (`stop`, a signal, a crash). */
  readonly exited: Promise<void>;
  /** Ends the server (SIGTERM, then SIGKILL after 5 s) and waits for it to exit. */
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

const live = new Set<ChildProcess>();
process.once('exit', () => {
  for (const c of live) c.kill('SIGKILL');
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
  // Its own process group: a terminal's Ctrl-C reaches the driver, which stops the server last.
  const child = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  live.add(child);
  let out = '';
  const exited = new Promise<void>((resolve) => child.once('exit', () => {
    live.delete(child);
    resolve();
  }));
  const port = await new Promise<number>((resolve, reject) => {
    let found = 0;
    const timer = setTimeout(() => fail(`did not start within ${opts.readyTimeoutMs ?? 10_000} ms`), opts.readyTimeoutMs ?? 10_000);
    const fail = (why: string) => {
      clearTimeout(timer);
      child.kill('SIGKILL');
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
  return {
    url: `nats://127.0.0.1:${port}`,
    port,
    pid: child.pid!,
    log: () => out,
    exited,
    stop: async () => {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill('SIGTERM');
      const t = setTimeout(() => child.kill('SIGKILL'), 5_000);
      await exited;
      clearTimeout(t);
    },
  };
}
