/**
 * Pool values are JSON. What JSON.stringify would throw on (BigInt), change (NaN, Infinity,
 * a typed array, a Map, a Set, a Date, a class instance, a hole) or drop (a function, a
 * symbol) is refused before anything is sent, with a PoolValueError naming the task's index
 * and the path inside the value; an output the same way, as the task's error.
 */
import { describe, expect, it } from 'vitest';
import { Bus } from '../../src/transport/bus.js';
import { Pool, PoolTaskError, PoolValueError } from '../../src/pool/pool.js';
import { PoolWorker } from '../../src/pool/poolWorker.js';
import { useNatsServer } from '../helpers/nats.js';

const nats = useNatsServer();

class Point {
  constructor(readonly x: number) {}
}

describe('pool values', () => {
  it('refuses at put and map what JSON cannot carry, naming the index and the path; nothing reaches a worker', async () => {
    const bus = await Bus.connect({ role: 'pool', servers: nats.server.url });
    let ran = 0;
    const worker = await PoolWorker.start({ bus, pool: 'values', task: (x: unknown) => (ran++, x) });
    const pool = new Pool<unknown, unknown>({ bus, name: 'values' });
    const circular: Record<string, unknown> = { a: { b: [] as unknown[] } };
    (circular['a'] as { b: unknown[] }).b.push(circular);
    const cases: [unknown, string, RegExp][] = [
      [{ n: 12n }, 'input.n', /is a BigInt/],
      [{ points: [{ x: 1 }, { x: 2 }, { x: NaN }] }, 'input.points[2].x', /is NaN; JSON has no NaN or Infinity/],
      [[1, -Infinity], 'input[1]', /is -Infinity/],
      [{ w: new Float32Array([1, 2]) }, 'input.w', /is a Float32Array; send Array.from\(it\)/],
      [{ m: new Map([['a', 1]]) }, 'input.m', /is a Map/],
      [new Set([1]), 'input', /is a Set/],
      [{ f: () => 1 }, 'input.f', /is a function/],
      [{ when: new Date(0) }, 'input.when', /is a Date/],
      [{ p: new Point(1) }, 'input.p', /is a Point instance/],
      [undefined, 'input', /is undefined/],
      [[1, , 3], 'input[1]', /is undefined \(or a hole\)/],
      [circular, 'input.a.b[0]', /refers back to input; JSON has no cycles/],
      [{ 'odd key': [Symbol('s')] }, 'input["odd key"][0]', /is a symbol/],
    ];
    try {
      for (const [value, path, problem] of cases) {
        const err = (() => {
          try {
            pool.put(value);
          } catch (e) {
            return e;
          }
          return null;
        })();
        expect(err, path).toBeInstanceOf(PoolValueError);
        expect((err as PoolValueError).path).toBe(path);
        expect((err as Error).message).toMatch(problem);
      }
      // The index is the input's: the map is refused before any task goes.
      const err = await pool.map([1, { ok: true }, { bad: 1n }, 4]).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(PoolValueError);
      expect((err as PoolValueError).index).toBe(2);
      expect((err as Error).message).toBe('task 2: input.bad is a BigInt; JSON has none (send it as a string or a number)');
      expect(ran).toBe(0);
      // What JSON carries goes through unchanged (an undefined property is dropped, as JSON does).
      const fine = { s: 'é\n"', n: -0.5, b: false, z: null, nested: [[1, 2], { deep: [] }], gone: undefined };
      expect(await pool.map([fine])).toEqual([{ s: 'é\n"', n: -0.5, b: false, z: null, nested: [[1, 2], { deep: [] }] }]);
      // An input too large for one NATS message is refused too.
      expect(() => pool.put('x'.repeat(bus.maxPayload))).toThrow(/task \d+: input is \d+ bytes of JSON; one NATS message carries at most/);
    } finally {
      await pool.close();
      await worker.stop();
      await bus.close();
    }
  });

  it('an output JSON cannot carry fails its task, naming the path; the worker goes on', async () => {
    const bus = await Bus.connect({ role: 'pool', servers: nats.server.url });
    const worker = await PoolWorker.start({ bus, pool: 'outputs', task: (x: number) => (x === 1 ? { loss: NaN } : { loss: x }) });
    const pool = new Pool<number, { loss: number }>({ bus, name: 'outputs' });
    try {
      const err = await pool.map([0, 1]).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(PoolTaskError);
      expect((err as PoolTaskError).index).toBe(1);
      expect((err as PoolTaskError).remote?.name).toBe('PoolValueError');
      expect((err as Error).message).toMatch(/task 1 failed in worker .*: PoolValueError: task 1: output\.loss is NaN/);
      expect(await pool.map([2])).toEqual([{ loss: 2 }]);
    } finally {
      await pool.close();
      await worker.stop();
      await bus.close();
    }
  });
});
