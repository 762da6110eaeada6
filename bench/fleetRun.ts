/** One benchmark run of the fleet (a child process, so every configuration starts fresh): prints JSON. */
import { runJob } from '../src/index.js';

const trace = process.env['BENCH_TRACE'];
const result = await runJob({ config: new URL('./jobs/bench.job.ts', import.meta.url).pathname, progress: false, out: { write: () => true } as unknown as NodeJS.WritableStream, ...(trace ? { trace } : {}) });
process.stdout.write(`${JSON.stringify({ stepMs: result.stepMs, stats: result.stats })}\n`);
