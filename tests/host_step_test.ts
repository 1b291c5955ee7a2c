/**
 * Host steps in the command stream (ops/queue_order.ts through `Gpu.hostStep`):
 * work recorded around them runs in recording order, exactly as an eager
 * execution that reads back, computes on the CPU and uploads would.
 */
import assert from "node:assert/strict";
import { setup } from "./harness.ts";
import { add, scale } from "../ops/elementwise.ts";
import { gpu } from "../ops/gpu.ts";
import { fill, scope, Tensor, trimPool } from "../ops/tensor.ts";

await setup();

const doubled = ([v]: Float32Array[]) => [v.map((a) => 2 * a)];

Deno.test("host steps in the middle of a computation equal the eager computation", async () => {
  const x0 = [1, -2, 3.5, 4, 0.25];
  // Eager: read back, double on the CPU, upload, go on.
  const eager = await scope(async () => {
    const y = scale(Tensor.from(x0), 3);
    const z = Tensor.from((await y.read()).map((a) => 2 * a));
    const w = add(z, Tensor.ones([5]));
    const v = Tensor.from((await w.read()).map((a) => 2 * a));
    return await scale(v, -1).read();
  });
  const log: string[] = [];
  const recorded = await scope(async () => {
    const y = scale(Tensor.from(x0), 3);
    const z = Tensor.empty([5]);
    gpu().hostStep([y], [z], (d) => {
      log.push("first");
      return doubled(d);
    });
    const w = add(z, Tensor.ones([5]));
    const v = Tensor.empty([5]);
    gpu().hostStep([w], [v], async (d) => {
      await new Promise((r) => setTimeout(r, 20));
      log.push("second");
      return doubled(d);
    });
    const out = scale(v, -1);
    assert.equal(gpu().hostStepsPending, true, "nothing runs while recording");
    assert.deepEqual(log, []);
    return await out.read();
  });
  assert.deepEqual(log, ["first", "second"]);
  assert.deepEqual([...recorded], [...eager]);
  assert.equal(gpu().hostStepsPending, false);
});

Deno.test("host steps: uploads, queue writes and pool reuse recorded after a step come after it", async () => {
  await scope(async () => {
    const a = Tensor.from([1, 2, 3, 4]);
    const seen: number[][] = [];
    gpu().hostStep([a], [], ([v]) => {
      seen.push([...v]);
      return [];
    });
    // Overwrite a three ways, each recorded after the step: none may reach it.
    gpu().upload(a.buffer, Float32Array.of(5, 6, 7, 8));
    gpu().hostStep([a], [], ([v]) => {
      seen.push([...v]);
      return [];
    });
    gpu().writeBuffer(a.buffer, Float32Array.of(9, 9, 9, 9));
    gpu().hostStep([a], [], ([v]) => {
      seen.push([...v]);
      return [];
    });
    // A freed buffer goes back to the pool; the next tensor of its size class reuses it.
    const b = Tensor.from([10, 20, 30, 40]);
    const written = Tensor.empty([4]);
    gpu().hostStep([b], [written], doubled);
    const bBuffer = b.buffer;
    b.dispose();
    const reuse = Tensor.empty([4]);
    assert.equal(reuse.buffer, bBuffer, "the pool hands the same buffer back");
    fill(reuse, -1);
    assert.equal(gpu().hostStepsPending, true);
    assert.deepEqual([...await written.read()], [20, 40, 60, 80]);
    assert.deepEqual([...await reuse.read()], [-1, -1, -1, -1]);
    assert.deepEqual(seen, [[1, 2, 3, 4], [5, 6, 7, 8], [9, 9, 9, 9]]);
    assert.deepEqual([...await a.read()], [9, 9, 9, 9]);
  });
});

Deno.test("host steps: the automatic submits of a long recording wait behind the step, in order", async () => {
  await scope(async () => {
    const one = Tensor.ones([8]);
    let x = Tensor.zeros([8]);
    const mid = Tensor.empty([8]);
    gpu().hostStep([x], [mid], ([v]) => [v.map((a) => a + 100)]);
    const submits = gpu().submits;
    // More dispatches than one automatic submit holds.
    for (let i = 0; i < 600; i++) x = add(x, one);
    const y = add(x, mid);
    assert.ok(gpu().submits >= submits + 2, `${gpu().submits - submits} automatic submits`);
    assert.equal(gpu().hostStepsPending, true, "they waited behind the host step");
    assert.deepEqual([...await y.read()], Array(8).fill(700));
  });
});

Deno.test("host steps: a read waits for the drain; sync, submitted() and trimPool too", async () => {
  await scope(async () => {
    const t = Tensor.from([1, 2]);
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    gpu().hostStep([t], [t], async (d) => {
      await gate;
      return doubled(d);
    });
    const reading = t.read();
    let done = false;
    reading.then(() => (done = true));
    await new Promise((r) => setTimeout(r, 30));
    assert.equal(done, false, "the read waits for the host step");
    release();
    assert.deepEqual([...await reading], [2, 4]);

    // submitted(): resolves once the copy into a mappable buffer is on the queue.
    gpu().hostStep([t], [t], doubled);
    const mappable = gpu().device.createBuffer({
      size: 8,
      usage: GPUBufferUsage.COPY_DST | GPUBufferUsage.MAP_READ,
    });
    gpu().encoderForCopy().copyBufferToBuffer(t.buffer, 0, mappable, 0, 8);
    await gpu().submitted();
    await mappable.mapAsync(GPUMapMode.READ);
    assert.deepEqual([...new Float32Array(mappable.getMappedRange())], [4, 8]);
    mappable.destroy();

    // Buffers trimmed from the pool while work behind a step uses them are destroyed after it.
    const s = Tensor.from([3, 4, 5]);
    const out = Tensor.empty([3]);
    gpu().hostStep([s], [out], doubled);
    const u = scale(s, 1);
    s.dispose();
    trimPool();
    await gpu().sync();
    assert.deepEqual([...await out.read()], [6, 8, 10]);
    assert.deepEqual([...await u.read()], [3, 4, 5]);
  });
});

Deno.test("host steps: a failing step is thrown at the next sync point, then work goes on", async () => {
  await scope(async () => {
    const t = Tensor.from([1, 2, 3]);
    gpu().hostStep([t], [t], () => {
      throw new Error("the reduction failed");
    });
    await assert.rejects(() => t.read(), /the reduction failed/);
    gpu().hostStep([t], [t], () => [new Float32Array(2)]);
    await assert.rejects(() => gpu().sync(), /host step returned 2 values for write 0 of 3/);
    assert.equal(gpu().hostStepsPending, false);
    assert.deepEqual([...await scale(t, 2).read()], [2, 4, 6]);
  });
});
