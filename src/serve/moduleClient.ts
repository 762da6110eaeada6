/** A client of a module runtime: forward (and backward) requests for one module. */
import * as tf from '@tensorflow/tfjs';
import { ServeError } from '../errors.js';
import { fromTensor } from '../compute/wire.js';
import type { WireTensor } from '../protocol/frame.js';
import type { Bus } from '../transport/bus.js';
import { serveSubject } from '../protocol/subjects.js';
import { decodeTensors, encodeTensors } from './tensorMessage.js';

export { ServeError } from '../errors.js';

let clients = 0;

export interface ModuleClientOptions {
  readonly bus: Bus;
  readonly runtime: string;
  readonly module: string;
  /** Milliseconds to wait for an answer (default 30 s). */
  readonly timeoutMs?: number;
  /** This client's name in request ids (`<name>#<n>`), which the runtime's errors quote (default client-<pid>-<n>). */
  readonly name?: string;
}

export class ModuleClient {
  readonly name: string;
  private sent = 0;

  constructor(private readonly o: ModuleClientOptions) {
    serveSubject(o.runtime, o.module, 'forward');
    this.name = o.name ?? `client-${process.pid}-${++clients}`;
  }

  private async call(op: 'forward' | 'backward', tensors: readonly tf.Tensor[]): Promise<WireTensor[]> {
    const m = encodeTensors(await Promise.all(tensors.map((t, i) => fromTensor(t, `x${i}`))), op, `${this.name}#${++this.sent}`);
    const reply = decodeTensors(
      await this.o.bus.requestMessage(serveSubject(this.o.runtime, this.o.module, op), m.data, this.o.timeoutMs ?? 30_000, m.headers),
      op,
    );
    if ('error' in reply) throw new ServeError(reply.error.code, reply.error.message);
    return reply.tensors;
  }

  /** The module's outputs for a batch (often of one example) of inputs, as wire tensors. */
  forwardWire(inputs: tf.Tensor | readonly tf.Tensor[]): Promise<WireTensor[]> {
    return this.call('forward', Array.isArray(inputs) ? inputs : [inputs as tf.Tensor]);
  }

  /** The module's outputs as tensors (owned by the caller). */
  async forward(inputs: tf.Tensor | readonly tf.Tensor[]): Promise<tf.Tensor[]> {
    return (await this.forwardWire(inputs)).map((w) => tf.tensor(w.data, [...w.shape], w.dtype));
  }

  /** Input gradients for inputs and output gradients. */
  async backward(inputs: readonly tf.Tensor[], gradOutputs: readonly tf.Tensor[]): Promise<tf.Tensor[]> {
    return (await this.call('backward', [...inputs, ...gradOutputs])).map((w) => tf.tensor(w.data, [...w.shape], w.dtype));
  }
}
