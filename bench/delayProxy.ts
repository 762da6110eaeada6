/**
 * A TCP proxy in front of nats-server that delays what the server sends to its clients by a
 * set number of milliseconds (what clients send goes through at once), in a process of its
 * own so that its timers do not wait for the bench's work. Run as a child (`fork`): it says
 * `{ port }` when listening, takes `{ delayMs }` to change the delay, and answers `report`
 * with the mean delay it really added since the last report.
 *
 * Start it with `startDelayProxy(natsPort)`.
 */
import { fork } from 'node:child_process';
import net from 'node:net';

/** A running proxy: its URL, and the delay (ms) added to every byte the server sends through it. */
export interface DelayProxy {
  readonly url: string;
  setDelay(ms: number): void;
  /** The mean delay really added (ms per chunk) since the last call, and how many chunks. */
  report(): Promise<{ meanMs: number; chunks: number }>;
  close(): void;
}

export async function startDelayProxy(natsPort: number): Promise<DelayProxy> {
  const child = fork(new URL(import.meta.url).pathname, ['serve', String(natsPort)], { execArgv: ['--import', 'tsx'] });
  const port = await new Promise<number>((resolve, reject) => {
    child.once('exit', (code) => reject(new Error(`delay proxy exited with ${String(code)}`)));
    child.once('message', (m) => resolve((m as { port: number }).port));
  });
  return {
    url: `nats://127.0.0.1:${port}`,
    setDelay: (ms) => child.send({ delayMs: ms }),
    report: () =>
      new Promise((resolve) => {
        child.once('message', (m) => resolve(m as { meanMs: number; chunks: number }));
        child.send('report');
      }),
    close: () => void child.kill(),
  };
}

if (process.argv[2] === 'serve') {
  const target = Number(process.argv[3]);
  let delay = 0;
  let added = 0;
  let chunks = 0;
  const server = net.createServer((client) => {
    const up = net.connect({ host: '127.0.0.1', port: target });
    client.setNoDelay(true);
    up.setNoDelay(true);
    // Delivered in order: a chunk leaves no earlier than the one before it.
    let last = 0;
    up.on('data', (b: Buffer) => {
      const now = performance.now();
      const at = Math.max(now + delay, last);
      last = at;
      const send = () => {
        added += performance.now() - now;
        chunks++;
        client.write(b);
      };
      if (at <= now) send();
      else setTimeout(send, at - now);
    });
    client.on('data', (b: Buffer) => up.write(b));
    const end = () => {
      client.destroy();
      up.destroy();
    };
    client.on('close', end);
    up.on('close', end);
    client.on('error', end);
    up.on('error', end);
  });
  server.listen(0, '127.0.0.1', () => process.send!({ port: (server.address() as net.AddressInfo).port }));
  process.on('message', (m: unknown) => {
    if (m === 'report') {
      process.send!({ meanMs: chunks ? added / chunks : 0, chunks });
      added = 0;
      chunks = 0;
    } else delay = (m as { delayMs: number }).delayMs;
  });
  process.on('disconnect', () => process.exit(0));
}
