import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { createPipeline } from '../../src/index.js';
import { data, mlp } from '../helpers/models.js';
import { useNatsServer } from '../helpers/nats.js';
import { troupe } from '../helpers/troupeCli.js';
import { countingLock } from '../helpers/countingLock.js';

const nats = useNatsServer();

interface Frame {
  type: string;
  sessionId: string;
  _version: string;
  definition?: string;
  snapshot?: { value: unknown; context: unknown };
  event?: { type: string; frame?: { from: string } };
  name?: string;
  parentId?: string;
  sourceId?: string;
}

describe('troupe inspect --stately', () => {
  it('relays the actors of a running job in the @statelyai/inspect WebSocket format', async () => {
    const job = 'relayed';
    const cli = troupe(['inspect', '--nats', nats.server.url, '--job', job, '--stately']);
    const [, wsUrl] = await cli.waitFor(/Stately relay: (ws:\/\/\S+)/);
    const ws = new WebSocket(wsUrl!);
    const frames: Frame[] = [];
    // Two steps of 2 stages: the scheduler receives UPDATED four times.
    const lock = countingLock(4);
    ws.on('message', (d) => {
      const f = JSON.parse(d.toString()) as Frame;
      frames.push(f);
      if (f.type === '@xstate.event' && f.event?.type === 'UPDATED') lock.count();
    });
    await new Promise<void>((resolve, reject) => {
      ws.once('open', () => resolve());
      ws.once('error', reject);
    });
    const pipe = await createPipeline({
      model: mlp([6, 8, 2], 4),
      stages: 2,
      microbatches: 2,
      job,
      inspect: true,
      optimizer: tf.train.sgd(0.1),
      loss: 'categoricalCrossentropy',
      nats: { servers: nats.server.url },
    });
    const { x, y } = data(4, 6, 2);
    try {
      await pipe.trainStep(x, y);
      await pipe.trainStep(x, y);
      await pipe.close();
      await lock.wait(10_000);
      const announced = frames.filter((f) => f.type === '@xstate.actor');
      const actors = announced.filter((a) => a.parentId === undefined);
      expect(actors.map((a) => a.name).sort()).toEqual(['scheduler', 'stage-0', 'stage-1']);
      // Children (each stage's boot, the scheduler's beginStep per step) are announced too, with their parent.
      const children = announced.filter((a) => a.parentId !== undefined);
      expect(children.length).toBeGreaterThanOrEqual(4);
      for (const c of children) expect(actors.map((a) => a.sessionId)).toContain(c.parentId);
      for (const a of actors) {
        expect(typeof a._version).toBe('string');
        const def = JSON.parse(a.definition!) as { id: string; states: Record<string, unknown> };
        expect(Object.keys(def.states).length).toBeGreaterThanOrEqual(2);
        expect(['stage', 'scheduler']).toContain(def.id);
      }
      // A pipeline's actors are named by job and actor (one of each per job), so that actors in other
      // processes can name them as senders; their children by their root and xstate's id.
      expect(actors.map((a) => a.sessionId).sort()).toEqual([`${job}:scheduler`, `${job}:stage-0`, `${job}:stage-1`]);
      for (const c of children) expect(c.sessionId).toMatch(new RegExp(`^${job}:(scheduler|stage-\\d)/x:\\d+$`));
      const snapshots = frames.filter((f) => f.type === '@xstate.snapshot');
      const events = frames.filter((f) => f.type === '@xstate.event');
      expect(snapshots.length).toBeGreaterThan(10);
      expect(events.some((e) => e.event?.type === 'FRAME')).toBe(true);
      // Every sender named is an announced actor; a frame's sender is the stage (or the scheduler) that sent it.
      const sessions = new Set(announced.map((a) => a.sessionId));
      for (const e of events) if (e.sourceId !== undefined) expect(sessions).toContain(e.sourceId);
      const stage1 = actors.find((a) => a.name === 'stage-1')!.sessionId;
      const framesTo1 = events.filter((e) => e.sessionId === stage1 && e.event?.type === 'FRAME');
      expect(framesTo1.length).toBeGreaterThan(0);
      for (const e of framesTo1) expect(e.sourceId).toBe(e.event!.frame!.from === 'sched' ? `${job}:scheduler` : `${job}:stage-0`);
      // The scheduler machine is handed only the ACTION events it acts on: stage 0's
      // releases (its backwards), one per microbatch and step; the others count for progress.
      const scheduler = actors.find((a) => a.name === 'scheduler')!.sessionId;
      const actionFrames = events.filter((e) => e.sessionId === scheduler && e.event?.type === 'ACTION');
      const actions = actionFrames.map((e) => e.event as unknown as { rank: number; action: string });
      expect(actions.map((a) => `${a.rank}:${a.action}`)).toEqual(['0:B0', '0:B1', '0:B0', '0:B1']);
      for (const e of actionFrames) expect(e.sourceId).toBe(`${job}:stage-0`);
      // Definitions name guards and actions as the library does: and([...]) guards, assign actions.
      const def = actors.find((a) => a.name === 'stage-0')!.definition!;
      expect(def).toContain('{"type":"and"}');
      expect(def).toContain('{"type":"assign"}');
      // Contexts are sanitised: tensor bytes appear only as "[Float32Array n]".
      const text = JSON.stringify(frames);
      expect(text).toMatch(/\[Float32Array \d+\]/);
      expect(text).not.toMatch(/"0":\s*-?\d/); // no typed array serialised element by element
    } finally {
      ws.close();
      cli.child.kill('SIGINT');
      expect((await cli.exit).code).toBe(0);
      tf.dispose([x, y]);
    }
  });
});
