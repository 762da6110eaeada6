import { mkdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { createPipeline } from '../../src/index.js';
import { startInspector } from '../../src/inspect/inspectorServer.js';
import { launchChromium } from '../helpers/browser.js';
import { data, mlp } from '../helpers/models.js';
import { useNatsServer } from '../helpers/nats.js';

const nats = useNatsServer();
const ARTIFACTS = fileURLToPath(new URL('../../test-artifacts/', import.meta.url));

describe('the inspector page in headless Chromium', () => {
  it('lists the actors, follows their states live and draws the timeline of a 2-stage run', async () => {
    const job = 'pageview';
    const m = 4;
    const insp = await startInspector({ nats: nats.server.url, job });
    const pipe = await createPipeline({
      model: mlp([16, 64, 64, 4], 9),
      stages: 2,
      microbatches: m,
      schedule: '1f1b',
      job,
      inspect: true,
      optimizer: tf.train.adam(0.01),
      loss: 'categoricalCrossentropy',
      nats: { servers: nats.server.url },
    });
    const browser = await launchChromium();
    const { x, y } = data(64, 16, 4);
    try {
      const page = await browser.newPage({ viewport: { width: 1200, height: 1400 } });
      await page.goto(insp.url);
      await page.waitForFunction(() => ['scheduler', 'stage-0', 'stage-1'].every((n) => document.querySelector(`.actor[data-name="${n}"] svg.diagram`)));
      expect(await page.locator('.actor').evaluateAll((els) => els.map((e) => (e as HTMLElement).dataset.name))).toEqual(['scheduler', 'stage-0', 'stage-1']);
      // Each diagram draws the machine's states; the idle stage has its idle box highlighted.
      expect(await page.locator('.actor[data-name="stage-0"] g.state').count()).toBeGreaterThanOrEqual(7);
      expect(await page.locator('.actor[data-name="stage-0"] g.state.active').evaluateAll((els) => els.map((e) => (e as SVGElement).dataset.path))).toEqual([
        'idle',
      ]);

      for (let s = 0; s < 4; s++) await pipe.trainStep(x, y);

      // The highlighted state changed while the steps ran, and the stages are idle again.
      await page.waitForFunction(() => {
        const log = (window as unknown as { __stateLog: { name: string; state: string }[] }).__stateLog;
        return ['stage-0', 'stage-1', 'scheduler'].every((n) => new Set(log.filter((e) => e.name === n).map((e) => e.state)).size >= 3);
      });
      const seen = await page.evaluate(() =>
        (window as unknown as { __stateLog: { name: string; state: string }[] }).__stateLog.filter((e) => e.name === 'stage-1').map((e) => e.state),
      );
      expect(seen).toContain('idle');
      expect(seen.some((s) => s.startsWith('running.'))).toBe(true);
      expect(seen).toContain('updating');
      await page.waitForFunction(() => document.querySelector('.actor[data-name="stage-0"]')?.getAttribute('data-state') === 'idle');

      // The timeline of the last step: 2 rows, m F boxes (and m B boxes) in each.
      await page.waitForFunction((mb) => {
        const svg = document.querySelector('svg.timeline[data-step="4"]');
        return svg && [0, 1].every((r) => svg.querySelectorAll(`rect.action.B[data-rank="${r}"]`).length === mb);
      }, m);
      const tl = page.locator('svg.timeline[data-step="4"]');
      expect(await tl.locator('g.row').count()).toBe(2);
      for (const r of [0, 1]) expect(await tl.locator(`rect.action.F[data-rank="${r}"]`).count()).toBe(m);
      const theory = await page.locator('.step[data-step="4"] .bubble-theory').textContent();
      expect(theory).toBe(`${((1 / (m + 1)) * 100).toFixed(1)}%`);
      expect(Number((await page.locator('.step[data-step="4"] .bubble-measured').textContent())!.replace('%', ''))).toBeGreaterThan(0);
      // Per-stage counters arrived for both stages.
      await page.waitForFunction(() => document.querySelectorAll('table.stats tbody tr').length === 2);
      // Among them, the time each stage machine took to handle its events (seconds, 3 decimals).
      expect(await page.locator('table.stats thead').textContent()).toContain('machine s');
      for (const r of [0, 1]) expect(await page.locator(`table.stats tr[data-rank="${r}"] td.machine`).textContent()).toMatch(/^\d+\.\d{3}$/);

      mkdirSync(ARTIFACTS, { recursive: true });
      await page.screenshot({ path: `${ARTIFACTS}inspector.png`, fullPage: true });
    } finally {
      await browser.close();
      await pipe.close();
      await insp.close();
      tf.dispose([x, y]);
    }
  });
});
