/**
 * The pool worker and the module runtime are xstate actors like the stages: with inspection
 * on, their events reach troupe.<pool|serve>-<name>.inspect.*, where `troupe inspect` (and
 * an inspector-role client) reads them.
 */
import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { Pool } from '../../src/pool/pool.js';
import { PoolWorker } from '../../src/pool/poolWorker.js';
import { ModuleClient } from '../../src/serve/moduleClient.js';
import { ModuleRuntime, moduleOfModel } from '../../src/serve/moduleRuntime.js';
import { Bus } from '../../src/transport/bus.js';
import { mlp } from '../helpers/models.js';
import { useNatsServer } from '../helpers/nats.js';

const nats = useNatsServer();

/** States an actor's snapshot events went through, as the inspector sees them. */
async function watch(inspector: Bus, subject: string): Promise<{ states: string[]; stop(): Promise<void> }> {
  const states: string[] = [];
  const sub = inspector.subscribe(subject, (m) => {
    const e = JSON.parse(new TextDecoder().decode(m.data)) as { type: string; snapshot?: { value: unknown } };
    if (e.type === '@xstate.snapshot' && e.snapshot) states.push(JSON.stringify(e.snapshot.value));
  });
  await inspector.flush();
  return { states, stop: () => sub.drain() };
}

describe('pool and runtime actors in the inspector', () => {
  it('a pool worker shows idle -> busy -> idle; a runtime serving.idle -> serving.processing -> stopped', async () => {
    const inspector = await Bus.connect({ role: 'inspector', servers: nats.server.url });
    const bus = await Bus.connect({ role: 'pool', servers: nats.server.url });
    const poolWatch = await watch(inspector, 'troupe.pool-sq.inspect.>');
    const serveWatch = await watch(inspector, 'troupe.serve-rt.inspect.>');
    const worker = await PoolWorker.start({ bus, pool: 'sq', task: (x: number) => x * x, inspect: true });
    const runtime = await ModuleRuntime.start({ bus, name: 'rt', modules: [moduleOfModel('m', mlp([3, 4, 2], 2), { maxWaitMs: 1 })], inspect: true });
    try {
      expect(await new Pool<number, number>({ bus, name: 'sq' }).map([2, 3])).toEqual([4, 9]);
      const x = tf.ones([1, 3]);
      tf.dispose(await new ModuleClient({ bus, runtime: 'rt', module: 'm' }).forward(x));
      x.dispose();
      await worker.stop();
      await runtime.stop();
      await bus.flush();
      await inspector.flush();
      expect(poolWatch.states).toContain('"busy"');
      expect(poolWatch.states).toContain('"idle"');
      expect(serveWatch.states).toContain('{"serving":"processing"}');
      expect(serveWatch.states.at(-1)).toBe('"stopped"');
    } finally {
      await poolWatch.stop();
      await serveWatch.stop();
      await bus.close();
      await inspector.close();
    }
  });
});
