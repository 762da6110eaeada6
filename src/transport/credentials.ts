/**
 * NATS credentials of Troupe's roles: `driver`, `stage<r>`, `pool`, `inspector`, `admin`, and
 * `route` (the password cluster nodes route with). A role's password comes from the
 * environment (`TROUPE_NATS_PASS_<ROLE>`) or from a JSON file named by
 * `TROUPE_NATS_CREDENTIALS` (`{ "driver": "...", "stage0": "..." }`), never from code. A
 * process is given only its own role's (`roleEnv`, `withoutCredentials`).
 */
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ConfigError, messageOf } from '../errors.js';
import { roles } from '../protocol/subjects.js';

export { MAX_STAGE_USERS, stageRole } from '../protocol/subjects.js';

/** The user cluster nodes authenticate their routes with (nats-cluster.conf). */
export const ROUTE_ROLE = 'route';

/** Every role a server Troupe starts needs a password for: the client users of the permissions table, and the route user. */
export function allRoles(): string[] {
  return [...roles(), ROUTE_ROLE];
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
    if (given !== undefined && !PASSWORD.test(given))
      throw new ConfigError(`${k}: a NATS password must be a letter followed by letters and digits (8 to 128 characters)`);
    if (env[k]) continue;
    env[k] = set[k] = given ?? `k${randomBytes(20).toString('hex')}`;
  }
  return set;
}

const PASSWORD = /^[A-Za-z][A-Za-z0-9]{7,127}$/;

/** The passwords of `roles` (from `env` or its credentials file), by role; roles without one are left out. */
function passwordsOf(roles: readonly string[], env: NodeJS.ProcessEnv = process.env): Record<string, string> {
  const out: Record<string, string> = {};
  for (const role of roles) {
    const p = credentialsFor(role, env);
    if (p) out[role] = p;
  }
  return out;
}

/** The variables that give a process the passwords of `roles` and nothing else (`TROUPE_NATS_PASS_<ROLE>`). */
export function roleEnv(roles: readonly string[], env: NodeJS.ProcessEnv = process.env): Record<string, string> {
  return Object.fromEntries(Object.entries(passwordsOf(roles, env)).map(([role, p]) => [passwordVariable(role), p]));
}

/** A copy of `env` without any Troupe NATS password or credentials file: the base of a child process's environment. */
export function withoutCredentials(env: NodeJS.ProcessEnv = process.env): NodeJS.ProcessEnv {
  const out: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(env)) if (!k.startsWith('TROUPE_NATS_PASS_') && k !== 'TROUPE_NATS_CREDENTIALS') out[k] = v;
  return out;
}

/**
 * Writes the passwords of `roles` (from the environment) to a new file readable by this user
 * only, for `TROUPE_NATS_CREDENTIALS` in another process (a worker on another host gets its
 * stage's, `troupe inspect` the inspector's); returns its path. The caller removes it.
 */
export async function writeCredentialsFile(roles: readonly string[], env: NodeJS.ProcessEnv = process.env, name = 'credentials'): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'troupe-nats-'));
  const file = join(dir, `${name}.json`);
  await writeFile(file, JSON.stringify(passwordsOf(roles, env), null, 1), { mode: 0o600 });
  return file;
}
