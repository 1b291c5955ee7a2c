import assert from "node:assert/strict";
import { createGpu, Gpu, gpu, GpuUnavailableError } from "../ops/gpu.ts";
import { checkWorkgroupBounds } from "../ops/workgroup_check.ts";
import { keep, mixSeeds, poolStats, Rng, scope, sizeClass, Tensor } from "../ops/tensor.ts";
import { backward, clearTape, isRecording, noGrad, reshape, tapeLength } from "../ops/autograd.ts";
import { add, gelu, mul, sum } from "../ops/elementwise.ts";
import { setup } from "./harness.ts";

await setup();

Deno.test("no WebGPU or no adapter: one-line error saying what to install", async () => {
  await assert.rejects(() => createGpu({ gpu: undefined }), (e: Error) => {
    assert.ok(e instanceof GpuUnavailableError);
    assert.match(e.message, /^WebGPU is not available.*install/);
    assert.ok(!e.message.includes("\n"));
    return true;
  });
  const noAdapter = { requestAdapter: () => Promise.resolve(null) } as unknown as GPU;
  await assert.rejects(() => createGpu({ gpu: noAdapter }), /no WebGPU adapter found: install/);
});

Deno.test("no WebGPU: a command exits non-zero with a single stderr line", async () => {
  const fixture = new URL("./fixtures/no_webgpu.ts", import.meta.url).pathname;
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", fixture],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const stderr = new TextDecoder().decode(out.stderr).trim();
  assert.equal(out.code, 2);
  assert.equal(new TextDecoder().decode(out.stdout), "");
  assert.equal(stderr.split("\n").length, 1, stderr);
  assert.match(stderr, /^error: WebGPU is not available/);
});

Deno.test("adapter facts are exposed", () => {
  assert.ok(gpu().description.length > 0);
  // A software adapter is recognised by its description; a missing description is pieced together.
  const info = (fields: Partial<GPUAdapterInfo>) => fields as GPUAdapterInfo;
  const soft = new Gpu(gpu().device, info({ description: "llvmpipe (LLVM 15.0.6, 256 bits)" }));
  assert.equal(soft.isFallback, true);
  const hard = new Gpu(gpu().device, info({ vendor: "nvidia", architecture: "hopper" }));
  assert.deepEqual([hard.isFallback, hard.description], [false, "nvidia hopper"]);
  assert.ok(gpu().limits.maxStorageBufferBindingSize >= 128 << 20);
});

Deno.test("tensor creation, read-back and views", async () => {
  await scope(async () => {
    const x = Tensor.from([1, 2, 3, 4, 5, 6], [2, 3]);
    assert.deepEqual([...await x.read()], [1, 2, 3, 4, 5, 6]);
    assert.deepEqual(x.view([3, -1]).shape, [3, 2]);
    assert.throws(() => x.view([4, -1]), /cannot view 6 values/);
    assert.throws(() => Tensor.from([1, 2, 3], [2, 2]), /3 values do not fill shape \[2,2\]/);
    assert.deepEqual([...await Tensor.zeros([3]).read()], [0, 0, 0]);
    assert.deepEqual([...await Tensor.full([2], -1.5).read()], [-1.5, -1.5]);
    assert.equal(await Tensor.from([7]).item(), 7);
  });
});

Deno.test("seeded random init: deterministic, right moments, truncation respected", async () => {
  await scope(async () => {
    const a = await Tensor.randn([4000], { seed: 3, std: 2 }).read();
    const b = await Tensor.randn([4000], { seed: 3, std: 2 }).read();
    assert.deepEqual(a, b);
    const m = a.reduce((s, v) => s + v, 0) / a.length;
    const sd = Math.sqrt(a.reduce((s, v) => s + (v - m) ** 2, 0) / a.length);
    assert.ok(Math.abs(m) < 0.1 && Math.abs(sd - 2) < 0.1, `mean ${m} std ${sd}`);
    const t = await Tensor.truncNormal([4000], { seed: 1, std: 0.02, a: -0.02, b: 0.02 }).read();
    assert.ok(t.every((v) => Math.abs(v) <= 0.02 + 1e-7));
    const u = await Tensor.rand([1000], { seed: 2, low: 3, high: 4 }).read();
    assert.ok(u.every((v) => v >= 3 && v < 4));
    assert.notDeepEqual(
      await Tensor.randn([8], { seed: 4 }).read(),
      await Tensor.randn([8], { seed: 5 }).read(),
    );
  });
  const r = new Rng(9);
  r.normal();
  const saved = r.state;
  const next = [r.uniform(), r.normal()];
  r.state = saved;
  assert.deepEqual([r.uniform(), r.normal()], next);
});

