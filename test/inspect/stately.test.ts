import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { createPipeline } from '../../src/index.js';
import { data, mlp } from '../helpers/models.js';
import { useNatsServer } from '../helpers/nats.js';
import { troupe } from '../helpers/troupeCli.js';
import { countingLock } from '../helpers/countingLock.js';

const nats = useNatsServer();

interface Frame { type: string; sessionId: string; _version: string; definition?: string; snapshot?: { value: unknown; context: unknown }; event?: { type: string }; name?: string }

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
      model: mlp([6, 8, 2], 4), stages: 2, microbatches: 2, job, inspect: true,
      optimizer: tf.train.sgd(0.1), loss: 'categoricalCrossentropy', nats: { servers: nats.server.url },
    });
    const { x, y } = data(4, 6, 2);
    try {
      await pipe.trainStep(x, y);
      await pipe.trainStep(x, y);
      await pipe.close();
      await lock.wait(10_000);
      const actors = frames.filter((f) => f.type === '@xstate.actor');
      expect(actors.map((a) => a.name).sort()).toEqual(['scheduler', 'stage-0', 'stage-1']);
      for (const a of actors) {
        expect(typeof a._version).toBe('string');
        const def = JSON.parse(a.definition!) as { id: string; states: Record<string, unknown> };
        expect(Object.keys(def.states).length).toBeGreaterThanOrEqual(2);
        expect(['stage', 'scheduler']).toContain(def.id);
      }
      // Session ids name the process, so two processes' "x:0" never collide.
      expect(new Set(actors.map((a) => a.sessionId)).size).toBe(3);
      for (const a of actors) expect(a.sessionId).toMatch(/^[^:]+:\d+:x:\d+$/);
      const snapshots = frames.filter((f) => f.type === '@xstate.snapshot');
      const events = frames.filter((f) => f.type === '@xstate.event');
      expect(snapshots.length).toBeGreaterThan(10);
      expect(events.some((e) => e.event?.type === 'FRAME')).toBe(true);
      // The scheduler machine is handed only the ACTION events it acts on: stage 0's
      // releases (its backwards), one per microbatch and step; the others count for progress.
      const scheduler = actors.find((a) => a.name === 'scheduler')!.sessionId;
      const actions = events.filter((e) => e.sessionId === scheduler && e.event?.type === 'ACTION').map((e) => e.event as unknown as { rank: number; action: string });
      expect(actions.map((a) => `${a.rank}:${a.action}`)).toEqual(['0:B0', '0:B1', '0:B0', '0:B1']);
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
