/** Pictures of a simulated schedule: a terminal grid and an SVG. */
import { formatAction } from './action.js';
import type { Placed, Simulation } from './simulate.js';

/** An action's label: `F3`, or `2F3` (stage 2) on a device hosting several stages. */
function label(sim: Simulation, a: Placed['action']): string {
  return sim.devices === sim.stages ? `${a.kind}${a.microbatch}` : formatAction(a);
}

/**
 * One row per stage (per device when devices host several stages), one cell per time unit
 * (costs should be whole numbers): the action's label in the cell where it starts, `··`
 * while it runs, blank when idle.
 *
 * ```
 * 0 |F0 F1 B0 ·· F2 B1 ·· ...
 * 1 |   F0 B0 ·· F1 B1 ·· ...
 * ```
 */
export function drawTerminal(sim: Simulation): string {
  const width = Math.ceil(sim.stepTime);
  const cell = Math.max(3, ...sim.timeline.flat().map((x) => label(sim, x.action).length + 1));
  return sim.timeline
    .map((row, lane) => {
      const cells = new Array<string>(width).fill(' '.repeat(cell));
      for (const x of row) {
        for (let t = Math.floor(x.start); t < Math.ceil(x.end); t++)
          cells[t] = t === Math.floor(x.start) ? label(sim, x.action).padEnd(cell) : '··'.padEnd(cell);
      }
      return `${String(lane).padStart(2)} |${cells.join('')}`;
    })
    .join('\n');
}

const COLOR: Record<string, string> = { F: '#5b8def', B: '#f08c4a', W: '#49b37b' };

/** An SVG of the timeline: a lane per stage (or device), a box per action. */
export function drawSvg(sim: Simulation, unit = 28): string {
  const left = 60;
  const rowH = 26;
  const w = left + Math.ceil(sim.stepTime) * unit + 10;
  const h = sim.timeline.length * rowH + 30;
  const lane = sim.devices === sim.stages ? 'stage' : 'device';
  const boxes = sim.timeline.flatMap((row, st) =>
    row.map((x) => {
      const bx = left + x.start * unit;
      const bw = (x.end - x.start) * unit - 2;
      return (
        `<rect x="${bx}" y="${st * rowH + 4}" width="${bw}" height="${rowH - 6}" rx="3" fill="${COLOR[x.action.kind] ?? '#999'}">` +
        `<title>${formatAction(x.action)}: ${x.start}-${x.end}</title></rect>` +
        `<text x="${bx + 4}" y="${st * rowH + 21}" fill="#fff" font-size="11" font-family="monospace">${label(sim, x.action)}</text>`
      );
    }),
  );
  const labels = sim.timeline.map((_, st) => `<text x="4" y="${st * rowH + 21}" font-size="11" font-family="monospace">${lane} ${st}</text>`);
  const caption =
    `<text x="4" y="${h - 8}" font-size="11" font-family="sans-serif">p=${sim.stages}${sim.devices !== sim.stages ? ` on ${sim.devices} devices` : ''}` +
    ` m=${sim.microbatches} step ${sim.stepTime} units, bubble ${(sim.bubble * 100).toFixed(1)}%</text>`;
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${w}" height="${h}" viewBox="0 0 ${w} ${h}">${labels.join('')}${boxes.join('')}${caption}</svg>\n`;
}
