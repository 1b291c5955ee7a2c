/**
 * `LARGEKERNEL_DUMP_WGSL=DIR`: every compiled kernel lands in DIR once, as
 * the exact source compiled, headed by its name, config and first dispatch.
 */
import assert from "node:assert/strict";
import { createGpu } from "../ops/gpu.ts";
import { shaderHash } from "../ops/wgsl_dump.ts";

const KERNEL = (value: number) =>
  `@group(0) @binding(0) var<storage, read_write> a: array<f32>;
@compute @workgroup_size(1) fn main() { a[0] = ${value}.0; }`;
const WITH_UNIFORMS = `@group(0) @binding(0) var<storage, read_write> a: array<f32>;
@group(0) @binding(1) var<uniform> p: vec4f;
@compute @workgroup_size(1) fn main() { a[0] = p.x; }`;

async function wgslFiles(dir: string): Promise<string[]> {
  const names: string[] = [];
  for await (const e of Deno.readDir(dir)) if (e.name.endsWith(".wgsl")) names.push(e.name);
  return names.sort();
}

Deno.test("dumpWgsl: one file per compiled kernel, named and headed by what the launcher passed", async () => {
  const dir = await Deno.makeTempDir();
  const g = await createGpu({ dumpWgsl: `${dir}/shaders` });
  const a = g.device.createBuffer({ size: 16, usage: GPUBufferUsage.STORAGE });
  try {
    const launchBoth = () => {
      g.dispatch(KERNEL(1), [a], [1], undefined, { name: "set one", config: { value: 1 } });
      g.dispatch(KERNEL(1), [a], [1]); // cached: no second file
      g.dispatch(WITH_UNIFORMS, [a], [2, 1, 1], new ArrayBuffer(16));
    };
    launchBoth();
    await g.sync();
    const files = await wgslFiles(`${dir}/shaders`);
    // Unnamed, a kernel is named after the function that launched it.
    assert.deepEqual(files, [
      `set_one-${shaderHash(KERNEL(1))}.wgsl`,
      `wgsl_dump_test.launchBoth-${shaderHash(WITH_UNIFORMS)}.wgsl`,
    ]);
    const named = await Deno.readTextFile(`${dir}/shaders/${files[0]}`);
    assert.equal(
      named.split("\n").slice(0, 2).join("\n"),
      `// kernel set_one ${shaderHash(KERNEL(1))}\n// config: {"value":1}`,
    );
    assert.ok(named.endsWith(`${KERNEL(1)}\n`));
    const plain = await Deno.readTextFile(`${dir}/shaders/${files[1]}`);
    assert.match(plain, /\/\/ config: none\n/);
    assert.match(plain, /\/\/ launched from tests\/wgsl_dump_test\.ts:\d+\n/);
    assert.match(plain, /first dispatch: 2x1x1 workgroups, 1 storage buffers, 16 uniform bytes/);
    assert.notEqual(shaderHash(KERNEL(1)), shaderHash(KERNEL(2)));
  } finally {
    a.destroy();
    g.device.destroy();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("dumpWgsl: a folder that cannot be written is a one-line error naming the variable", async () => {
  const file = await Deno.makeTempFile();
  const g = await createGpu({ dumpWgsl: file });
  const a = g.device.createBuffer({ size: 16, usage: GPUBufferUsage.STORAGE });
  try {
    assert.throws(
      () => g.dispatch(KERNEL(3), [a], [1]),
      (e: Error) =>
        /^LARGEKERNEL_DUMP_WGSL: cannot write .*\.wgsl: /.test(e.message) &&
        !e.message.includes("\n"),
    );
  } finally {
    a.destroy();
    g.device.destroy();
    await Deno.remove(file);
  }
});

Deno.test("LARGEKERNEL_DUMP_WGSL: a real op run with the variable set writes its kernels", async () => {
  const dir = await Deno.makeTempDir();
  const script = `
import { initGpu } from "${new URL("../ops/gpu.ts", import.meta.url)}";
import { Tensor } from "${new URL("../ops/tensor.ts", import.meta.url)}";
import { emaUpdate } from "${new URL("../ops/ema.ts", import.meta.url)}";
import { add } from "${new URL("../ops/elementwise.ts", import.meta.url)}";
await initGpu();
const avg = Tensor.from([0, 10]);
emaUpdate(avg, Tensor.from([10, 0]), 0.5);
await add(avg, avg).read();
console.log(JSON.stringify([...(await avg.read())]));`;
  try {
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["eval", "--ext=ts", script],
      env: { LARGEKERNEL_DUMP_WGSL: dir, MESA_SHADER_CACHE_DISABLE: "true" },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const stderr = new TextDecoder().decode(out.stderr);
    assert.equal(out.code, 0, stderr);
    assert.equal(new TextDecoder().decode(out.stdout).trim().split("\n").at(-1), "[5,5]");
    const files = await wgslFiles(dir);
    const ema = files.filter((f) => f.startsWith("ema-update-"));
    assert.equal(ema.length, 1, files.join(" "));
    const text = await Deno.readTextFile(`${dir}/${ema[0]}`);
    assert.match(text, /@compute/);
    assert.match(text, /\/\/ config: \{"size":2,"decay":0.5\}/);
    // An op that passes no name is named after its launcher.
    const binary = files.filter((f) => f.startsWith("elementwise.binary-"));
    assert.equal(binary.length, 1, files.join(" "));
    const added = await Deno.readTextFile(`${dir}/${binary[0]}`);
    assert.match(added, /\/\/ launched from ops\/elementwise\.ts:\d+\n[^]*@compute/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
