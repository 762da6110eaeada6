/**
 * `troupe/schedule`: pipeline schedules as data (GPipe, 1F1B, ZB-H1, interleaved, looped
 * BFS), their validation, the consume constraint, simulation and drawing.
 */
export { buildSchedule, buildPlacedSchedule, forwardOnlySchedule, ScheduleName, isScheduleName } from './schedules.js';
export { gpipe } from './gpipe.js';
export { oneFOneB } from './oneFOneB.js';
export { zeroBubbleH1 } from './zeroBubble.js';
export { interleaved1F1B, loopedBFS, stageRows, deviceOf, formatDeviceSchedule } from './interleaved.js';
export type { DeviceSchedule, PlacedSchedule } from './interleaved.js';
export { validateSchedule, validatePlaced } from './validate.js';
export type { ValidateOptions } from './validate.js';
export { maxInFlight, inFlightBounds, releasedBy, isFeedMode } from './constraint.js';
export type { FeedMode } from './constraint.js';
export { ActionKind, formatAction, parseAction, formatStageActions, parseStageActions, formatSchedule } from './action.js';
export type { Action, Schedule } from './action.js';
export { needs, receives } from './needs.js';
export { microbatchSizes, microbatchOffsets } from './microbatch.js';
export { simulate } from './simulate.js';
export type { Simulation, ActionCosts } from './simulate.js';
export { drawTerminal, drawSvg } from './draw.js';
export { parseScheduleTable, loadScheduleFile } from './scheduleFile.js';
