/**
 * Frames between two processes, as between two stages (`troupe.<job>.stage.1.FORWARD`, the
 * receiver judging and assembling each frame as a stage does): over the NATS relay (publisher
 * -> nats-server -> subscriber) against the direct path (a TCP link negotiated over NATS).
 * Throughput of 64 KB, 1 MB and 16 MB frames, and the one-way latency of single frames (1 KB
 * frames stay on NATS either way). Interleaved rounds, medians.
 */
import { fork, type ChildProcess } from 'node:child_process';
import net from 'node:net';
import { Bus } from '../src/transport/bus.js';
import type { Frame } from '../src/protocol/frame.js';
import { median, table } from './report.js';

interface Arrival {
  readonly mb: number;
  readonly step: number;
  readonly at: number;
}

interface Peer {
  readonly job: string;
  /** Sends frame `mb` of step `step` with `data`; resolves when it may send the next. */
  send(step: number, mb: number, data: Float32Array): Promise<void>;
  readonly bus: Bus | null;
  readonly child: ChildProcess;
  /** Resolves with the arrivals once `n` frames of step `step` are in. */
  expect(step: number, n: number): Promise<Arrival[]>;
  close(): Promise<void>;
}

/** The receiving process (transportPeer.ts) and the parent's end: a stage 0 bus, or with `tcp` a plain socket. */
async function peer(url: string, kind: 'relay' | 'direct' | 'tcp'): Promise<Peer> {
  const job = kind;
  let server: net.Server | undefined;
  let socket: Promise<net.Socket> | undefined;
  if (kind === 'tcp') {
    server = net.createServer();
    socket = new Promise((resolve) => server!.once('connection', (s: net.Socket) => resolve(s)));
    await new Promise<void>((resolve) => server!.listen(0, '127.0.0.1', resolve));
  }
  const child = fork(new URL('./transportPeer.ts', import.meta.url).pathname, [], {
    execArgv: ['--import', 'tsx'],
    env: {
      ...process.env,
      TROUPE_BENCH_NATS: url,
      TROUPE_BENCH_JOB: job,
      TROUPE_BENCH_DIRECT: kind === 'direct' ? '1' : '0',
      ...(server ? { TROUPE_BENCH_TCP: String((server.address() as net.AddressInfo).port) } : {}),
    },
  });
  const arrivals: Arrival[] = [];
  let waiter: { step: number; n: number; resolve: (a: Arrival[]) => void } | null = null;
  const ready = new Promise<void>((resolve, reject) => {
    child.once('exit', (code) => reject(new Error(`bench peer exited with ${String(code)}`)));
    child.on('message', (m: unknown) => {
      if (m === 'ready') return resolve();
      arrivals.push(m as Arrival);
      const mine = waiter ? arrivals.filter((a) => a.step === waiter!.step) : [];
      if (waiter && mine.length >= waiter.n) {
        const w = waiter;
        waiter = null;
        w.resolve(mine);
      }
    });
  });
  await ready;
  const expectFor = (step: number, n: number) =>
    new Promise<Arrival[]>((resolve) => {
      waiter = { step, n, resolve };
      const mine = arrivals.filter((a) => a.step === step);
      if (mine.length >= n) {
        waiter = null;
        resolve(mine);
      }
    });
  if (socket) {
    const s = await socket;
    s.setNoDelay(true);
    return {
      job,
      bus: null,
      child,
      expect: expectFor,
      send: async (step, mb, data) => {
        const head = Buffer.alloc(12);
        head.writeUInt32LE(step, 0);
        head.writeUInt32LE(mb, 4);
        head.writeUInt32LE(data.byteLength, 8);
        s.cork();
        s.write(head);
        const ok = s.write(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
        s.uncork();
        if (!ok && s.writableLength > 128 * 1024 * 1024) await new Promise((r) => s.once('drain', r));
      },
      close: async () => {
        s.destroy();
        server!.close();
      },
    };
  }
  const bus = await Bus.connect({ role: 'stage0', servers: url, name: `bench-pub-${job}`, direct: kind === 'direct' });
  // The sender hears the receiver's answer on its own stage subject, as stage 0 does.
  bus.subscribe(`troupe.${job}.stage.0.*`, () => {});
  await bus.flush();
  return {
    job,
    bus,
    child,
    send: async (step, mb, data) => {
      await bus.publishFrame(`troupe.${job}.stage.1.FORWARD`, frame(job, step, mb, data));
    },
    close: () => bus.close(),
    expect: expectFor,
  };
}

let stepId = 0;

function frame(job: string, step: number, mb: number, data: Float32Array): Frame {
  return { key: { job, step, microbatch: mb, phase: 'FORWARD' }, from: 'stage.0', tensors: [{ name: 'a0', dtype: 'float32', shape: [data.length], data }] };
}

/** Bytes per second of `n` frames of `data`, published back to back. */
async function throughput(p: Peer, data: Float32Array, n: number): Promise<number> {
  const step = ++stepId;
  const all = p.expect(step, n);
  const t0 = performance.now();
  for (let i = 0; i < n; i++) await p.send(step, i, data);
  await all;
  return (n * data.byteLength) / ((performance.now() - t0) / 1000);
}

/** Median one-way ms of single frames: published, then whole at the receiver (one host, one clock). */
async function latency(p: Peer, data: Float32Array, n: number): Promise<number> {
  const ms: number[] = [];
  for (let i = 0; i < n; i++) {
    const step = ++stepId;
    const got = p.expect(step, 1);
    const t0 = performance.timeOrigin + performance.now();
    await p.send(step, 0, data);
    ms.push((await got)[0]!.at - t0);
  }
  return median(ms);
}

const KB = 1024;
const MB = 1024 * 1024;
const label = (size: number) => (size >= MB ? `${size / MB} MB` : `${size / KB} KB`);

export async function betweenProcesses(url: string, rounds: number, sizes = [64 * KB, MB, 16 * MB], latSizes = [KB, 64 * KB, 256 * KB]): Promise<string> {
  const relay = await peer(url, 'relay');
  const direct = await peer(url, 'direct');
  const tcp = await peer(url, 'tcp');
  const rates = new Map<string, number[]>();
  const lat = new Map<string, number[]>();
  try {
    // Warm-up: the direct path's link comes up with its first large frames (they go over NATS meanwhile).
    const warm = new Float32Array(MB / 4);
    for (const p of [relay, direct, tcp]) for (let i = 0; i < 3; i++) await throughput(p, warm, 4);
    if (direct.bus!.directLinks?.out !== 1) throw new Error(`the direct link did not come up (${JSON.stringify(direct.bus!.directCounters)})`);
    // Each round in another order: a process still freeing the last run's buffers slows the next one down.
    const orders = [
      [relay, direct, tcp],
      [tcp, relay, direct],
      [direct, tcp, relay],
    ];
    const order = (r: number) => orders[r % orders.length]!;
    for (let r = 0; r < rounds; r++) {
      for (const size of sizes) {
        const data = new Float32Array(size / 4).map((_, i) => i);
        const n = Math.max(8, Math.min(512, Math.floor((256 * MB) / size)));
        for (const p of order(r))
          (rates.get(`${p.job} ${size}`) ?? rates.set(`${p.job} ${size}`, []).get(`${p.job} ${size}`)!).push(await throughput(p, data, n));
      }
      for (const size of latSizes) {
        const data = new Float32Array(size / 4);
        for (const p of order(r)) (lat.get(`${p.job} ${size}`) ?? lat.set(`${p.job} ${size}`, []).get(`${p.job} ${size}`)!).push(await latency(p, data, 20));
      }
    }
  } finally {
    for (const p of [relay, direct, tcp]) {
      await p.close();
      p.child.disconnect();
    }
  }
  const mbps = (x: number) => `${(x / 1e6).toFixed(0)} MB/s`;
  const rateRows = sizes
    .filter((size) => rates.has(`relay ${size}`))
    .map((size) => {
      const a = rates.get(`relay ${size}`)!;
      const b = rates.get(`direct ${size}`)!;
      const c = rates.get(`tcp ${size}`)!;
      const ratios = b.map((x, i) => x / a[i]!);
      const ofTcp = b.map((x, i) => x / c[i]!);
      return [
        label(size),
        mbps(median(a)),
        mbps(median(b)),
        `${median(ratios).toFixed(2)}x`,
        `${Math.min(...ratios).toFixed(2)}-${Math.max(...ratios).toFixed(2)}x`,
        mbps(median(c)),
        `${(median(ofTcp) * 100).toFixed(0)}%`,
      ];
    });
  const latRows = latSizes.map((size) => [
    label(size),
    median(lat.get(`relay ${size}`)!).toFixed(2),
    median(lat.get(`direct ${size}`)!).toFixed(2),
    size >= 64 * KB ? 'direct link' : 'NATS (below minBytes)',
    median(lat.get(`tcp ${size}`)!).toFixed(2),
  ]);
  return [
    `#### Between two processes: the NATS relay against the direct path (${rounds} rounds, the three in a turning order)`,
    '',
    'A publishing process and a receiving process that judges and assembles each frame as a stage does, ' +
      'on the subjects of stage 0 -> 1 (`troupe.<job>.stage.1.FORWARD`). ' +
      '"Relay": both buses with the direct path off (publisher -> nats-server -> subscriber); ' +
      '"direct": both on, the link up before the timing starts (frames of 64 KB and more take it). ' +
      '"Plain TCP": the same bytes over a bare loopback socket read straight into buffers (no headers, no checks), ' +
      "measured in the same rounds: the ceiling this machine allows at the time, and the direct path's share of it.",
    '',
    table(
      [
        'tensor',
        'relay (median)',
        'direct (median)',
        'direct / relay (median of rounds)',
        'range of rounds',
        'plain TCP (median)',
        'direct / plain TCP (median of rounds)',
      ],
      rateRows,
    ),
    '',
    'Target: a 16 MB activation at 1 GB/s or more between two processes on one host.',
    '',
    'One-way latency of a single frame, ms from the publisher handing it over to it being whole at the receiver (medians of 20, then of rounds):',
    '',
    table(['frame', 'relay', 'direct path', 'the direct path sends it over', 'plain TCP'], latRows),
  ].join('\n');
}
