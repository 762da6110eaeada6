/**
 * The GPU section (WebGPU): stock tfjs-webgpu `trainOnBatch` against Troupe on the same GPU,
 * 1 stage and 2 stages in one process (their tensors handed over on the device), for the
 * reference MLP at batch 256 and 4096 and the uniform MLP at 1024; and what one stage-to-stage
 * hop of an activation costs when it leaves the GPU (read back, frame through nats-server,
 * upload), for 64 KB, 1 MB and 16 MB. Runs in a child process on the webgpu backend (the
 * backend is chosen once per process); without a GPU adapter it says so and measures nothing.
 *
 *   npx tsx bench/run.ts gpu            (also part of npm run bench)
 *   npx tsx bench/gpu.ts --child        (the measuring process itself; BENCH_GPU_BACKEND=wasm: a dry run on the CPU)
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import * as tf from '@tensorflow/tfjs';
import { listGpuAdapters, NO_ADAPTER } from '../src/compute/webgpu.js';
import { createPipeline, selectBackend, startNatsServer } from '../src/index.js';
import { Bus } from '../src/transport/index.js';
import { benchData, benchModel } from './jobs/bench.job.js';
import { machineLine, median, table } from './report.js';

const run = promisify(execFile);
const STEPS = Number(process.env['GPU_STEPS'] ?? 12);
const WARMUP = 3;
const TITLE = '### GPU (WebGPU): Troupe against stock tfjs-webgpu on one GPU';

/** The section: measured in a child process on webgpu, or skipped without an adapter. */
export async function benchGpu(): Promise<string> {
  const adapters = await listGpuAdapters();
  if (adapters.length === 0) return `${TITLE}\n\nskipped: ${NO_ADAPTER} on this machine.`;
  const { stdout } = await run(process.execPath, ['--import', 'tsx', new URL(import.meta.url).pathname, '--child'], {
    env: { ...process.env, TROUPE_BACKEND: 'webgpu' },
    maxBuffer: 1 << 24,
    timeout: 540_000,
  });
  return stdout.trim();
}

/** Median ms of `step` after a warm-up. */
async function timeSteps(step: () => Promise<unknown>): Promise<number> {
  for (let i = 0; i < WARMUP; i++) await step();
  const ms: number[] = [];
  for (let i = 0; i < STEPS; i++) {
    const t0 = performance.now();
    await step();
    ms.push(performance.now() - t0);
  }
  return median(ms);
}

interface Config {
  readonly model: 'mlp' | 'uniform';
  readonly batch: number;
}

const CONFIGS: readonly Config[] = [
  { model: 'mlp', batch: 256 },
  { model: 'mlp', batch: 4096 },
  { model: 'uniform', batch: 1024 },
];

/** ms per step of stock trainOnBatch, and of Troupe pipelines of this configuration. */
async function steps(c: Config, servers: string): Promise<string[]> {
  const { x, y } = benchData(c.batch, c.model);
  try {
    const stock = benchModel(c.model);
    stock.compile({ optimizer: tf.train.sgd(0.01), loss: 'categoricalCrossentropy' });
    const stockMs = await timeSteps(() => stock.trainOnBatch(x, y));
    stock.dispose();
    const troupe = async (stages: number, m: number) => {
      const model = benchModel(c.model);
      const pipe = await createPipeline({ model, stages, microbatches: m, optimizer: tf.train.sgd(0.01), loss: 'categoricalCrossentropy', nats: { servers } });
      try {
        return await timeSteps(() => pipe.trainStep(x, y));
      } finally {
        await pipe.close();
        model.dispose();
      }
    };
    const one = await troupe(1, 1);
    const oneM4 = await troupe(1, 4);
    const two = await troupe(2, 4);
    const name = c.model === 'mlp' ? 'MLP 784-1024-1024-10' : 'uniform MLP 8 x 1024';
    return [
      `${name}, batch ${c.batch}`,
      stockMs.toFixed(1),
      one.toFixed(1),
      oneM4.toFixed(1),
      two.toFixed(1),
      `${(one / stockMs).toFixed(2)}x`,
      `${(one / two).toFixed(2)}x`,
    ];
  } finally {
    tf.dispose([x, y]);
  }
}

