import { describe, expect, it } from 'vitest';
import { FrameError } from '../../src/errors.js';
import { decodeAck, decodeMessage, decodeReply, encodeJson, type MessageTypes } from '../../src/protocol/messages.js';
import { TroupeError } from '../../src/errors.js';

const text = (s: string): Uint8Array => new TextEncoder().encode(s);

/** One valid body of each kind. */
const VALID: { [K in keyof MessageTypes]: MessageTypes[K] } = {
  plan: {
    step: 3,
    microbatches: 4,
    batchSize: 32,
    totalBatch: 32,
    forwardOnly: false,
    predict: false,
    update: true,
    granted: false,
    actions: 'F0 F1 B0 F2 B1 F3 B2 B3',
    order: '',
  },
  action: { rank: 1, step: 3, action: '1F2', t0: 1763900000000.25, ms: 0.75 },
  loss: { step: 3, microbatch: 2, loss: 0.125, metric: 0.5 },
  done: { rank: 0, step: 3, peakHeld: 2 },
  updated: { rank: 2, step: 3 },
  error: { rank: 1, step: 3, key: 'mnist/3/2/FORWARD', code: 'SHAPE', message: 'bad shape' },
  reject: { rank: 1, subject: 'troupe.mnist.stage.1.FORWARD', code: 'SHAPE', message: 'bad shape', step: 3, microbatch: 2, phase: 'FORWARD' },
  state: { step: 4, weightNames: ['dense_Dense1/kernel', 'dense_Dense1/bias'], optimizerNames: [] },
  hello: { rank: 1, stages: 2, pid: 1234, host: 'node-a', backend: 'wasm', device: 'cpu' },
  probe: { rank: 1, step: 3, state: 'running.waiting', action: 'B2', awaiting: ['BACKWARD:2'] },
  abort: { step: 3 },
  stop: { job: 'mnist' },
  key: { key: 'AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=' },
  peers: { prev: '', next: 'AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=' },
  stats: {
    rank: 0,
    step: 4,
    busyMs: 12.5,
    idleMs: 3,
    forwards: 16,
    backwards: 16,
    weightGrads: 0,
    bytesIn: 1024,
    bytesOut: 2048,
    peakHeld: 2,
    rejected: 0,
    conflicts: 0,
    tensors: 12,
    machineMs: 1.5,
    framesMs: 0.5,
  },
};
const KINDS = Object.keys(VALID) as Array<keyof MessageTypes>;

/** A value of the wrong JSON type for a field of `type`. */
function wrongFor(value: unknown): unknown[] {
  if (typeof value === 'number') return ['1', true, null, [1], { n: 1 }];
  if (typeof value === 'string') return [1, false, null, ['s'], { s: 's' }];
  return ['true', 1, 0, null, [true]];
}

function frameError(fn: () => unknown, re: RegExp): void {
  expect(fn).toThrow(FrameError);
  expect(fn).toThrow(re);
}

