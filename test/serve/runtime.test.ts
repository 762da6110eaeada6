/**
 * The module runtime over a real nats-server: many clients sending single examples are
 * served in batches; a wrong request is refused alone; a failing batch answers its error to
 * each requester and the runtime goes on; shutdown serves what is queued.
 */
import * as tf from '@tensorflow/tfjs';
import { describe, expect, it, vi } from 'vitest';
import { ModuleRuntime, moduleOfModel, type ModuleBackend } from '../../src/serve/moduleRuntime.js';
import { ModuleClient, ServeError } from '../../src/serve/moduleClient.js';
import { Bus } from '../../src/transport/bus.js';
import { mlp } from '../helpers/models.js';
import { useNatsServer } from '../helpers/nats.js';

const nats = useNatsServer();
const connect = () => Bus.connect({ role: 'pool', servers: nats.server.url });

function maxDiff(a: tf.Tensor, b: tf.Tensor): number {
  return tf.tidy(() => tf.max(tf.abs(tf.sub(a, b))).dataSync()[0]!);
}

describe('ModuleRuntime', () => {
  it('8 concurrent clients sending single examples are served in batches, each answer its own; a wrong shape is refused alone', async () => {
    const model = mlp([6, 16, 3], 4);
    const bus = await connect();
    const runtime = await ModuleRuntime.start({ bus, name: 'rt', modules: [moduleOfModel('mlp', model, { maxBatchSize: 16, maxWaitMs: 20 })] });
    const clients = await Promise.all(Array.from({ length: 8 }, connect));
    try {
      const xs = tf.randomNormal([80, 6], 0, 1, 'float32', 3);
      const want = model.predict(xs) as tf.Tensor;
      const rows = tf.split(xs, 80, 0);
      const bad = tf.zeros([1, 5]);
      const [answers, refused] = await Promise.all([
        Promise.all(
          clients.map(async (c, k) => {
            const client = new ModuleClient({ bus: c, runtime: 'rt', module: 'mlp' });
            const out: tf.Tensor[] = [];
            // Each client sends its 10 examples at once, one request each.
            await Promise.all(Array.from({ length: 10 }, async (_, j) => (out[j] = (await client.forward(rows[k * 10 + j]!))[0]!)));
            return out;
          }),
        ),
        new ModuleClient({ bus: clients[0]!, runtime: 'rt', module: 'mlp' }).forward(bad).catch((e: unknown) => e),
      ]);
      const got = tf.concat(answers.flat(), 0);
      expect(maxDiff(got, want)).toBeLessThan(1e-5);
      expect(refused).toBeInstanceOf(ServeError);
      expect((refused as ServeError).code).toBe('SHAPE');
      expect((refused as Error).message).toMatch(/mlp\.forward: input 0 is float32\[1,5\], expected float32\[n,6\]/);
      const [stats] = runtime.stats();
      console.log(
        `forward pool: ${stats!.examples} examples in ${stats!.batches} batches, average batch size ${stats!.averageBatchSize.toFixed(2)}, ` +
          `${stats!.examplesPerSecond.toFixed(0)} examples/s`,
      );
      expect(stats!.examples).toBe(80);
      expect(stats!.averageBatchSize).toBeGreaterThan(1);
      expect(stats!.refused).toBe(1);
      tf.dispose([xs, want, got, bad, ...rows, ...answers.flat()]);
    } finally {
      await runtime.stop();
      await Promise.all(clients.map((c) => c.close()));
      await bus.close();
    }
  });

  it('a failing batch answers its error to each requester; the runtime keeps serving; backward gives input gradients', async () => {
    const model = mlp([4, 8, 2], 6);
    const good = moduleOfModel('m', model, { maxBatchSize: 8, maxWaitMs: 30 });
    let explode = true;
    const flaky: ModuleBackend = {
      ...good,
      forward: (xs) => {
        if (explode) throw new Error('device lost');
        return good.forward(xs);
      },
    };
    const bus = await connect();
    const runtime = await ModuleRuntime.start({ bus, name: 'rt2', modules: [flaky] });
    const client = new ModuleClient({ bus, runtime: 'rt2', module: 'm' });
    try {
      const x = tf.ones([1, 4]);
      const failures = await Promise.all(Array.from({ length: 4 }, () => client.forward(x).catch((e: unknown) => e)));
      // Each request failed on its own too: each error names its request.
      failures.forEach((f, n) => {
        expect(f).toBeInstanceOf(ServeError);
        expect((f as Error).message).toMatch(new RegExp(`m\\.forward: request ${client.name}#${n + 1} \\(1 example\\) failed.*: device lost`));
      });
      explode = false;
      const [y] = await client.forward(x);
      expect(maxDiff(y!, model.predict(x) as tf.Tensor)).toBeLessThan(1e-6);
      expect(runtime.stats()[0]!.failed).toBe(4);
      // Backward: the input gradient of sum(y * dy), as tfjs computes it here.
      const dy = tf.onesLike(y!);
      const [dx] = await client.backward([x], [dy]);
      const ref = tf.grad((xx: tf.Tensor) => tf.sum(tf.mul(model.apply(xx) as tf.Tensor, dy)))(x);
      expect(maxDiff(dx!, ref)).toBeLessThan(1e-6);
      expect(runtime.actor.getSnapshot().matches({ serving: 'idle' })).toBe(true);
      tf.dispose([x, y!, dy, dx!, ref]);
    } finally {
      await runtime.stop();
      await bus.close();
    }
  });

  it('one poisoned request in a batch: the batch runs again request by request, the others get their answers and the poisoned one its own error', async () => {
    const model = mlp([4, 8, 2], 8);
    const good = moduleOfModel('m', model, { maxBatchSize: 16, maxWaitMs: 10_000 });
    // A module that cannot take a negative first feature (a bad row, a token out of range...).
    const picky: ModuleBackend = {
      ...good,
      forward: (xs) => {
        if (tf.tidy(() => tf.min(xs[0]!.slice([0, 0], [-1, 1])).dataSync()[0]!) < 0) throw new RangeError('negative feature');
        return good.forward(xs);
      },
    };
    const bus = await connect();
    const runtime = await ModuleRuntime.start({ bus, name: 'rt4', modules: [picky] });
    const clients = Array.from({ length: 7 }, (_, k) => new ModuleClient({ bus, runtime: 'rt4', module: 'm', name: `good${k}` }));
    const poisoner = new ModuleClient({ bus, runtime: 'rt4', module: 'm', name: 'poisoner' });
    const xs = tf.randomUniform([7, 4], 0, 1, 'float32', 9);
    const rows = tf.split(xs, 7, 0);
    const poison = tf.tensor2d([[-1, 0, 0, 0]]);
    try {
      // maxBatchSize 16 and a long wait: the 8 requests form one batch, run when stop() flushes it.
      const answers = clients.map((c, k) => c.forward(rows[k]!));
      const refused = poisoner.forward(poison).catch((e: unknown) => e);
      // A client reads its tensors (asynchronously) before it sends: wait until all 8 wait in the pool.
      await vi.waitFor(() => expect(runtime.stats()[0]!.queued).toBe(8));
      await runtime.stop();
      const outs = await Promise.all(answers);
      const want = model.predict(xs) as tf.Tensor;
      expect(
        maxDiff(
          tf.concat(
            outs.map((o) => o[0]!),
            0,
          ),
          want,
        ),
      ).toBeLessThan(1e-6);
      const err = await refused;
      expect(err).toBeInstanceOf(ServeError);
      expect((err as ServeError).code).toBe('REQUEST_FAILED');
      expect((err as Error).message).toBe(
        'm.forward: request poisoner#1 (1 example) failed alone, after its batch of 8 requests (8 examples) failed: negative feature',
      );
      const [stats] = runtime.stats();
      expect(stats).toMatchObject({ failed: 1, split: 1, examples: 7 });
      expect(runtime.actor.getSnapshot().context.splits).toBe(1);
      tf.dispose([want, ...outs.flat()]);
    } finally {
      await runtime.stop();
      await bus.close();
      tf.dispose([xs, poison, ...rows]);
    }
  });

  it('graceful shutdown serves every queued request, then takes none', async () => {
    const model = mlp([4, 8, 2], 7);
    const bus = await connect();
    const runtime = await ModuleRuntime.start({ bus, name: 'rt3', modules: [moduleOfModel('m', model, { maxBatchSize: 64, maxWaitMs: 10_000 })] });
    const client = new ModuleClient({ bus, runtime: 'rt3', module: 'm', timeoutMs: 5_000 });
    const x = tf.ones([1, 4]);
    // A long wait: these sit in the pool until stop() flushes them.
    const pending = Array.from({ length: 20 }, () => client.forward(x));
    await bus.flush();
    await runtime.stop();
    const outs = await Promise.all(pending);
    expect(outs).toHaveLength(20);
    expect(runtime.stats()[0]!.examples).toBe(20);
    expect(runtime.actor.getSnapshot().status).toBe('done');
    await expect(client.forward(x)).rejects.toThrow(/no responders|503|timeout/i);
    tf.dispose([x, ...outs.flat()]);
    await bus.close();
  });
});
