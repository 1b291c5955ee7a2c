/**
 * GPU failures are reported where they happen, as one line naming the op:
 * a kernel that does not compile, an allocation the device refuses, a bad
 * submit, and a lost device. Each test opens its own device, so breaking it
 * leaves the other tests' device alone.
 */
import assert from "node:assert/strict";
import { createGpu, type Gpu, GpuDeviceLostError, GpuOpError } from "../ops/gpu.ts";

function oneLine(re: RegExp) {
  return (e: Error) => {
    assert.match(e.message, re);
    assert.ok(!e.message.includes("\n"), e.message);
    return true;
  };
}

Deno.test("a kernel that does not compile is thrown at the next sync, naming the op that asked for it", async () => {
  const g = await createGpu();
  function brokenOp() {
    g.pipeline("@compute @workgroup_size(1) fn main() { let x: u32 = undefined_thing; }");
  }
  brokenOp();
  await assert.rejects(
    () => g.sync(),
    (e: Error) =>
      e instanceof GpuOpError &&
      oneLine(
        /^WebGPU validation error in compiling the kernel of brokenOp \(tests\/gpu_errors_test\.ts:\d+\): /,
      )(e),
  );
  // Reported once: the next sync is clean.
  await g.sync();
  g.device.destroy();
});

/** Dispatch `broken` (compiled ahead before, quietly): its failure is reported then, by its op. */
async function reportedWhenDispatched(g: Gpu, broken: string): Promise<void> {
  function brokenOp() {
    g.dispatch(broken, [], [1, 1, 1]);
  }
  brokenOp();
  await assert.rejects(
    () => g.sync(),
    oneLine(
      /^WebGPU validation error in compiling the kernel of brokenOp \(tests\/gpu_errors_test\.ts:\d+\): /,
    ),
  );
  g.device.destroy();
}

Deno.test("precompile: compiles without dispatching; a kernel failing there is reported where it is dispatched", async () => {
  const g = await createGpu();
  const y = g.createBuffer(
    { size: 16, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC },
    () => "the output",
  );
  const good = `@group(0) @binding(0) var<storage, read_write> y: array<f32>;
@compute @workgroup_size(4) fn main(@builtin(local_invocation_index) i: u32) { y[i] = f32(i) + 0.5; }`;
  const broken = "@compute @workgroup_size(1) fn main() { let x: u32 = undefined_thing; }";
  const [dispatches, compiles] = [g.dispatches, g.pipelineCount];
  g.precompile(() => {
    g.dispatch(good, [y], [1, 1, 1]);
    g.dispatch(broken, [], [1, 1, 1]);
    assert.equal(g.precompiling, true);
  });
  assert.equal(g.precompiling, false);
  assert.equal(g.dispatches, dispatches, "nothing recorded");
  assert.equal(g.pipelineCount, compiles + 2);
  await g.sync(); // the broken kernel is not reported here
  g.dispatch(good, [y], [1, 1, 1]);
  assert.equal(g.pipelineCount, compiles + 2, "the good kernel was compiled ahead");
  assert.deepEqual([...new Float32Array(await g.readBytes(y, 16))], [0.5, 1.5, 2.5, 3.5]);
  await reportedWhenDispatched(g, broken);
});

Deno.test("precompile under workgroup bounds checking: a failing kernel with workgroup memory stays quiet", async () => {
  // Checked kernels get a bind group for the counter, made from the pipeline: for a pipeline that
  // failed, that fails too, and must be as quiet as the compile.
  const g = await createGpu({ checkWorkgroup: true });
  const broken = `var<workgroup> s: array<f32, 4>;
@compute @workgroup_size(1) fn main() { s[0] = 1.0; let x: u32 = undefined_thing; }`;
  g.precompile(() => g.dispatch(broken, [], [1, 1, 1]));
  await g.sync();
  await reportedWhenDispatched(g, broken);
});

Deno.test("an allocation the device refuses names the op and what it was for", async () => {
  const g = await createGpu();
  function hugeTensorOp() {
    g.createBuffer(
      { size: g.limits.maxBufferSize + 256, usage: GPUBufferUsage.STORAGE },
      () => "a tensor [1, 2, 3]",
    );
  }
  hugeTensorOp();
  await assert.rejects(
    () => g.sync(),
    oneLine(
      /in hugeTensorOp \(tests\/gpu_errors_test\.ts:\d+\), allocating a tensor \[1, 2, 3\] \(\d+ bytes\): /,
    ),
  );
  g.device.destroy();
});

Deno.test("a lost device is thrown as GpuDeviceLostError at the next sync or read-back", async () => {
  const g = await createGpu();
  g.device.destroy();
  await g.device.lost;
  await assert.rejects(
    () => g.sync(),
    (e: Error) =>
      e instanceof GpuDeviceLostError && oneLine(/^the GPU device was lost \(destroyed\)/)(e),
  );
});

Deno.test("defaultLimits: the device gets WebGPU's default limits, not the adapter's", async () => {
  const g = await createGpu({ defaultLimits: true });
  assert.deepEqual(
    [
      g.limits.maxComputeWorkgroupStorageSize,
      g.limits.maxComputeInvocationsPerWorkgroup,
      g.limits.maxStorageBuffersPerShaderStage,
      g.limits.maxStorageBufferBindingSize,
    ],
    [16384, 256, 8, 128 << 20],
  );
  g.device.destroy();
});

Deno.test("binding a buffer above maxStorageBufferBindingSize is refused at the dispatch, naming the op", async () => {
  const g = await createGpu();
  const code = "@group(0) @binding(0) var<storage, read_write> y: array<f32>;\n" +
    "@compute @workgroup_size(1) fn main() { y[0] = 1.0; }";
  const tooBig = { size: g.limits.maxStorageBufferBindingSize + 256 } as GPUBuffer;
  function bigOp() {
    g.dispatch(code, [tooBig], [1]);
  }
  assert.throws(
    bigOp,
    (e: Error) =>
      e instanceof GpuOpError &&
      oneLine(/^bigOp \(tests\/gpu_errors_test\.ts:\d+\) binds a buffer of \d+ bytes, above/)(e),
  );
  await g.sync();
  g.device.destroy();
});