Deno.test("mixSeeds: the values runs were seeded with, order-sensitive, spread over 32 bits", () => {
  // Pinned: a run's forward seeds, masks and growth draws follow from these.
  assert.deepEqual([mixSeeds(), mixSeeds(0), mixSeeds(0, 17, 2), mixSeeds(0, 2, 17)], [
    2166136261,
    1818472955,
    2816245767,
    561468361,
  ]);
  const seen = new Set<number>();
  for (let step = 0; step < 1000; step++) seen.add(mixSeeds(7, step, 1) >>> 22);
  assert.ok(seen.size > 600, `top 10 bits of 1000 seeds take only ${seen.size} values`);
});

Deno.test("scope disposes everything but what it returns; keep() escapes", () => {
  const before = poolStats().liveTensors;
  let kept: Tensor | null = null;
  const out = scope(() => {
    const a = Tensor.ones([4]);
    kept = keep(Tensor.ones([2]));
    return { y: add(a, a), list: [mul(a, a)] };
  });
  assert.equal(poolStats().liveTensors, before + 3);
  assert.ok(!out.y.disposed && !out.list[0].disposed);
  out.y.dispose();
  out.list[0].dispose();
  kept!.dispose();
  out.y.dispose(); // idempotent
  assert.equal(poolStats().liveTensors, before);
  assert.throws(() => out.y.buffer, /used after dispose/);
});

Deno.test("views share storage: the buffer returns to the pool only when the last handle goes", () => {
  const x = Tensor.ones([8]);
  const free0 = poolStats().freeBytes;
  const v = x.view([2, 4]);
  x.dispose();
  assert.equal(poolStats().freeBytes, free0);
  v.dispose();
  assert.equal(poolStats().freeBytes, free0 + sizeClass(32));
});

Deno.test("ops record dispatches without submitting; read() is the sync point", async () => {
  const x = Tensor.from([1, 2, 3]);
  await x.read();
  const submits = gpu().submits;
  const y = scope(() => gelu(add(mul(x, x), x)));
  assert.equal(gpu().submits, submits, "an op submitted the queue");
  assert.ok(gpu().dispatchesSinceSubmit >= 3);
  await y.read();
  assert.equal(gpu().submits, submits + 1);
  x.dispose();
  y.dispose();
});

Deno.test("autograd: shared inputs accumulate, .grad accumulates across backward calls, tape empties", async () => {
  const w = Tensor.from([1, 2, 3]);
  w.requiresGrad = true;
  scope(() => backward(sum(add(mul(w, w), w)))); // d/dw (w² + w) = 2w + 1
  assert.deepEqual([...await w.grad!.read()], [3, 5, 7]);
  scope(() => backward(sum(reshape(w, [3, 1]))));
  assert.deepEqual([...await w.grad!.read()], [4, 6, 8]);
  assert.equal(tapeLength(), 0);
  scope(() => noGrad(() => sum(mul(w, w))));
  assert.equal(tapeLength(), 0, "noGrad recorded nodes");
  scope(() => sum(mul(w, w)));
  assert.ok(tapeLength() > 0);
  clearTape();
  assert.equal(tapeLength(), 0);
  w.dispose();
});

Deno.test("autograd: overlapping async noGrad calls turn recording back on once all have ended", async () => {
  // Two calls that each await a promise, the first settling first: recording is off while either
  // is pending and on once both have settled (also after calls that throw). A flag saved and
  // restored by each call would be on while the second still awaits, and off for good after.
  const later = (ms: number) => new Promise((r) => setTimeout(r, ms));
  const first = noGrad(async () => await later(5));
  const second = noGrad(async () => await later(30));
  assert.equal(isRecording(), false);
  await first;
  assert.equal(isRecording(), false, "on while the second call still awaits");
  await second;
  assert.equal(isRecording(), true, "still off after both ended");
  await assert.rejects(noGrad(async () => {
    await later(1);
    throw new Error("boom");
  }));
  assert.throws(() =>
    noGrad(() => {
      throw new Error("sync boom");
    })
  );
  assert.equal(isRecording(), true, "off after calls that threw");
});

Deno.test("memory: 100 forward/backward steps do not grow the pool", async () => {
  const w = Tensor.randn([64, 16], { seed: 1 });
  w.requiresGrad = true;
  const step = () =>
    scope(() => {
      const x = Tensor.randn([64, 16], { seed: 2 });
      backward(sum(gelu(mul(add(x, w), w))));
      w.grad!.dispose();
      w.grad = null;
    });
  for (let i = 0; i < 5; i++) step();
  await gpu().sync();
  const warm = poolStats();
  for (let i = 0; i < 100; i++) step();
  await gpu().sync();
  const after = poolStats();
  assert.equal(after.allocatedBytes, warm.allocatedBytes);
  assert.equal(after.liveTensors, warm.liveTensors);
  w.dispose();
});

