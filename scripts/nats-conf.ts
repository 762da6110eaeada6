/**
 * Writes nats.conf (natsConfText: every user's password variable and least permissions, from
 * the permissions table in src/protocol/subjects.ts). Run `npx tsx scripts/nats-conf.ts` after
 * changing a role; the output is committed. `--job <id> [--out <file>]` writes a configuration
 * whose users act in that job only (what `troupe up` starts its own nats-server with), for a
 * hand-run server of one job.
 */
import { writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { natsConfText } from '../src/fleet/natsConf.js';

const args = process.argv.slice(2);
const flag = (name: string) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
};
const job = flag('--job');
const out = flag('--out') ?? (job === undefined ? fileURLToPath(new URL('../nats.conf', import.meta.url)) : `nats-${job}.conf`);
writeFileSync(out, natsConfText(job === undefined ? {} : { job }));
console.log(`${out}: users for ${job === undefined ? 'any job' : `job ${job}`}`);
