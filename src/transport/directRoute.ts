/**
 * Which frames may take the direct path, and where an offer is answered. Only activations and
 * input gradients between neighbouring stages do: `troupe.<job>.stage.<k>.FORWARD` (sent by
 * stage k-1, answered by stage k on `troupe.<job>.stage.<k-1>.BACKWARD`) and
 * `troupe.<job>.stage.<k>.BACKWARD` (sent by stage k+1, answered on `...stage.<k+1>.FORWARD`).
 * Those are the subjects nats.conf lets exactly one neighbour publish to, so an offer on one
 * comes from the stage the subject allows and its answer from the stage it names.
 */
import { Phase } from '../protocol/phase.js';
import { stageSubject } from '../protocol/subjects.js';

const FRAME = /^troupe\.([A-Za-z0-9_-]{1,64})\.stage\.(0|[1-9][0-9]{0,5})\.(FORWARD|BACKWARD)$/;

/** The two ends of a link for frames on a subject: the stage that sends them, the one that takes them, and where it answers. */
export interface LinkEnds {
  readonly sender: number;
  readonly receiver: number;
  /** The subject on which the receiver answers an offer (one only it may publish to). */
  readonly answerOn: string;
}

/** The ends of a link for frames on `subject`; null when such frames stay on NATS. */
export function linkEnds(subject: string): LinkEnds | null {
  const m = FRAME.exec(subject);
  if (!m) return null;
  const job = m[1]!;
  const k = Number(m[2]);
  if (m[3] === Phase.FORWARD) return k >= 1 ? { sender: k - 1, receiver: k, answerOn: stageSubject(job, k - 1, Phase.BACKWARD) } : null;
  return { sender: k + 1, receiver: k, answerOn: stageSubject(job, k + 1, Phase.FORWARD) };
}

/** The subject on which the receiver of frames on `subject` answers an offer; null when such frames stay on NATS. */
export function answerSubject(subject: string): string | null {
  return linkEnds(subject)?.answerOn ?? null;
}

/** Whether a NATS subscription `pattern` (`*` one token, `>` the rest) covers `subject`. */
export function subjectMatches(pattern: string, subject: string): boolean {
  const p = pattern.split('.');
  const s = subject.split('.');
  for (let i = 0; i < p.length; i++) {
    if (p[i] === '>') return s.length > i;
    if (i >= s.length || (p[i] !== '*' && p[i] !== s[i])) return false;
  }
  return p.length === s.length;
}
