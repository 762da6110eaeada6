/**
 * Serving throughput: the module runtime batching single-example requests (up to 32 per
 * batch, 2 ms wait) against the same runtime serving one example per batch, with 16
 * concurrent clients, side by side in one run. Model: MLP 784-1024-1024-10 on wasm.
 */
import * as tf from '@tensorflow/tfjs';
import { selectBackend, startNatsServer } from '../src/index.js';
import { Bus } from '../src/transport/index.js';
import { ModuleRuntime, moduleOfModel } from '../src/serve/moduleRuntime.js';
import { ModuleClient } from '../src/serve/moduleClient.js';
import { benchModel } from './jobs/bench.job.js';
import { machineLine, table } from './report.js';

const CLIENTS = 16;
const REQUESTS = Number(process.env['SERVE_REQUESTS'] ?? 1024);

async function throughput(url: string, maxBatchSize: number, name: string): Promise<{ perSecond: number; average: number }> {
  const bus = await Bus.connect({ role: 'pool', servers: url });
  const runtime = await ModuleRuntime.start({ bus, name, modules: [moduleOfModel('mlp', benchModel('mlp'), { maxBatchSize, maxWaitMs: 2 })] });
  const clients = await Promise.all(Array.from({ length: CLIENTS }, () => Bus.connect({ role: 'pool', servers: url })));
  const x = tf.randomUniform([1, 784], 0, 1, 'float32', 5);
  try {
    let next = 0;
    const t0 = performance.now();
    await Promise.all(
      clients.map(async (c) => {
        const client = new ModuleClient({ bus: c, runtime: name, module: 'mlp' });
        while (next++ < REQUESTS) await client.forwardWire(x);
      }),
    );
    const s = (performance.now() - t0) / 1000;
    return { perSecond: REQUESTS / s, average: runtime.stats()[0]!.averageBatchSize };
  } finally {
    await runtime.stop();
    await Promise.all(clients.map((c) => c.close()));
    await bus.close();
    x.dispose();
  }
}

export async function benchServe(): Promise<string> {
  await selectBackend({ prefer: 'wasm', log: null });
  const server = await startNatsServer();
  try {
    await throughput(server.url, 32, 'warmup');
    const unbatched = await throughput(server.url, 1, 'single');
    const batched = await throughput(server.url, 32, 'batched');
    return [
      `### Serving: batched against one example per batch (${CLIENTS} clients, ${REQUESTS} single-example requests, MLP 784-1024-1024-10)`,
      '',
      machineLine(),
      '',
      table(
        ['runtime', 'examples/s', 'average batch size', 'ratio'],
        [
          ['maxBatchSize 1', unbatched.perSecond.toFixed(0), unbatched.average.toFixed(2), '1.00'],
          ['maxBatchSize 32, maxWaitMs 2', batched.perSecond.toFixed(0), batched.average.toFixed(2), (batched.perSecond / unbatched.perSecond).toFixed(2)],
        ],
      ),
    ].join('\n');
  } finally {
    await server.stop();
  }
}

if (import.meta.url === `file://${process.argv[1]}`) console.log(await benchServe());
