import { describe, expect, it } from 'vitest';
import { InspectorModel } from '../../src/inspect/model.js';
import type { RejectEvent } from '../../src/protocol/messages.js';

const refusal = (over: Partial<RejectEvent> = {}): RejectEvent => ({
  rank: 0,
  subject: 'frame j/3/1/INPUT',
  code: 'SHAPE',
  message: 'j/3/1/INPUT inputs tensor 0: got int32[4,5], expected float32[4,5]',
  step: 3,
  microbatch: 1,
  phase: 'INPUT',
  ...over,
});

describe("the inspector's error panel", () => {
  it('shows a refused INPUT as the error that failed its step; other refusals stay refusals', () => {
    const m = new InspectorModel('j');
    expect(InspectorModel.stepFailureOf(refusal())).toEqual({
      rank: 0,
      step: 3,
      key: 'j/3/1/INPUT',
      code: 'SHAPE',
      message: `refused INPUT frame: ${refusal().message}`,
    });
    const u = m.applyError(InspectorModel.stepFailureOf(refusal())!, 'j');
    expect(u).toMatchObject({ kind: 'error', error: { key: 'j/3/1/INPUT', code: 'SHAPE' }, count: 1 });
    for (const r of [
      refusal({ phase: 'FORWARD' }),
      refusal({ code: 'DUPLICATE_KEY' }),
      refusal({ step: null, microbatch: null, phase: null, code: 'FRAME' }),
    ]) {
      expect(InspectorModel.stepFailureOf(r)).toBeNull();
    }
  });
});
