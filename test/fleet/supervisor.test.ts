/**
 * The supervisor's bookkeeping of worker processes, on stand-in children (node's `fork` is
 * replaced here): which events end a child, and how often its end is reported.
 */
import type * as childProcess from 'node:child_process';
import { EventEmitter } from 'node:events';
import { beforeEach, describe, expect, it, vi } from 'vitest';
import { StateError } from '../../src/errors.js';
import { Supervisor, type WorkerExit } from '../../src/fleet/supervisor.js';

/** A stand-in for a forked child: the test emits its events. */
class FakeChild extends EventEmitter {
  pid: number | undefined = 4242;
  exitCode: number | null = null;
  signalCode: NodeJS.Signals | null = null;
  kill(): boolean {
    return true;
  }
}

const forked: FakeChild[] = [];
vi.mock('node:child_process', async (importOriginal) => ({
  ...(await importOriginal<typeof childProcess>()),
  fork: () => {
    const c = new FakeChild();
    forked.push(c);
    return c;
  },
}));

beforeEach(() => {
  forked.length = 0;
});

describe('Supervisor', () => {
  it("an 'error' of a running worker (a failed kill) is not its end: its exit is reported once, and later errors throw nothing", () => {
    const lost: WorkerExit[] = [];
    const s = new Supervisor((e) => lost.push(e));
    s.spawn(0, []);
    const child = forked[0]!;
    child.emit('error', new Error('kill EPERM'));
    expect(lost).toEqual([]);
    child.signalCode = 'SIGKILL';
    child.emit('exit', null, 'SIGKILL');
    expect(lost).toEqual([{ rank: 0, code: null, signal: 'SIGKILL' }]);
    expect(() => child.emit('error', new Error('kill EPERM'))).not.toThrow();
  });

  it('a fork that fails (no pid; node sets exitCode to the errno and emits no exit) is reported once, and kill() does not wait for an exit', async () => {
    const lost: WorkerExit[] = [];
    const s = new Supervisor((e) => lost.push(e));
    s.spawn(1, []);
    const child = forked[0]!;
    child.pid = undefined;
    child.exitCode = -11; // EAGAIN
    child.emit('error', Object.assign(new Error('spawn EAGAIN'), { code: 'EAGAIN' }));
    expect(lost).toEqual([{ rank: 1, code: null, signal: null }]);
    await s.kill(1);
  });

  it('forks nothing once stopping: a worker started after stopAll would be watched and ended by nobody', async () => {
    const s = new Supervisor(() => {});
    await s.stopAll();
    expect(() => s.spawn(0, [])).toThrow(StateError);
    expect(forked).toEqual([]);
  });
});
