/** The pool worker machine in memory: slots, refusals when full, draining, and handing tasks back. */
import { describe, expect, it } from 'vitest';
import { createActor } from 'xstate';
import { poolWorkerMachine } from '../../actors/poolWorkerMachine.js';

function worker(capacity: number) {
  const log: string[] = [];
  const machine = poolWorkerMachine.provide({
    actions: {
      startTask: (_, { key, index }) => void log.push(`start ${key} #${index}`),
      refuseTask: (_, { key }) => void log.push(`refuse ${key}`),
      stopTask: (_, { key }) => void log.push(`stop ${key}`),
      releaseTasks: (_, { keys }) => void log.push(`release ${keys.join(',')}`),
    },
  });
  const actor = createActor(machine, { input: { pool: 'p', capacity } }).start();
  return { actor, log };
}

describe('poolWorker machine', () => {
  it('starts tasks while a slot is free and refuses the rest; a slot frees at END', () => {
    const { actor, log } = worker(2);
    actor.send({ type: 'TASK', key: 'c/1', index: 0 });
    actor.send({ type: 'TASK', key: 'c/2', index: 1 });
    actor.send({ type: 'TASK', key: 'c/3', index: 2 });
    expect(log).toEqual(['start c/1 #0', 'start c/2 #1', 'refuse c/3']);
    expect(actor.getSnapshot().value).toBe('busy');
    actor.send({ type: 'END', key: 'c/1', outcome: 'done' });
    actor.send({ type: 'TASK', key: 'c/3', index: 2 });
    actor.send({ type: 'END', key: 'c/2', outcome: 'timeout' });
    actor.send({ type: 'END', key: 'c/3', outcome: 'failed' });
    expect(log.at(-1)).toBe('start c/3 #2');
    expect(actor.getSnapshot().value).toBe('idle');
    expect(actor.getSnapshot().context).toMatchObject({ done: 1, timedOut: 1, failed: 1, refused: 1, running: {} });
  });

  it('a task offered again under the key it runs is not started twice, nor refused (its answer will come)', () => {
    const { actor, log } = worker(2);
    actor.send({ type: 'TASK', key: 'c/1', index: 0 });
    actor.send({ type: 'TASK', key: 'c/1', index: 0 });
    expect(log).toEqual(['start c/1 #0']);
    expect(actor.getSnapshot().context).toMatchObject({ running: { 'c/1': 0 }, refused: 0 });
    actor.send({ type: 'END', key: 'c/1', outcome: 'done' });
    expect(actor.getSnapshot().value).toBe('idle');
    expect(actor.getSnapshot().context).toMatchObject({ done: 1, running: {} });
  });

  it('a cancel stops only a running task; an END of a task it does not run changes nothing', () => {
    const { actor, log } = worker(1);
    actor.send({ type: 'TASK', key: 'c/1', index: 0 });
    actor.send({ type: 'CANCEL', key: 'c/9' });
    actor.send({ type: 'END', key: 'c/9', outcome: 'done' });
    actor.send({ type: 'CANCEL', key: 'c/1' });
    expect(log).toEqual(['start c/1 #0', 'stop c/1']);
    actor.send({ type: 'END', key: 'c/1', outcome: 'cancelled' });
    expect(actor.getSnapshot().context).toMatchObject({ done: 0, cancelled: 1 });
  });

  it('STOP refuses new tasks and waits for the running ones; RELEASE hands them back', () => {
    const { actor, log } = worker(2);
    actor.send({ type: 'TASK', key: 'c/1', index: 0 });
    actor.send({ type: 'TASK', key: 'c/2', index: 1 });
    actor.send({ type: 'STOP' });
    actor.send({ type: 'TASK', key: 'c/3', index: 2 });
    actor.send({ type: 'END', key: 'c/1', outcome: 'done' });
    expect(actor.getSnapshot().value).toBe('draining');
    actor.send({ type: 'RELEASE' });
    expect(log).toEqual(['start c/1 #0', 'start c/2 #1', 'refuse c/3', 'release c/2']);
    expect(actor.getSnapshot().status).toBe('done');
    expect(actor.getSnapshot().context).toMatchObject({ done: 1, released: 1 });
  });

  it('an idle worker stops at once', () => {
    const { actor } = worker(1);
    actor.send({ type: 'STOP' });
    expect(actor.getSnapshot().status).toBe('done');
  });
});