Deno.test("workgroup bounds check: indices rewritten, an overrun is reported at the next read-back", async () => {
  const code = `@group(0) @binding(0) var<storage, read_write> a: array<f32>;
var<workgroup> s: array<f32, 16>;
var<workgroup> t: array<vec4<f32>, 4>;
@compute @workgroup_size(1) fn main() {
  for (var i = 0u; i < N; i++) { s[i] = 2.0; t[i / 4u][i % 4u] = 1.0; }
  workgroupBarrier();
  a[0] = s[15] + t[u32(s[0u])][0];
}`;
  const checked = checkWorkgroupBounds(code, 3);
  assert.ok(checked.includes("s[_lk_wg(u32(i), 16u, 3u)] = 2.0"));
  assert.ok(checked.includes("t[_lk_wg(u32(i / 4u), 4u, 3u)][i % 4u]"));
  // Nested indices are checked too, and a kernel without workgroup arrays is left alone.
  assert.ok(checked.includes("t[_lk_wg(u32(u32(s[_lk_wg(u32(0u), 16u, 3u)])), 4u, 3u)]"));
  assert.equal(checkWorkgroupBounds("fn main() {}", 0), "fn main() {}");

  const g = await createGpu({ checkWorkgroup: true });
  const a = g.device.createBuffer({
    size: 16,
    usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC,
  });
  const kernel = (n: number) =>
    code.replace("i < N", `i < ${n}u`).replace("t[u32(s[0u])]", "t[3u]");
  g.dispatch(kernel(16), [a], [1]);
  assert.equal(new Float32Array(await g.readBytes(a, 4))[0], 3);
  // 4 past the end of s (i = 16…19) and t[4] four times; the counter resets after the report.
  g.dispatch(kernel(20), [a], [1]);
  await assert.rejects(
    () => g.readBytes(a, 4),
    /workgroup memory overrun: 8 out-of-range index\(es\), up to 19, in kernel #1/,
  );
  g.dispatch(kernel(16), [a], [1]);
  await g.sync();
  a.destroy();
  g.device.destroy();
});

Deno.test("uploads: in recording order, small ones through arenas, large ones written after a submit", async () => {
  const g = gpu();
  const t = Tensor.zeros([6]);
  const [one, two] = [Tensor.full([6], 1), Tensor.full([6], 2)];
  const doubled: Tensor[] = [];
  await g.sync();
  // Count buffer creations while many small uploads (more than one arena's worth) are recorded.
  const device = g.device as unknown as { createBuffer: (d: GPUBufferDescriptor) => GPUBuffer };
  const create = device.createBuffer.bind(device);
  // Staging buffers of their own (mapped at creation), and arenas (copy source and destination).
  let staged = 0;
  let arenas = 0;
  device.createBuffer = (d) => {
    if (d.mappedAtCreation) staged++;
    if (d.usage === (GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST)) arenas++;
    return create(d);
  };
  try {
    const rounds = 3;
    for (let r = 0; r < rounds; r++) {
      // Each upload into the same buffer lands after the kernel recorded before it read the last one.
      for (let i = 0; i < 5; i++) {
        g.upload(t.buffer, Float32Array.of(r, i, 1, 2, 3, 4));
        doubled.push(mul(t, two));
      }
      // 6 bytes, padded with zeros to 8: 1.0, then a second value of zero bytes (not stale arena bytes).
      g.upload(t.buffer, new Uint8Array([0, 0, 128, 63, 0, 0]), 0);
      doubled.push(mul(t, one));
      await g.sync();
    }
    // Past one arena: uploads of 40 KiB each, beside the small ones.
    const big = Tensor.zeros([10_240]);
    for (let i = 0; i < 12; i++) g.upload(big.buffer, new Float32Array(10_240).fill(i));
    const last = await big.read();
    assert.equal(last[0], 11);
    assert.equal(last[10_239], 11);
    big.dispose();
    const seen = await Promise.all(doubled.map((d) => d.read()));
    for (let r = 0; r < rounds; r++) {
      for (let i = 0; i < 5; i++) {
        assert.deepEqual([...seen[r * 6 + i]], [2 * r, 2 * i, 2, 4, 6, 8]);
      }
      assert.deepEqual([...seen[r * 6 + 5]], [1, 0, 1, 2, 3, 4]);
    }
    // No staging buffer per upload; 480 KiB in one submit take two 256 KiB arenas at most.
    assert.equal(staged, 0);
    assert.ok(arenas <= 2, `${arenas} arenas for ${rounds * 6 + 12} uploads`);
    // A large upload submits what is recorded and writes after it: a kernel recorded before it
    // reads the old values, one recorded after it the new ones.
    const huge = Tensor.from(new Float32Array(40_000).fill(3));
    const before = mul(huge, huge);
    g.upload(huge.buffer, new Float32Array(40_000).fill(5));
    const after = mul(huge, huge);
    assert.equal(staged, 0);
    assert.equal((await before.read())[39_999], 9);
    assert.equal((await after.read())[39_999], 25);
    // An odd byte count is padded with zeros.
    g.upload(huge.buffer, new Uint8Array(70_001).fill(0));
    assert.equal((await huge.read())[17_500], 0);
    for (const x of [huge, before, after]) x.dispose();
  } finally {
    device.createBuffer = create;
    for (const d of doubled) d.dispose();
    for (const x of [t, one, two]) x.dispose();
  }
});
