import { describe, expect, it } from 'vitest';
import { DeviceTurn } from '../../src/runtime/deviceTurn.js';

describe('DeviceTurn', () => {
  it('lets positions run only in order', async () => {
    const turn = new DeviceTurn();
    const ran: number[] = [];
    const run = async (pos: number) => {
      await turn.take(1, pos);
      ran.push(pos);
      turn.done(1, pos);
    };
    // Asked for out of order: 2 and 1 wait for 0.
    const all = Promise.all([run(2), run(1), run(0)]);
    await all;
    expect(ran).toEqual([0, 1, 2]);
  });

  it('a new step starts a fresh order and gives up the waiters of the old one', async () => {
    const turn = new DeviceTurn();
    await turn.take(1, 0);
    const stuck = turn.take(1, 3);
    await turn.take(2, 0);
    await expect(stuck).rejects.toThrow(/given up: step 2 began/);
    await expect(turn.take(1, 1)).rejects.toThrow(/step 1, which is over/);
  });

  it('abort fails the waiters of the aborted step', async () => {
    const turn = new DeviceTurn();
    const w = turn.take(5, 2);
    turn.abort(5);
    await expect(w).rejects.toThrow(/given up/);
    // The next step runs from position 0.
    await expect(turn.take(6, 0)).resolves.toBeUndefined();
  });
});
