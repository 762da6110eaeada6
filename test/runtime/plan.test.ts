/**
 * One plan (#21.3): the cut, the placed schedule, the memory estimate and the replicas' scopes
 * from the options alone; what createPipeline, troupe up's driver and every worker start from.
 */
import { describe, expect, it } from 'vitest';
import { ConfigError, PartitionError } from '../../src/errors.js';
import { jobPlan } from '../../src/fleet/jobPlan.js';
import { plan } from '../../src/runtime/plan.js';
import { buildPlacedSchedule } from '../../src/schedule/schedules.js';
import job from '../fixtures/tiny.job.js';
import { mlp } from '../helpers/models.js';

const SIZES = [16, 64, 64, 64, 4];
const adam = { className: 'Adam', config: { learningRate: 0.01 } };

describe('plan', () => {
  it('cuts, places the schedule, names the replicas and the devices, and cuts a copy of the model the same way', async () => {
    const model = mlp(SIZES, 3);
    const copy = mlp(SIZES, 4);
    const p = await plan({ job: 'mnist', model, stages: 4, virtualStages: 2, schedule: 'interleaved', microbatches: 4, optimizer: adam, replicas: 2 });
    expect(p.stages).toBe(4);
    expect(p.partitions.map((s) => s.layerNames.length)).toEqual([1, 1, 1, 1]);
    expect(p.boundaries).toEqual([1, 2, 3]);
    expect(p.placed).toEqual(buildPlacedSchedule('interleaved', 4, 4, 2));
    expect(p.devices).toBe(2);
    expect([p.ranksOn(0), p.ranksOn(1)]).toEqual([
      [0, 2],
      [1, 3],
    ]);
    expect(p.replicaJobs).toEqual(['mnist.r0', 'mnist.r1']);
    expect(p.memory).toBeNull();
    const cut = p.cut(copy);
    expect(cut.map((s) => s.layers.length)).toEqual([1, 1, 1, 1]);
    expect(cut.every((s, r) => s.layers[0] === copy.layers[r])).toBe(true);
  });

  it('under a memory budget: the cut whose largest estimate is smallest, the estimates, and errors handed over with their field', async () => {
    const model = mlp(SIZES, 5);
    const p = await plan({ job: 'j', model, stages: 2, microbatches: 4, optimizer: adam, memoryBudget: { bytesPerStage: 2 ** 20, batchSize: 32 } });
    expect(p.memory!.estimates).toHaveLength(2);
    expect(Math.max(...p.memory!.estimates.map((e) => e.total))).toBeLessThanOrEqual(2 ** 20);
    expect(p.memory!.model.slotsPerWeight).toBe(2);
    expect(p.memory!.model.rows).toBe(8);
    const fields: string[] = [];
    const fail = (field: string, cause: unknown) => {
      fields.push(field);
      return new ConfigError(`field "${field}": ${(cause as Error).message}`);
    };
    await expect(
      plan({ job: 'j', model, stages: 2, microbatches: 4, optimizer: adam, memoryBudget: { bytesPerStage: 1000, batchSize: 32 } }, fail),
    ).rejects.toThrow(/field "memoryBudget": stage \d needs/);
    await expect(plan({ job: 'j', model, stages: 9, microbatches: 4, optimizer: adam })).rejects.toThrow(PartitionError);
    await expect(plan({ job: 'j', model, stages: 9, microbatches: 4, optimizer: adam }, fail)).rejects.toThrow(
      /field "stages": cannot cut 4 layers into 9 stages/,
    );
    await expect(
      plan({ job: 'j', model, stages: [1], microbatches: 4, optimizer: adam, memoryBudget: { bytesPerStage: 1e9, batchSize: 8 } }, fail),
    ).rejects.toThrow(/field "memoryBudget": memoryBudget chooses the cut/);
    expect(fields).toEqual(['memoryBudget', 'stages', 'memoryBudget']);
  });

  it("a job config's plan is the driver's and every worker's: with the driver's boundaries a worker cuts where the driver did", async () => {
    const driver = await jobPlan(job, await job.model(), 'tiny');
    const worker = await jobPlan(job, await job.model(), 'tiny', driver.boundaries);
    // Two builds of the model: layer names differ (tfjs counts them), shapes do not.
    const shapes = (ps: typeof driver.partitions) => ps.map((s) => s.layers.map((l) => l.countParams()));
    expect(shapes(worker.partitions)).toEqual(shapes(driver.partitions));
    expect(worker.boundaries).toEqual(driver.boundaries);
    expect(worker.placed).toEqual(driver.placed);
  });
});
