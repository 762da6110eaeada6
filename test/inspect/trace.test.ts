import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { toTraceEvents } from '../../src/inspect/trace.js';
import { troupeToEnd } from '../helpers/troupeCli.js';

const CONFIG = fileURLToPath(new URL('../fixtures/tiny.job.ts', import.meta.url));

interface TraceEvent {
  name: string;
  ph: string;
  pid: number;
  tid: number;
  ts?: number;
  dur?: number;
  cat?: string;
  args?: { step?: number; microbatch?: number; name?: string };
}

describe('--trace', () => {
  it('writes the trace event format with one complete event per action', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'troupe-trace-'));
    const file = join(dir, 'trace.json');
    try {
      // --inspect too: worker processes publishing inspection events still train and trace.
      const { code, output } = await troupeToEnd(['up', CONFIG, '--steps', '3', '--trace', file, '--inspect']);
      expect(code, output).toBe(0);
      const doc = JSON.parse(readFileSync(file, 'utf8')) as { traceEvents: TraceEvent[]; displayTimeUnit: string };
      expect(doc.displayTimeUnit).toBe('ms');
      const meta = doc.traceEvents.filter((e) => e.ph === 'M');
      expect(meta.map((e) => e.args?.name)).toEqual(['troupe job tiny', 'stage 0', 'stage 1']);
      const actions = doc.traceEvents.filter((e) => e.ph === 'X');
      // 3 training steps x 2 stages x 4 microbatches x (F + B), then the held-out evaluation: 2 x 4 F.
      expect(actions).toHaveLength(3 * 2 * 4 * 2 + 2 * 4);
      expect(output).toMatch(new RegExp(`trace of ${actions.length} actions`));
      for (const e of actions) {
        expect(e.name).toMatch(/^[FB]\d+$/);
        expect(e.cat).toBe(e.name.startsWith('F') ? 'forward' : 'backward');
        expect([0, 1]).toContain(e.tid);
        expect(e.ts).toBeGreaterThanOrEqual(0);
        expect(e.dur).toBeGreaterThan(0);
        expect(e.args?.microbatch).toBe(Number(e.name.slice(1)));
      }
      // Flow arrows: F of stage 0 -> stage 1 for every microbatch (3 x 4 + 4 held-out), B of stage 1 -> stage 0 (3 x 4).
      expect(doc.traceEvents.filter((e) => e.ph === 's')).toHaveLength(3 * 4 + 4 + 3 * 4);
      expect(doc.traceEvents.filter((e) => e.ph === 'f')).toHaveLength(3 * 4 + 4 + 3 * 4);
      for (const step of [1, 2, 3]) {
        for (const tid of [0, 1]) {
          const names = actions
            .filter((e) => e.args?.step === step && e.tid === tid)
            .map((e) => e.name)
            .sort();
          expect(names).toEqual(['B0', 'B1', 'B2', 'B3', 'F0', 'F1', 'F2', 'F3']);
        }
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('links F to the next stage and B to the previous one with flow arrows', () => {
    const ev = toTraceEvents('j', [
      { rank: 0, step: 2, action: 'F1', t0: 10, ms: 1 },
      { rank: 1, step: 2, action: 'F1', t0: 11.5, ms: 1 },
      { rank: 1, step: 2, action: 'B1', t0: 13, ms: 2 },
      { rank: 0, step: 2, action: 'B1', t0: 15.5, ms: 1 },
    ]);
    expect(ev.filter((e) => e.ph === 's' || e.ph === 'f').map((e) => [e.name, e.ph, e.id, e.tid, e.ts])).toEqual([
      ['activation', 's', 1, 0, 1000],
      ['activation', 'f', 1, 1, 1500],
      ['gradient', 's', 2, 1, 5000],
      ['gradient', 'f', 2, 0, 5500],
    ]);
  });

  it('places actions in microseconds from the first one', () => {
    const ev = toTraceEvents('j', [
      { rank: 1, step: 1, action: 'F0', t0: 1000.5, ms: 2 },
      { rank: 0, step: 1, action: 'B0', t0: 1000, ms: 0.25 },
    ]);
    // Stage 0's B0 ends at 1000.25, so no gradient flow: B on rank 0 has no stage -1 to go to.
    expect(ev.filter((e) => e.ph === 's' || e.ph === 'f')).toEqual([]);
    expect(ev.filter((e) => e.ph === 'X')).toEqual([
      { name: 'F0', cat: 'forward', ph: 'X', pid: 0, tid: 1, ts: 500, dur: 2000, args: { step: 1, microbatch: 0, stage: 1 } },
      { name: 'B0', cat: 'backward', ph: 'X', pid: 0, tid: 0, ts: 0, dur: 250, args: { step: 1, microbatch: 0, stage: 0 } },
    ]);
  });
});
