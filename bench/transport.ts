/**
 * Activation bytes per second through Troupe's frames (encode, chunk, publish, parse,
 * reassemble) against raw `publish` of the same bytes in the same chunk sizes, with the same
 * NATS client, for 64 KB, 1 MB and 16 MB tensors; then between two processes, the NATS relay
 * against the direct path (transportProcesses.ts). Interleaved rounds, medians.
 */
import { startNatsServer } from '../src/index.js';
import { Bus } from '../src/transport/index.js';
import type { Frame } from '../src/protocol/frame.js';
import { parseHeader } from '../src/protocol/frame.js';
import { Reassembler } from '../src/protocol/reassembler.js';
import { machineLine, median, table } from './report.js';
import { betweenProcesses } from './transportProcesses.js';

const ROUNDS = Number(process.env['ROUNDS'] ?? 5);
const TOTAL = 256 * 1024 * 1024;

function waitFor(count: () => boolean, subscribeTick: (f: () => void) => void): Promise<void> {
  return new Promise((resolve) => subscribeTick(() => count() && resolve()));
}

export async function benchTransport(): Promise<string> {
  const server = await startNatsServer();
  const a = await Bus.connect({ role: 'admin', servers: server.url, name: 'bench-pub', direct: false });
  const b = await Bus.connect({ role: 'admin', servers: server.url, name: 'bench-sub', direct: false });
  const rows: string[][] = [];
  let two = '';
  try {
    for (const size of [64 * 1024, 1024 * 1024, 16 * 1024 * 1024]) {
      const n = Math.max(8, Math.floor(TOTAL / size));
      const data = new Float32Array(size / 4).map((_, i) => i);
      const body = new Uint8Array(data.buffer);
      const chunk = a.maxChunkBytes;
      const raw: number[] = [];
      const framed: number[] = [];
      for (let r = 0; r < ROUNDS; r++) {
        // raw publish of the same bytes, in the same chunk sizes
        {
          let got = 0;
          let tick = () => {};
          const sub = b.subscribe(`bench.raw.${size}`, (m) => {
            got += m.data.byteLength;
            tick();
          });
          await b.flush();
          const done = waitFor(() => got >= n * size, (f) => (tick = f));
          const t0 = performance.now();
          for (let i = 0; i < n; i++) for (let off = 0; off < size; off += chunk) await a.publish(`bench.raw.${size}`, body.subarray(off, Math.min(size, off + chunk)));
          await done;
          raw.push((n * size) / ((performance.now() - t0) / 1000));
          await sub.drain();
        }
        // Troupe frames
        {
          let frames = 0;
          let tick = () => {};
          const re = new Reassembler(256);
          const sub = b.subscribe(`bench.frame.${size}`, (m) => {
            if (re.accept(parseHeader(m.header, 'FORWARD', 1 << 30), m.data)) frames++;
            tick();
          });
          await b.flush();
          const done = waitFor(() => frames >= n, (f) => (tick = f));
          const t0 = performance.now();
          for (let i = 0; i < n; i++) {
            const f: Frame = { key: { job: 'bench', step: r + 1, microbatch: i, phase: 'FORWARD' }, from: 'bench', tensors: [{ name: 'a0', dtype: 'float32', shape: [size / 4], data }] };
            await a.publishFrame(`bench.frame.${size}`, f);
          }
          await done;
          framed.push((n * size) / ((performance.now() - t0) / 1000));
          await sub.drain();
        }
      }
      const label = size >= 1 << 20 ? `${size >> 20} MB` : `${size >> 10} KB`;
      // Each round's frames over the raw run just before it: the machine's drift cancels.
      const ratios = framed.map((f, i) => f / raw[i]!);
      const pct = (x: number) => `${(x * 100).toFixed(0)}%`;
      rows.push([label, String(n), `${(median(raw) / 1e6).toFixed(0)} MB/s`, `${(median(framed) / 1e6).toFixed(0)} MB/s`, pct(median(ratios)), `${pct(Math.min(...ratios))}-${pct(Math.max(...ratios))}`]);
    }
    two = await betweenProcesses(server.url, ROUNDS);
  } finally {
    await a.close();
    await b.close();
    await server.stop();
  }
  return [
    '### Transport: frames against raw NATS publish',
    '',
    `Publisher and subscriber on two connections of one process, nats-server from nats.conf (max_payload 1 MB, chunks of ${1024 * 1024 - 4096} bytes); ${ROUNDS} rounds, each raw then frames; the ratio is taken per round. ${machineLine()}`,
    '',
    table(['tensor', 'messages', 'raw publish (median)', 'Troupe frames (median)', 'frames / raw (median of rounds)', 'range of rounds'], rows),
    '',
    'Target: frames at least 80 % of raw publish.',
    '',
    two,
  ].join('\n');
}

if (import.meta.url === `file://${process.argv[1]}`) console.log(await benchTransport());
