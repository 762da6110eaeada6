/** `troupe/serve`: the module runtime (batched forward/backward of models served on NATS) and its client. */
export { Bus } from '../transport/bus.js';
export { ModuleRuntime, moduleOfModel, serveSubject } from './moduleRuntime.js';
export type { ModuleBackend, ModuleRuntimeOptions, PoolStats } from './moduleRuntime.js';
export { ModuleClient } from './moduleClient.js';
export type { ModuleClientOptions } from './moduleClient.js';
export { ServeError } from '../errors.js';