describe('decodeMessage', () => {
  it.each(KINDS)('accepts a valid %s body, unchanged', (kind) => {
    expect(decodeMessage(kind, encodeJson(VALID[kind]))).toEqual(VALID[kind]);
  });

  it('accepts metric null, zero and negative numbers', () => {
    expect(decodeMessage('loss', encodeJson({ ...VALID.loss, metric: null })).metric).toBeNull();
    expect(decodeMessage('loss', encodeJson({ ...VALID.loss, loss: -1.5, metric: 0 }))).toMatchObject({ loss: -1.5, metric: 0 });
    expect(decodeMessage('plan', encodeJson({ ...VALID.plan, forwardOnly: true, actions: '' }))).toMatchObject({ forwardOnly: true, actions: '' });
  });

  it.each(['', 'not json', '{', '{"step":1,}', "{'step':1}", 'NaN', '{"step":NaN}', '{"step":Infinity}', 'undefined'])(
    'refuses the non-JSON body %j',
    (body) => {
      frameError(() => decodeMessage('updated', text(body)), /^updated: body is not JSON$/);
      try {
        decodeMessage('updated', text(body));
      } catch (err) {
        expect((err as FrameError).cause).toBeInstanceOf(SyntaxError);
      }
    },
  );

  it.each(['null', '[]', '[1,2]', '1', '"plan"', 'true'])('refuses the non-object %s', (body) => {
    frameError(() => decodeMessage('plan', text(body)), /^plan: not a JSON object$/);
  });

  for (const kind of KINDS) {
    const valid = VALID[kind] as unknown as Record<string, unknown>;
    for (const field of Object.keys(valid)) {
      it(`${kind}: refuses a missing "${field}"`, () => {
        const { [field]: _gone, ...rest } = valid;
        frameError(() => decodeMessage(kind, encodeJson(rest)), new RegExp(`^${kind}: field "${field}" must be .*, got undefined$`));
      });

      it(`${kind}: refuses "${field}" of the wrong type`, () => {
        for (const bad of wrongFor(valid[field])) {
          // null is a valid metric, and a refused frame's key is null when its headers could not be read
          if (bad === null && (field === 'metric' || (kind === 'reject' && ['step', 'microbatch', 'phase'].includes(field)))) continue;
          frameError(() => decodeMessage(kind, encodeJson({ ...valid, [field]: bad })), new RegExp(`^${kind}: field "${field}" must be `));
        }
      });
    }
  }

  it('accepts a reject whose frame key is unknown (null step, microbatch and phase)', () => {
    const r = { ...VALID.reject, step: null, microbatch: null, phase: null };
    expect(decodeMessage('reject', encodeJson(r))).toEqual(r);
  });

  it('refuses non-finite numbers written as overflowing literals', () => {
    // JSON cannot write NaN, but 1e999 parses to Infinity.
    frameError(() => decodeMessage('updated', text('{"rank":1e999,"step":1}')), /updated: field "rank" must be number, got null/);
    frameError(() => decodeMessage('updated', text('{"rank":0,"step":-1e999}')), /updated: field "step" must be number/);
    frameError(() => decodeMessage('loss', text('{"step":1,"microbatch":0,"loss":1e400,"metric":null}')), /loss: field "loss" must be number/);
    frameError(() => decodeMessage('loss', text('{"step":1,"microbatch":0,"loss":1,"metric":1e400}')), /loss: field "metric" must be number\|null/);
  });

  it('refuses NaN-like strings and nulls where a number belongs', () => {
    frameError(() => decodeMessage('done', encodeJson({ ...VALID.done, peakHeld: 'NaN' })), /done: field "peakHeld" must be number, got "NaN"/);
    // JSON.stringify turns NaN into null.
    frameError(() => decodeMessage('done', encodeJson({ ...VALID.done, peakHeld: NaN })), /done: field "peakHeld" must be number, got null/);
    frameError(() => decodeMessage('action', encodeJson({ ...VALID.action, ms: Infinity })), /action: field "ms" must be number, got null/);
  });

  it("takes an action's optional timings when they are numbers, and refuses them otherwise", () => {
    const timed = { ...VALID.action, sendAt: 0.5, sendMs: 0.125, inAt: 1763900000000.5, hostMs: 0.25 };
    expect(decodeMessage('action', encodeJson(timed))).toEqual(timed);
    expect(decodeMessage('action', encodeJson(VALID.action))).toEqual(VALID.action);
    frameError(() => decodeMessage('action', encodeJson({ ...timed, sendMs: null })), /action: field "sendMs" must be number\?, got null/);
    frameError(() => decodeMessage('action', encodeJson({ ...timed, inAt: '3' })), /action: field "inAt" must be number\?, got "3"/);
  });

  it.each(KINDS)('%s: refuses unknown fields, naming them', (kind) => {
    frameError(() => decodeMessage(kind, encodeJson({ ...VALID[kind], extra: 1 })), new RegExp(`^${kind}: unknown field "extra"$`));
    frameError(() => decodeMessage(kind, encodeJson({ ...VALID[kind], Step: 1 })), new RegExp(`^${kind}: unknown field "Step"$`));
  });

  it.each(['toString', 'constructor', 'hasOwnProperty', 'valueOf', '__proto__'])('refuses the unknown field "%s", which every object inherits', (field) => {
    const body = JSON.stringify(VALID.updated).replace(/}$/, `,${JSON.stringify(field)}:1}`);
    expect(body).toContain(`"${field}":1`);
    frameError(() => decodeMessage('updated', text(body)), new RegExp(`^updated: unknown field "${field}"$`));
  });
});

describe('decodeAck', () => {
  it('accepts a positive ack', () => {
    expect(decodeAck(encodeJson({ ok: true }))).toEqual({ ok: true });
  });

  it('accepts a negative ack with its code and message', () => {
    const nack = { ok: false, code: 'STATE', message: 'a step is running' };
    expect(decodeAck(encodeJson(nack))).toEqual(nack);
  });

  it.each([
    ['{"ok":false}', /ack: field "code" must be string, got undefined/],
    ['{"ok":false,"code":"STATE"}', /ack: field "message" must be string, got undefined/],
    ['{"ok":false,"code":1,"message":"m"}', /ack: field "code" must be string, got 1/],
    ['{"ok":"yes","code":"C","message":"m"}', /ack: field "ok" must be boolean, got "yes"/],
    ['{"ok":1}', /ack: field "ok" must be boolean, got 1/],
    ['{}', /ack: field "ok" must be boolean, got undefined/],
    ['{"ok":false,"code":"C","message":"m","extra":0}', /ack: unknown field "extra"/],
    ['null', /ack: not a JSON object/],
    ['[]', /ack: not a JSON object/],
    ['true', /ack: not a JSON object/],
    ['ok', /ack: body is not JSON/],
    ['', /ack: body is not JSON/],
  ])('refuses %s', (body, re) => {
    frameError(() => decodeAck(text(body)), re);
  });
});

describe('decodeReply', () => {
  it('returns the message of a successful reply', () => {
    expect(decodeReply('hello', encodeJson(VALID.hello))).toEqual(VALID.hello);
  });
  it('throws the failure of an ok:false reply with its code', () => {
    const fn = () => decodeReply('state', encodeJson({ ok: false, code: 'STATE', message: 'stage 1 is running' }));
    expect(fn).toThrow(TroupeError);
    expect(fn).toThrow(/stage 1 is running/);
  });
  it('refuses a state reply whose names are not strings', () => {
    expect(() => decodeReply('state', encodeJson({ ...VALID.state, weightNames: [1] }))).toThrow(/weightNames/);
  });
});
