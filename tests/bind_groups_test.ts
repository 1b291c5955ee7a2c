import assert from "node:assert/strict";
import { gpu } from "../ops/gpu.ts";
import { BindGroupCache, bindingLayout, pipelineLayout } from "../ops/bind_groups.ts";
import { flatMain, launch, storage, uniforms } from "../ops/kernel.ts";
import { poolStats, Tensor, trimPool } from "../ops/tensor.ts";
import { setup } from "./harness.ts";

await setup();

/** y = a·x + b with `a`, `b` uniforms: the same kernel and buffers whatever the values. */
function affine(x: Tensor, y: Tensor, a: number, b: number): void {
  const u = uniforms(2, { a: ["f32", a], b: ["f32", b] });
  const code = `${storage("x", "y!")}\n${u.decl}\n${
    flatMain(x.size)
  }\n  y[i] = P.a * x[i] + P.b;\n}`;
  launch(code, [x, y], x.size, u.data);
}

Deno.test("binding layouts are read off the WGSL declarations", () => {
  const code = `${storage("x", "idx:u32", "y!")}
@group(0) @binding(3) var<uniform> P: vec4f;
@group(1) @binding(0) var<storage, read_write> c: array<u32>;`;
  const types = (entries: GPUBindGroupLayoutEntry[] | null) =>
    entries?.map((e) => [e.binding, e.buffer?.type, e.buffer?.hasDynamicOffset ?? false]);
  assert.deepEqual(types(bindingLayout(code, 0, 4)), [
    [0, "read-only-storage", false],
    [1, "read-only-storage", false],
    [2, "storage", false],
    [3, "uniform", true],
  ]);
  // Only the bindings a dispatch binds; a binding the source lacks gives no layout.
  assert.equal(bindingLayout(code, 0, 2)?.length, 2);
  assert.equal(bindingLayout(code, 0, 5), null);
  assert.deepEqual(types(bindingLayout(code, 1)), [[0, "storage", false]]);
  assert.deepEqual(pipelineLayout(code, 4)?.map((g) => g.length), [4, 1]);
  assert.equal(pipelineLayout("@group(0) @binding(0) var<private> x: f32;", 1), null);
  assert.equal(pipelineLayout("@group(0) @binding(1) var<storage> x: array<f32>;", 2), null);
});

Deno.test("bind group cache: keyed by identity, bounded, forgets destroyed buffers", () => {
  const cache = new BindGroupCache(3);
  const buffers = Array.from({ length: 6 }, () => ({}) as GPUBuffer);
  const group = (i: number) => ({ label: `g${i}` }) as GPUBindGroup;
  const [a, b, c, u] = buffers;
  cache.set(1, [a, b], null, 0, group(0));
  cache.set(1, [a], u, 16, group(1));
  assert.equal(cache.get(1, [a, b], null, 0)?.label, "g0");
  assert.equal(cache.get(1, [b, a], null, 0), undefined);
  assert.equal(cache.get(2, [a, b], null, 0), undefined);
  assert.equal(cache.get(1, [a], null, 0), undefined);
  assert.equal(cache.get(1, [a], u, 16)?.label, "g1");
  assert.equal(cache.get(1, [a], u, 32), undefined);
  // A new buffer is a new key, even where an equal one stood before.
  assert.equal(cache.get(1, [{} as GPUBuffer, b], null, 0), undefined);
  assert.equal(cache.size, 2);
  cache.set(1, [a, b], null, 0, group(2)); // replaces, does not add
  assert.equal(cache.size, 2);

  cache.forget(c); // bound by no group: nothing to drop
  assert.equal(cache.size, 2);
  cache.forget(a);
  assert.equal(cache.get(1, [a, b], null, 0), undefined);
  assert.equal(cache.size, 0);

  for (let i = 0; i < 20; i++) {
    cache.set(i, [buffers[i % 6], buffers[(i + 1) % 6]], null, 0, group(i));
    assert.ok(cache.size <= cache.capacity, `${cache.size} groups held, capacity 3`);
  }
  assert.ok(cache.hits > 0 && cache.misses > 0);
});

Deno.test("bind group cache: forgetting a buffer drops only the groups that bind it", () => {
  const cache = new BindGroupCache(100);
  const [a, b, c, d, u] = Array.from({ length: 5 }, () => ({}) as GPUBuffer);
  const group = (label: string) => ({ label }) as GPUBindGroup;
  cache.set(1, [a, b], null, 0, group("ab"));
  cache.set(1, [b, a], null, 0, group("ba"));
  cache.set(1, [c, d], null, 0, group("cd"));
  cache.set(2, [b, b], u, 16, group("bbu"));
  cache.set(2, [c], u, 16, group("cu"));
  assert.equal(cache.size, 5);
  cache.forget(b); // under a (second key), as the first key, and twice in one group
  assert.equal(cache.size, 2);
  assert.equal(cache.get(1, [a, b], null, 0), undefined);
  assert.equal(cache.get(1, [b, a], null, 0), undefined);
  assert.equal(cache.get(2, [b, b], u, 16), undefined);
  assert.equal(cache.get(1, [c, d], null, 0)?.label, "cd");
  assert.equal(cache.get(2, [c], u, 16)?.label, "cu");
  cache.forget(b); // again: nothing left to drop
  cache.forget(a); // its groups went with b's: the count stays exact
  assert.equal(cache.size, 2);
  cache.forget(u);
  assert.equal(cache.size, 1);
  assert.equal(cache.get(1, [c, d], null, 0)?.label, "cd");
  cache.set(1, [a, d], null, 0, group("ad"));
  assert.equal(cache.size, 2);
  cache.forget(d);
  assert.equal(cache.size, 0);
});

