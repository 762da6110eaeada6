/**
 * The time a process's event loop spends receiving raw NATS messages of a given size: what
 * moving a stage's INPUT bytes costs it before Troupe does anything with them. A child process (this
 * file, run with `--child`) subscribes and reports how long its event loop was busy (the
 * active time of `performance.eventLoopUtilization`, the main thread only: a stage computes
 * on that thread) between the first message and the last; the caller publishes. The child
 * holds its event loop for HOLD_MS after the first message, so the publisher does not take the
 * cores while it reads: the messages wait for it in its socket and the server, as a step's
 * INPUT frames wait for a stage that computes. A publisher slower than the hold is an error.
 */
import { execFile } from 'node:child_process';
import { performance, type EventLoopUtilization } from 'node:perf_hooks';
import { Bus } from '../src/transport/index.js';

/** How long the receiver holds its loop after the first message (the publisher must be done by then). */
const HOLD_MS = 500;

/** What the child reports: busy ms and bytes between its first message and its last. */
interface ChildReport {
  readonly busyMs: number;
  readonly bytes: number;
}

/**
 * Ms a subscriber's event loop is busy per byte received, for `count` raw messages of `size`
 * bytes through the nats-server at `servers` (the first message's cost is left out).
 */
export async function receiveMsPerByte(servers: string, size: number, count: number): Promise<number> {
  const subject = `bench.receive.${size}.${process.pid}`;
  const pub = await Bus.connect({ role: 'admin', servers, name: 'bench-receive-pub' });
  try {
    const child = execFile(process.execPath, ['--import', 'tsx', new URL(import.meta.url).pathname, '--child', servers, subject, String(count)], {
      maxBuffer: 1 << 20,
    });
    const ready = new Promise<void>((resolve, reject) => {
      child.stdout!.once('data', (d: Buffer) => (String(d).startsWith('ready') ? resolve() : reject(new Error(`receiver said ${String(d)}`))));
      child.once('exit', (code) => reject(new Error(`receiver exited with ${code} before it was ready`)));
    });
    const report = new Promise<ChildReport>((resolve, reject) => {
      let out = '';
      child.stdout!.on('data', (d: Buffer) => (out += String(d)));
      child.once('exit', (code) =>
        code === 0 ? resolve(JSON.parse(out.trim().split('\n').pop()!) as ChildReport) : reject(new Error(`receiver exited with ${code}`)),
      );
    });
    report.catch(() => {}); // awaited below; a failed start rejects `ready` first
    await ready;
    const body = new Uint8Array(size).map((_, i) => i & 0xff);
    const t0 = performance.now();
    for (let i = 0; i < count; i++) await pub.publish(subject, body);
    await pub.flush();
    const published = performance.now() - t0;
    const r = await report;
    if (published >= HOLD_MS)
      throw new Error(`publishing ${count} messages of ${size} bytes took ${published.toFixed(0)} ms, not within the receiver's ${HOLD_MS} ms hold`);
    return r.busyMs / r.bytes;
  } finally {
    await pub.close();
  }
}

async function child(servers: string, subject: string, count: number): Promise<void> {
  const bus = await Bus.connect({ role: 'admin', servers, name: 'bench-receive-sub' });
  let seen = 0;
  let bytes = 0;
  let first: EventLoopUtilization | null = null;
  const done = new Promise<ChildReport>((resolve) => {
    bus.subscribe(subject, (m) => {
      seen++;
      if (seen === 1) {
        const until = performance.now() + HOLD_MS;
        while (performance.now() < until);
        first = performance.eventLoopUtilization();
      } else bytes += m.data.byteLength;
      if (seen === count) resolve({ busyMs: performance.eventLoopUtilization(first!).active, bytes });
    });
  });
  await bus.flush();
  process.stdout.write('ready\n');
  const report = await done;
  await bus.close();
  process.stdout.write(`${JSON.stringify(report)}\n`);
}

if (process.argv[2] === '--child') await child(process.argv[3]!, process.argv[4]!, Number(process.argv[5]));
