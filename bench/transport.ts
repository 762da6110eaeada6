/**
 * Activation bytes per second through Troupe's frames (encode, chunk, publish, parse,
 * reassemble: subscribeFrames) against raw `publish` of the same bytes in the same chunk
 * sizes, with the same NATS client, for 64 KB, 1 MB and 16 MB tensors; and sealed frames
 * (the sender seals each, the receiver checks every chunk's seal, as stages do) against
 * unsealed ones, side by side; then between two processes, the NATS relay against the direct
 * path (transportProcesses.ts). Interleaved rounds, medians. Then the seal alone: sealing and
 * checking one frame's headers, per frame.
 */
import { startNatsServer } from '../src/index.js';
import { ForgedFrameError } from '../src/errors.js';
import { Bus } from '../src/transport/index.js';
import { parseHeader, type Frame } from '../src/protocol/frame.js';
import { encodeFrame } from '../src/protocol/frame.js';
import { checkSeal, newSealKey, sealFrame } from '../src/protocol/seal.js';
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
  const refusals: string[] = [];
  try {
    for (const size of [64 * 1024, 1024 * 1024, 16 * 1024 * 1024]) {
      const n = Math.max(8, Math.floor(TOTAL / size));
      const data = new Float32Array(size / 4).map((_, i) => i);
      const body = new Uint8Array(data.buffer);
      const chunk = a.maxChunkBytes;
      const raw: number[] = [];
      const framed: number[] = [];
      const sealed: number[] = [];
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
          const done = waitFor(
            () => got >= n * size,
            (f) => (tick = f),
          );
          const t0 = performance.now();
          for (let i = 0; i < n; i++)
            for (let off = 0; off < size; off += chunk) await a.publish(`bench.raw.${size}`, body.subarray(off, Math.min(size, off + chunk)));
          await done;
          raw.push((n * size) / ((performance.now() - t0) / 1000));
          await sub.drain();
        }
        // Troupe frames and sealed ones (the receiver checks the seal of every chunk), in alternating order
        for (const seal of r % 2 === 0 ? [false, true] : [true, false]) {
          let frames = 0;
          let tick = () => {};
          const subject = `bench.${seal ? 'sealed' : 'frame'}.${size}`;
          const key = newSealKey();
          const sub = b.subscribeFrames(subject, {
            maxBytes: 1 << 30,
            phase: 'FORWARD',
            maxPartial: 256,
            ...(seal ? { admit: (h, m) => (checkSeal(h, m.subject, key) ? null : new ForgedFrameError(`${m.subject}: not sealed`)) } : {}),
            onFrame: () => frames++,
            onRefuse: (_, err) => refusals.push(err.message),
            around: (handle) => {
              handle();
              tick();
            },
          });
          await b.flush();
          const done = waitFor(
            () => frames >= n,
            (f) => (tick = f),
          );
          const t0 = performance.now();
          for (let i = 0; i < n; i++) {
            const f: Frame = {
              key: { job: 'bench', step: r + 1, microbatch: i, phase: 'FORWARD' },
              from: 'bench',
              tensors: [{ name: 'a0', dtype: 'float32', shape: [size / 4], data }],
            };
            await a.publishFrame(subject, seal ? sealFrame(f, subject, key) : f);
          }
          await done;
          (seal ? sealed : framed).push((n * size) / ((performance.now() - t0) / 1000));
          await sub.drain();
          if (refusals.length) throw new Error(`frames refused: ${refusals[0]}`);
        }
      }
      const label = size >= 1 << 20 ? `${size >> 20} MB` : `${size >> 10} KB`;
      // Each round's frames over the raw run just before it: the machine's drift cancels.
      const ratios = framed.map((f, i) => f / raw[i]!);
      const sealRatios = sealed.map((f, i) => f / framed[i]!);
      const pct = (x: number) => `${(x * 100).toFixed(0)}%`;
      const range = (xs: number[]) => `${pct(Math.min(...xs))}-${pct(Math.max(...xs))}`;
      rows.push([
        label,
        String(n),
        `${(median(raw) / 1e6).toFixed(0)} MB/s`,
        `${(median(framed) / 1e6).toFixed(0)} MB/s`,
        pct(median(ratios)),
        range(ratios),
        `${(median(sealed) / 1e6).toFixed(0)} MB/s`,
        pct(median(sealRatios)),
        range(sealRatios),
      ]);
    }
    two = await betweenProcesses(server.url, ROUNDS);
  } finally {
    await a.close();
    await b.close();
    await server.stop();
  }
  const seal = sealCost();
  return [
    '### Transport: frames against raw NATS publish, sealed frames against unsealed',
    '',
    'Publisher and subscriber on two connections of one process, nats-server from nats.conf (max_payload 1 MB, ' +
      `chunks of ${1024 * 1024 - 4096} bytes); ${ROUNDS} rounds, each raw, then frames and sealed frames in alternating order (each frame sealed ` +
      `by its sender, every chunk's seal checked on receipt); the ratios are taken per round. ${machineLine()}`,
    '',
    table(
      [
        'tensor',
        'messages',
        'raw publish (median)',
        'Troupe frames (median)',
        'frames / raw (median of rounds)',
        'range of rounds',
        'sealed frames (median)',
        'sealed / frames (median of rounds)',
        'range of rounds',
      ],
      rows,
    ),
    '',
    `The seal alone (HMAC-SHA-256 over a frame's subject and headers, whatever its size): sealing ${seal.seal.toFixed(1)} µs, ` +
      `checking a chunk ${seal.check.toFixed(1)} µs (median of ${seal.rounds} rounds of ${seal.n}).`,
    '',
    'Targets: frames at least 80 % of raw publish; sealed frames within noise of unsealed ones.',
    '',
    two,
  ].join('\n');
}

/** Microseconds to seal one frame and to check one chunk's seal (the headers of a 1 MB activation), medians of rounds. */
function sealCost(): { seal: number; check: number; n: number; rounds: number } {
  const n = 20_000;
  const rounds = 5;
  const key = newSealKey();
  const subject = 'troupe.bench.stage.1.FORWARD';
  const f: Frame = {
    key: { job: 'bench', step: 12, microbatch: 3, phase: 'FORWARD' },
    from: 'stage.0',
    tensors: [{ name: 't0', dtype: 'float32', shape: [256, 1024], data: new Float32Array(256 * 1024) }],
  };
  const msg = encodeFrame(sealFrame(f, subject, key), 1 << 30)[0]!;
  const h = parseHeader((k) => msg.headers[k], 'FORWARD', 1 << 30);
  const seal: number[] = [];
  const check: number[] = [];
  for (let r = 0; r < rounds; r++) {
    let t0 = performance.now();
    for (let i = 0; i < n; i++) sealFrame(f, subject, key);
    seal.push(((performance.now() - t0) * 1000) / n);
    t0 = performance.now();
    for (let i = 0; i < n; i++) if (!checkSeal(h, subject, key)) throw new Error('seal');
    check.push(((performance.now() - t0) * 1000) / n);
  }
  return { seal: median(seal), check: median(check), n, rounds };
}

if (import.meta.url === `file://${process.argv[1]}`) console.log(await benchTransport());
