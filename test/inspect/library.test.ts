/**
 * Troupe's Stately frames against the library's own: one actor (a machine with inline
 * guards, assign actions, an invoked promise child and a final output) is inspected at once
 * by @statelyai/inspect's `createWebSocketInspector` (frames read from a local WebSocket
 * server) and by Troupe's ActorInspector (frames read from a real nats-server), and the two
 * streams are compared frame by frame, field by field, ids included (Troupe's carry a
 * `<host>:<pid>:` prefix), timestamps excluded.
 */
import type { AddressInfo } from 'node:net';
import { createWebSocketInspector } from '@statelyai/inspect';
import { describe, expect, it } from 'vitest';
import { WebSocketServer } from 'ws';
import { and, assign, createActor, fromPromise, not, setup, stateIn } from 'xstate';
import { ActorInspector } from '../../src/inspect/actorInspector.js';
import { SESSION_PREFIX } from '../../src/inspect/statelyEvents.js';
import { Bus } from '../../src/transport/bus.js';
import { useNatsServer } from '../helpers/nats.js';

const nats = useNatsServer();

const isEven = ({ context }: { context: { n: number } }) => context.n % 2 === 0;

/** Inline guards (`and`, `not`, `stateIn`, a function), assign actions, a named action, a promise child, a final output. */
const counter = setup({
  types: {
    context: {} as { n: number; log: string[]; doubled: number },
    events: {} as { type: 'ADD'; by: number } | { type: 'GO' } | { type: 'STOP' },
    input: {} as { start: number },
  },
  actors: { double: fromPromise<number, { n: number }>(async ({ input }) => input.n * 2) },
  actions: { note: assign({ log: ({ context, event }) => [...context.log, event.type] }) },
  guards: { small: ({ context }) => context.n < 100 },
}).createMachine({
  id: 'counter',
  context: ({ input }) => ({ n: input.start, log: [], doubled: 0 }),
  initial: 'counting',
  states: {
    counting: {
      tags: ['busy'],
      on: {
        ADD: [
          { guard: and(['small', not(stateIn('#counter.done'))]), actions: [assign({ n: ({ context, event }) => context.n + event.by }), 'note'] },
          { actions: 'note' },
        ],
        GO: { guard: isEven, target: 'doubling' },
      },
    },
    doubling: {
      invoke: {
        id: 'doubler',
        src: 'double',
        input: ({ context }) => ({ n: context.n }),
        onDone: { target: 'waiting', actions: assign({ doubled: ({ event }) => event.output }) },
      },
    },
    waiting: { on: { STOP: 'done' } },
    done: { type: 'final' },
  },
  output: ({ context }) => ({ total: context.n, doubled: context.doubled }),
});

type Frame = Record<string, unknown> & { type: string; sessionId: string; snapshot?: { status: string } };

/** Without timestamps, with Troupe's process prefix taken off its session ids, the definition parsed (the library sorts its keys). */
function comparable(f: Frame, prefix: string): Frame {
  const out: Frame = { ...f };
  if (typeof out['definition'] === 'string') out['definition'] = JSON.parse(out['definition']);
  delete out['createdAt'];
  delete out['id'];
  for (const k of ['sessionId', 'rootId', 'parentId', 'sourceId']) {
    const v = out[k];
    if (typeof v === 'string' && prefix && v.startsWith(prefix)) out[k] = v.slice(prefix.length);
  }
  return out;
}

/** The root actor's final snapshot has come (the promise child's own 'done' snapshot comes earlier). */
const finished = (frames: Frame[]) => frames.some((f) => f.type === '@xstate.snapshot' && f.snapshot?.status === 'done' && f.sessionId === f['rootId']);