/** One hop of `bytes` leaving the GPU: read back, frame through nats-server, upload; ms each. */
async function hop(bytes: number, a: Bus, b: Bus): Promise<string[]> {
  const n = bytes / 4;
  const host = new Float32Array(n).map((_, i) => (i % 97) / 97);
  const readback: number[] = [];
  const wire: number[] = [];
  const upload: number[] = [];
  const subject = `bench.gpu.hop.${bytes}`;
  let done: (() => void) | null = null;
  let received: Float32Array | null = null;
  const sub = b.subscribeFrames(subject, {
    maxBytes: 1 << 30,
    phase: 'FORWARD',
    maxPartial: 4,
    onFrame: (f) => {
      received = f.tensors[0]!.data as Float32Array;
      done?.();
    },
  });
  await b.flush();
  try {
    for (let r = 0; r < WARMUP + STEPS; r++) {
      // An activation computed on the GPU.
      const act = tf.tidy(() => tf.mul(tf.tensor1d(host), 2));
      await tf.sum(act).data(); // the kernel is done: what follows is the hop alone
      let t0 = performance.now();
      const values = (await act.data()) as Float32Array;
      const tRead = performance.now() - t0;
      act.dispose();
      t0 = performance.now();
      const arrived = new Promise<void>((resolve) => (done = resolve));
      await a.publishFrame(subject, {
        key: { job: 'bench', step: r + 1, microbatch: 0, phase: 'FORWARD' },
        from: 'stage.0',
        tensors: [{ name: 'a0', dtype: 'float32', shape: [n], data: values }],
      });
      await arrived;
      const tWire = performance.now() - t0;
      t0 = performance.now();
      const up = tf.tensor1d(received!);
      await tf.sum(up).data(); // uploaded and used by a kernel
      const tUp = performance.now() - t0;
      up.dispose();
      if (r >= WARMUP) {
        readback.push(tRead);
        wire.push(tWire);
        upload.push(tUp);
      }
    }
  } finally {
    await sub.drain();
  }
  const [rb, w, up] = [median(readback), median(wire), median(upload)];
  const size = bytes >= 1 << 20 ? `${bytes >> 20} MB` : `${bytes >> 10} KB`;
  return [size, rb.toFixed(2), w.toFixed(2), up.toFixed(2), (rb + w + up).toFixed(2), `${((bytes / (rb + w + up)) * 1e-3).toFixed(0)}`];
}

async function child(): Promise<void> {
  // BENCH_GPU_BACKEND=wasm runs the same measurements on the CPU (a dry run of this code where no GPU is).
  const choice = await selectBackend({ prefer: (process.env['BENCH_GPU_BACKEND'] as 'webgpu' | undefined) ?? 'webgpu', log: null });
  const server = await startNatsServer();
  const a = await Bus.connect({ role: 'admin', servers: server.url, name: 'bench-gpu-a' });
  const b = await Bus.connect({ role: 'admin', servers: server.url, name: 'bench-gpu-b' });
  try {
    const rows: string[][] = [];
    for (const c of CONFIGS) rows.push(await steps(c, server.url));
    const hops: string[][] = [];
    for (const bytes of [64 << 10, 1 << 20, 16 << 20]) hops.push(await hop(bytes, a, b));
    const out = [
      TITLE,
      '',
      `${machineLine()} GPU: ${choice.device}. ${new Date().toISOString().slice(0, 10)}. ` +
        `SGD, median ms per step of ${STEPS} after ${WARMUP} warm-up steps; Troupe in one process (createPipeline), ` +
        'tensors between its stages handed over on the GPU.',
      '',
      table(
        [
          'model',
          'stock trainOnBatch',
          'Troupe 1 stage, m=1',
          'Troupe 1 stage, m=4',
          'Troupe 2 stages, m=4',
          '1 stage / stock (target <= 1.5x)',
          '2 stages speed / 1 stage (target >= 0.8x)',
        ],
        rows,
      ),
      '',
      'One stage-to-stage hop of an activation that leaves the GPU (stages in different processes): median ms per part.',
      '',
      table(['activation', 'read back (await data)', 'frame through nats-server', 'upload + first kernel', 'hop total', 'MB/s'], hops),
    ];
    process.stdout.write(`${out.join('\n')}\n`);
  } finally {
    await a.close();
    await b.close();
    await server.stop();
  }
}

if (process.argv.includes('--child')) {
  child().then(
    () => process.exit(0), // Dawn keeps the process alive while its GPU object lives
    (err: unknown) => {
      process.stderr.write(`bench gpu: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
      process.exit(1);
    },
  );
}
