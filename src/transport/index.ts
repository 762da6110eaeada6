/** `troupe/transport`: the NATS connection every actor host uses, and the per-role credentials nats.conf asks for. */
export { Bus } from './bus.js';
export type { BusOptions, BusMessage, BusStatus } from './bus.js';
export { credentialsFor, ensureCredentials, writeCredentialsFile, stageRole, passwordVariable, allRoles, MAX_STAGE_USERS } from './credentials.js';
