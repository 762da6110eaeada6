/**
 * NATS credentials of Troupe's roles: `driver`, `stage<r>`, `inspector`, `admin`. A role's
 * password comes from the environment (`TROUPE_NATS_PASS_<ROLE>`) or from a JSON file named by
 * `TROUPE_NATS_CREDENTIALS` (`{ "driver": "...", "stage0": "..." }`), never from code.
 */
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ConfigError, messageOf } from '../errors.js';

/** Stage users nats.conf defines (ranks 0..MAX_STAGE_USERS-1). */
export const MAX_STAGE_USERS = 16;

/** Every role nats.conf knows. */
export function allRoles(): string[] {
  return ['driver', ...Array.from({ length: MAX_STAGE_USERS }, (_, r) => `stage${r}`), 'pool', 'inspector', 'admin'];
}

/** The NATS user of stage `rank`. */
export function stageRole(rank: number): string {
  return `stage${rank}`;
}

/** The environment variable holding `role`'s password. */
export function passwordVariable(role: string): string {
  return `TROUPE_NATS_PASS_${role.toUpperCase()}`;
}

/**
 * `role`'s password from the environment, else from the credentials file; undefined when
 * neither has one (the client then connects without a user, as a server without users wants).
 */
export function credentialsFor(role: string, env: NodeJS.ProcessEnv = process.env): string | undefined {
  const direct = env[passwordVariable(role)];
  if (direct) return direct;
  const file = env['TROUPE_NATS_CREDENTIALS'];
  if (!file) return undefined;
  let parsed: unknown;
  try {
    parsed = JSON.parse(readFileSync(file, 'utf8'));
  } catch (cause) {
    throw new ConfigError(`NATS credentials file ${file} is unreadable: ${messageOf(cause)}`, { cause });
  }
  if (!parsed || typeof parsed !== 'object') throw new ConfigError(`NATS credentials file ${file} must hold an object of role: password`);
  const v = (parsed as Record<string, unknown>)[role];
  if (v !== undefined && typeof v !== 'string') throw new ConfigError(`NATS credentials file ${file}: the password of "${role}" must be a string`);
  return v;
}

/**
 * Makes sure every role has a password in `env` (random ones for those unset), as nats.conf
 * needs them all to start. Returns the variables it set.
 */
export function ensureCredentials(env: NodeJS.ProcessEnv = process.env): Record<string, string> {
  const set: Record<string, string> = {};
  for (const role of allRoles()) {
    const k = passwordVariable(role);
    const given = env[k] ?? credentialsFor(role, env);
    // nats-server reads the variable as a config value: a letter, then letters and digits, stays a string.
    if (given !== undefined && !PASSWORD.test(given)) throw new ConfigError(`${k}: a NATS password must be a letter followed by letters and digits (8 to 128 characters)`);
    if (env[k]) continue;
    env[k] = set[k] = given ?? `k${randomBytes(20).toString('hex')}`;
  }
  return set;
}

const PASSWORD = /^[A-Za-z][A-Za-z0-9]{7,127}$/;

/**
 * Writes every role's password (from the environment) to a new file readable by this user
 * only, for `TROUPE_NATS_CREDENTIALS` in other processes; returns its path.
 */
export async function writeCredentialsFile(env: NodeJS.ProcessEnv = process.env): Promise<string> {
  const all: Record<string, string> = {};
  for (const role of allRoles()) {
    const p = credentialsFor(role, env);
    if (p) all[role] = p;
  }
  const dir = await mkdtemp(join(tmpdir(), 'troupe-nats-'));
  const file = join(dir, 'credentials.json');
  await writeFile(file, JSON.stringify(all, null, 1), { mode: 0o600 });
  return file;
}
