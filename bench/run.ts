/** `npm run bench`: every benchmark, printed and written to bench/RESULTS.md with the date and command. */
import { readFile, writeFile } from 'node:fs/promises';
import { benchBubble } from './bubble.js';
import { benchFeed } from './feed.js';
import { benchGaps } from './gaps.js';
import { benchGpu } from './gpu.js';
import { benchHalves } from './halves.js';
import { benchHops } from './hopLatency.js';
import { benchInspect } from './inspect.js';
import { benchPool } from './pool.js';
import { benchProfile } from './profile.js';
import { benchRestarts } from './restarts.js';
import { benchScaling } from './scaling.js';
import { benchServe } from './serve.js';
import { benchSteps } from './steps.js';
import { benchTransport } from './transport.js';

const only = process.argv[2];
const RECORDED_MARKER = '<!-- recorded:';
const all: Record<string, () => Promise<string>> = {
  steps: benchSteps,
  gaps: benchGaps,
  feed: benchFeed,
  halves: benchHalves,
  bubble: benchBubble,
  scaling: benchScaling,
  profile: benchProfile,
  transport: benchTransport,
  hops: benchHops,
  serve: benchServe,
  pool: benchPool,
  inspect: benchInspect,
  restarts: benchRestarts,
  gpu: benchGpu,
};
const sections: string[] = [];
for (const [name, run] of Object.entries(all)) {
  if (only && only !== name) continue;
  process.stderr.write(`bench: ${name}\n`);
  sections.push(await run());
}
const doc = [
  '# Benchmark results',
  '',
  `Produced by \`npm run bench\` on ${new Date().toISOString().slice(0, 10)}. Every ratio is measured side by side in one run; see bench/README.md.`,
  '',
  ...sections.flatMap((s) => [s, '']),
].join('\n');
console.log(doc);
if (!only) {
  // Tables recorded by hand (single benches, runs on the device host) sit below the marker and survive a full run.
  const file = new URL('./RESULTS.md', import.meta.url);
  const old = await readFile(file, 'utf8').catch(() => '');
  const at = old.indexOf(RECORDED_MARKER);
  await writeFile(file, at < 0 ? doc : `${doc}\n${old.slice(at)}`);
}