describe('Troupe frames against @statelyai/inspect 0.7.2', () => {
  it("match the library's createWebSocketInspector frame by frame for the same actor", async () => {
    // The library's side: its WebSocket inspector sends to this server.
    const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
    await new Promise<void>((r) => wss.once('listening', () => r()));
    const libFrames: Frame[] = [];
    let libDone!: () => void;
    const libFinished = new Promise<void>((r) => (libDone = r));
    const connected = new Promise<void>((r) =>
      wss.once('connection', (ws) => {
        ws.on('message', (d) => {
          libFrames.push(JSON.parse(d.toString()) as Frame);
          if (finished(libFrames)) libDone();
        });
        r();
      }),
    );
    const lib = createWebSocketInspector({ url: `ws://127.0.0.1:${(wss.address() as AddressInfo).port}` });
    await connected;

    // Troupe's side: its inspector publishes on NATS; a listener reads them.
    const bus = await Bus.connect({ role: 'admin', servers: nats.server.url });
    const reader = await Bus.connect({ role: 'inspector', servers: nats.server.url });
    const ours: Frame[] = [];
    let oursDone!: () => void;
    const oursFinished = new Promise<void>((r) => (oursDone = r));
    const sub = reader.subscribe('troupe.cmp.inspect.counter', (m) => {
      ours.push(JSON.parse(new TextDecoder().decode(m.data)) as Frame);
      if (finished(ours)) oursDone();
    });
    await reader.flush();
    const troupe = new ActorInspector({ bus, scope: 'cmp', actor: 'counter' });
    try {
      const actor = createActor(counter, {
        input: { start: 1 },
        inspect: (ev) => {
          lib.inspect.next?.(ev);
          troupe.inspect(ev);
        },
      });
      actor.start();
      actor.send({ type: 'ADD', by: 3 });
      // A turn of the event loop: both inspectors announce the actor with the snapshot it has by then.
      await new Promise((r) => setTimeout(r, 5));
      actor.send({ type: 'GO' });
      actor.send({ type: 'ADD', by: 200 });
      await new Promise<void>((resolve) => actor.subscribe((s) => s.matches('waiting') && resolve()));
      actor.send({ type: 'STOP' });
      expect(actor.getSnapshot().output).toEqual({ total: 4, doubled: 8 });
      await Promise.all([libFinished, oursFinished]);

      expect(ours.length).toBe(libFrames.length);
      expect(ours.map((f) => f.type)).toEqual(libFrames.map((f) => f.type));
      for (let i = 0; i < ours.length; i++)
        expect(comparable(ours[i]!, SESSION_PREFIX), `frame ${i} (${ours[i]!.type})`).toEqual(comparable(libFrames[i]!, ''));

      // What the comparison covers: the child announced with its parent, guards and actions named, the real first snapshot, the output.
      const actors = ours.filter((f) => f.type === '@xstate.actor');
      expect(actors.map((a) => a['name'])).toEqual(['counter', 'doubler']);
      expect(actors[1]!['parentId']).toBe(actors[0]!.sessionId);
      const def = JSON.parse(actors[0]!['definition'] as string) as { states: Record<string, { on?: Record<string, unknown> }> };
      const add = def.states['counting']!.on!['ADD'] as { guard?: unknown; actions: unknown[] }[];
      expect(add[0]!.guard).toEqual({ type: 'and' });
      expect(add[0]!.actions).toEqual([{ type: 'assign' }, 'note']);
      expect((def.states['counting']!.on!['GO'] as { guard: unknown }).guard).toEqual({ type: 'isEven' });
      expect(actors[0]!.snapshot).toMatchObject({
        status: 'active',
        value: 'counting',
        context: { n: 4, log: ['ADD'] },
        tags: ['busy'],
        children: {},
        historyValue: {},
      });
      const last = ours.filter((f) => f.type === '@xstate.snapshot' && f.sessionId === actors[0]!.sessionId).at(-1)!;
      expect(last.snapshot).toMatchObject({ status: 'done', value: 'done', output: { total: 4, doubled: 8 } });
      // The done event of the child names it as its sender.
      const doneEvent = ours.find((f) => f.type === '@xstate.event' && (f['event'] as { type: string }).type.startsWith('xstate.done.actor'))!;
      expect(doneEvent['sourceId']).toBe(actors[1]!.sessionId);
    } finally {
      lib.stop();
      await sub.drain();
      await reader.close();
      await bus.close();
      await new Promise<void>((r) => wss.close(() => r()));
    }
  });
});
