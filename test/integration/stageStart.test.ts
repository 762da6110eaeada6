/** A stage whose start fails after it subscribed (its hello refused) leaves nothing behind on the bus. */
import * as tf from '@tensorflow/tfjs';
import { describe, expect, it, vi } from 'vitest';
import { partitionModel, StageCompute } from '../../src/compute/index.js';
import { TransportError } from '../../src/errors.js';
import { encodeJson } from '../../src/protocol/messages.js';
import { CtlVerb, ctlSubject } from '../../src/protocol/subjects.js';
import { StageHost } from '../../src/runtime/index.js';
import { Bus } from '../../src/transport/index.js';
import { mlp } from '../helpers/models.js';
import { useNatsServer } from '../helpers/nats.js';

const nats = useNatsServer();

describe('StageHost.start', () => {
  it('a start that fails (its hello not published) closes the stage: nothing answers its control subject', async () => {
    const parts = partitionModel(mlp([4, 8, 2], 7), 2);
    const [bus, asker] = await Promise.all([0, 1].map(() => Bus.connect({ role: 'admin', servers: nats.server.url })));
    const compute = new StageCompute({ partition: parts[0]!, optimizer: tf.train.sgd(0.1) });
    try {
      vi.spyOn(bus!, 'publish').mockRejectedValueOnce(new TransportError('publish refused'));
      await expect(StageHost.start({ bus: bus!, job: 'half-started', partition: parts[0]!, compute })).rejects.toThrow('publish refused');
      // A stage left subscribed would answer the ping with its hello.
      await expect(asker!.request(ctlSubject('half-started', 0, CtlVerb.PING), encodeJson({}), 2_000)).rejects.toThrow(TransportError);
    } finally {
      vi.restoreAllMocks();
      compute.dispose();
      await Promise.all([bus!.close(), asker!.close()]);
    }
  });
});
