/**
 * `troupe/protocol`: what travels on NATS between the scheduler, the stages and the driver:
 * subjects, frame encoding, keys and phases, and the JSON messages (plans, events, stats).
 */
export { Phase } from './phase.js';
export { DType } from './dtype.js';
export type { Key } from './key.js';
export { formatKey, slotOf } from './key.js';
export * as subjects from './subjects.js';
export { CtlVerb, SchedEvent } from './subjects.js';
export { encodeFrame, encodeKeyOnly, parseHeader, decodeSingle } from './frame.js';
export type { Frame, FrameHeader, WireTensor, WireMessage } from './frame.js';
export { Reassembler } from './reassembler.js';
export { sliceRows, concatRows } from './rows.js';
export { appliesUpdate, encodeJson, decodeMessage, decodeReply, decodeAck } from './messages.js';
export type {
  StepPlan,
  ProbeReply,
  Ack,
  ActionEvent,
  LossEvent,
  DoneEvent,
  UpdatedEvent,
  ErrorEvent,
  RejectEvent,
  StateInfo,
  Hello,
  StatsMessage,
  MessageTypes,
} from './messages.js';
