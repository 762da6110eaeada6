/** `npm run bench`: every benchmark, printed and written to bench/RESULTS.md with the date and command. */
import { writeFile } from 'node:fs/promises';
import { benchInspect } from './inspect.js';

const sections = [await benchInspect()];
const doc = [
  '# Benchmark results',
  '',
  `Produced by \`npm run bench\` on ${new Date().toISOString().slice(0, 10)}. Every ratio is measured side by side in one run.`,
  '',
  ...sections.flatMap((s) => [s, '']),
].join('\n');
console.log(doc);
await writeFile(new URL('./RESULTS.md', import.meta.url), doc);