Deno.test("a recorded step binds the same groups again: no new group after the first", async () => {
  const x = Tensor.from([1, 2, 3, 4]);
  const step = () => {
    const y = Tensor.empty([4]);
    affine(x, y, 2, 1);
    const z = Tensor.empty([4]);
    affine(y, z, 3, 0);
    y.dispose();
    return z;
  };
  step().dispose();
  const cache = gpu().bindGroups;
  const before = cache.misses;
  const z = step();
  assert.equal(cache.misses, before, "the second step created bind groups");
  assert.deepEqual([...await z.read()], [9, 15, 21, 27]);
  z.dispose();
  x.dispose();
});

Deno.test("uniforms change between dispatches of one cached group, in one submit and across", async () => {
  const x = Tensor.from([1, 2, 3]);
  const outs: Tensor[] = [];
  // Many dispatches of one kernel on the same buffers, no sync: several submits reuse one arena.
  for (let k = 0; k < 600; k++) {
    const y = Tensor.empty([3]);
    affine(x, y, k, -k);
    if (k % 100 === 0) outs.push(y);
    else y.dispose();
  }
  for (const [j, y] of outs.entries()) {
    const k = j * 100;
    assert.deepEqual([...await y.read()], [1, 2, 3].map((v) => k * v - k), `dispatch ${k}`);
    y.dispose();
  }
  // Same kernel, same two buffers, three values in a row: each result is read after all were recorded.
  const y = Tensor.empty([3]);
  const copies = [2, 3, 4].map((a) => {
    affine(x, y, a, 0);
    const c = Tensor.empty([3]);
    launch(`${storage("y", "c!")}\n${flatMain(3)}\n  c[i] = y[i];\n}`, [y, c], 3);
    return c;
  });
  for (const [j, c] of copies.entries()) {
    assert.deepEqual([...await c.read()], [1, 2, 3].map((v) => (j + 2) * v));
    c.dispose();
  }
  y.dispose();
  x.dispose();
});

Deno.test("a destroyed buffer replaced by a new one at the same pool slot is never served stale", async () => {
  const run = async (values: number[]) => {
    const x = Tensor.from(values);
    const y = Tensor.empty([values.length]);
    affine(x, y, 1, 0.5);
    const out = [...await y.read()];
    const buffers = [x.buffer, y.buffer];
    x.dispose();
    y.dispose();
    return { out, buffers };
  };
  const first = await run([1, 2, 3, 4]);
  assert.deepEqual(first.out, [1.5, 2.5, 3.5, 4.5]);
  trimPool(); // destroys the free buffers, those two among them
  assert.equal(poolStats().freeBytes, 0);
  const second = await run([10, 20, 30, 40]);
  assert.deepEqual(second.out, [10.5, 20.5, 30.5, 40.5]);
  assert.ok(
    second.buffers.every((b) => !first.buffers.includes(b)),
    "a destroyed buffer came back",
  );
});

Deno.test("the pool hands out the lowest-numbered free buffer, whatever the order of release", () => {
  const take = () => [Tensor.empty([7]), Tensor.empty([7]), Tensor.empty([7])];
  const first = take();
  const buffers = first.map((t) => t.buffer);
  first.forEach((t) => t.dispose());
  const second = take();
  assert.deepEqual(second.map((t) => t.buffer), buffers);
  [...second].reverse().forEach((t) => t.dispose());
  const third = take();
  assert.deepEqual(third.map((t) => t.buffer), buffers);
  third.forEach((t) => t.dispose());
});

Deno.test("uniform kernels recorded behind a host step read their own values", async () => {
  const x = Tensor.from([1, 2]);
  const y = Tensor.empty([2]);
  affine(x, y, 2, 0);
  gpu().hostStep([y], [y], ([v]) => [v.map((a) => a + 1)]);
  const z = Tensor.empty([2]);
  affine(y, z, 10, 0); // same kernel, new buffers, other values, queued behind the host step
  const w = Tensor.empty([2]);
  affine(z, w, 0.5, 0);
  assert.deepEqual([...await w.read()], [15, 25]);
  assert.deepEqual([...await y.read()], [3, 5]);
  for (const t of [x, y, z, w]) t.dispose();
});
