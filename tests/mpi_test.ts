/**
 * The MPI binding and the MPI replicas in a real job: `mpirun -np 2` on this
 * machine (the ranks share its GPU). Without `mpirun` the tests show as
 * ignored, with the reason in their names.
 */
import assert from "node:assert/strict";
import { loadSafetensorsFile } from "../models/safetensors.ts";

/** Whether `mpirun` is on the PATH. */
function hasMpirun(): boolean {
  try {
    return new Deno.Command("mpirun", { args: ["--version"], stdout: "null", stderr: "null" })
      .outputSync().success;
  } catch {
    return false;
  }
}

const ignore = !hasMpirun();
const suffix = ignore ? " (ignored: mpirun not found)" : "";

/** Run `deno run -A script` as `ranks` MPI processes; stdout and stderr as text. */
export async function mpirun(
  ranks: number,
  script: string[],
  env: Record<string, string> = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command("mpirun", {
    args: ["-np", String(ranks), "--oversubscribe", Deno.execPath(), "run", "-A", ...script],
    env: {
      // Containers and CI often run as root, which Open MPI refuses unless told.
      OMPI_ALLOW_RUN_AS_ROOT: "1",
      OMPI_ALLOW_RUN_AS_ROOT_CONFIRM: "1",
      MESA_SHADER_CACHE_DISABLE: "true",
      NO_COLOR: "1",
      ...env,
    },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = (b: Uint8Array) => new TextDecoder().decode(b);
  return { code: out.code, stdout: text(out.stdout), stderr: text(out.stderr) };
}

Deno.test({
  name: `mpi: binding and replicas on 2 ranks${suffix}`,
  ignore,
  async fn() {
    const r = await mpirun(2, ["tests/fixtures/mpi_ranks.ts"]);
    assert.equal(r.code, 0, r.stderr);
    const ranks = r.stdout.trim().split("\n").map((l) => JSON.parse(l))
      .sort((a, b) => a.rank - b.rank);
    assert.equal(ranks.length, 2, r.stdout);
    ranks.forEach((o, rank) => {
      assert.equal(o.rank, rank);
      assert.equal(o.size, 2);
      assert.deepEqual(o.launched, { rank, size: 2, localRank: rank });
      assert.deepEqual(o.f32, [1, 1999]); // (0 + r) summed over r = 0, 1; (999 + r) likewise
      assert.deepEqual(o.f64, [1.5, 1e300]);
      assert.deepEqual(o.bcast, [8, 9]); // from rank 1
      assert.deepEqual(o.sum, [1, 2]);
      assert.match(o.disagree, /^ranks disagree on the flags: 1 of 2 ranks differ from rank 0/);
      // gradients (r + 1)·g averaged over two ranks: 1.5·g
      assert.deepEqual(o.grads, [[0, 1.5, 3, 4.5, 6, 7.5], [1.5, 3]]);
      assert.equal(o.commSteps, 1);
    });
    assert.deepEqual(ranks[1].weights, ranks[0].weights, "weights after the broadcast");
  },
});

Deno.test({
  name: `mpi: a libmpi that cannot be loaded is a one-line error on every rank${suffix}`,
  ignore,
  async fn() {
    const r = await mpirun(2, ["tests/fixtures/mpi_ranks.ts"], {
      LARGEKERNEL_LIBMPI: "/nonexistent/libmpi.so.40",
    });
    assert.notEqual(r.code, 0);
    const lines = r.stderr.split("\n").filter((l) => l.startsWith("error: "));
    assert.equal(lines.length, 2, r.stderr);
    for (const l of lines) {
      assert.match(
        l,
        /^error: cannot load MPI \(\/nonexistent\/libmpi\.so\.40: .*\): install Open MPI \(apt-get install openmpi-bin\)$/,
      );
    }
  },
});

/** ‖a − b‖ / ‖b‖ over every tensor of two weight files together. */
async function relativeDifference(a: string, b: string): Promise<number> {
  const wa = await loadSafetensorsFile(a);
  const wb = await loadSafetensorsFile(b);
  assert.deepEqual([...wa.keys()], [...wb.keys()]);
  let num = 0;
  let den = 0;
  for (const [k, v] of wa) {
    const w = wb.get(k)!.data;
    for (let i = 0; i < w.length; i++) {
      num += (v.data[i] - w[i]) ** 2;
      den += w[i] ** 2;
    }
  }
  return Math.sqrt(num / Math.max(den, 1e-30));
}

Deno.test({
  name:
    `mpi: 2 ranks with batch B train the same weights as 1 process with 2B, dense and sparse${suffix}`,
  ignore,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "lk_mpi_equiv_" });
    try {
      // The reference and the 2-rank job run side by side.
      const [one, two] = await Promise.all([
        new Deno.Command(Deno.execPath(), {
          args: ["run", "-A", "tests/fixtures/mpi_train.ts", `${dir}/one`, "8"],
          env: { MESA_SHADER_CACHE_DISABLE: "true" },
          stdout: "piped",
          stderr: "piped",
        }).output(),
        mpirun(2, ["tests/fixtures/mpi_train.ts", `${dir}/two`, "4"]),
      ]);
      assert.equal(one.code, 0, new TextDecoder().decode(one.stderr));
      assert.equal(two.code, 0, two.stderr);
      for (const run of ["dense", "sparse"]) {
        for (const file of ["model.safetensors", "optimizer.safetensors"]) {
          const d = await relativeDifference(
            `${dir}/two/${run}/checkpoint-last/${file}`,
            `${dir}/one/${run}/checkpoint-last/${file}`,
          );
          console.log(`${run} ${file}: relative difference ${d.toExponential(2)}`);
          assert.ok(d <= 1e-5, `${run} ${file}: relative difference ${d}`);
        }
        const log = (p: string) => Deno.readTextFile(`${dir}/${p}/${run}/log.csv`);
        assert.equal((await log("two")).split("\n")[1].split(",")[1], "3", "3 optimiser steps");
      }
      // Same masks as the single process, and on both ranks after every update.
      const masks = (p: string) =>
        loadSafetensorsFile(`${dir}/${p}/sparse/checkpoint-last/masks.safetensors`);
      const [m1, m2] = [await masks("one"), await masks("two")];
      for (const [k, v] of m1) assert.deepEqual(m2.get(k)!.data, v.data, `mask ${k}`);
      const ranks = two.stdout.split("\n").filter((l) => l.startsWith("{"))
        .map((l) => JSON.parse(l)).sort((a, b) => a.rank - b.rank);
      assert.equal(ranks.length, 2, two.stdout);
      assert.deepEqual(ranks[1].agreed, ranks[0].agreed);
      const whats = ranks[0].agreed.map(([what]: [string, string]) => what);
      for (const step of [1, 2, 3]) {
        assert.ok(whats.includes(`the masks after the update of step ${step}`), whats.join("; "));
      }
      assert.ok(whats.includes("the initial masks"));
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name:
    `mpi: with --sync-bn, 2 ranks with batch B train the same weights and BatchNorm statistics as 1 process with 2B${suffix}`,
  ignore,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "lk_mpi_syncbn_" });
    try {
      const [one, two] = await Promise.all([
        new Deno.Command(Deno.execPath(), {
          args: ["run", "-A", "tests/fixtures/mpi_train.ts", `${dir}/one`, "8", "bn"],
          env: { MESA_SHADER_CACHE_DISABLE: "true" },
          stdout: "piped",
          stderr: "piped",
        }).output(),
        mpirun(2, ["tests/fixtures/mpi_train.ts", `${dir}/two`, "4", "bn"]),
      ]);
      assert.equal(one.code, 0, new TextDecoder().decode(one.stderr));
      assert.equal(two.code, 0, two.stderr);
      const diff = (two: string, one: string, file: string) =>
        relativeDifference(
          `${dir}/two/${two}/checkpoint-last/${file}`,
          `${dir}/one/${one}/checkpoint-last/${file}`,
        );
      // model.safetensors holds the BatchNorm running statistics beside the weights. The
      // optimiser's moments are gradients, which float32 sums in another order move more after
      // a dozen batch-norm backward passes (measured 1.8e-5); per-rank statistics move them ~1.
      for (
        const [file, tol] of [["model.safetensors", 1e-5], ["optimizer.safetensors", 1e-4]] as const
      ) {
        const d = await diff("sync", "sync", file);
        console.log(`sync-bn ${file}: relative difference ${d.toExponential(2)}`);
        assert.ok(d <= tol, `sync-bn ${file}: relative difference ${d}`);
      }
      // One process with --sync-bn is plain batch norm: the per-rank run of 2 ranks is not.
      const local = await diff("local", "sync", "model.safetensors");
      console.log(
        `per-rank BatchNorm model.safetensors: relative difference ${local.toExponential(2)}`,
      );
      assert.ok(local > 1e-3, `per-rank BatchNorm should differ, got ${local}`);
      const log = await Deno.readTextFile(`${dir}/two/sync/log.csv`);
      assert.equal(log.split("\n")[1].split(",")[1], "3", "3 optimiser steps");
      const ranks = two.stdout.split("\n").filter((l) => l.startsWith("{"))
        .map((l) => JSON.parse(l)).sort((a, b) => a.rank - b.rank);
      assert.equal(ranks.length, 2, two.stdout);
      // Every rank ends with the same weights and running statistics, bit for bit.
      assert.equal(ranks[1].finals.sync, ranks[0].finals.sync);
      // Without synchronisation the running statistics are each rank's own.
      assert.notEqual(ranks[1].finals.local, ranks[0].finals.local);
      const comm = await Deno.readTextFile(`${dir}/two/sync/comm.csv`);
      const rows = comm.trim().split("\n");
      assert.match(rows[0], /,bn_allreduce_ms$/);
      for (const row of rows.slice(1)) assert.ok(Number(row.split(",").at(-1)) > 0, row);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: `mpi: ranks started with different flags stop with one line each, writing nothing${suffix}`,
  ignore,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "lk_mpi_flags_" });
    try {
      const rank = (lr: string) => [
        "-np",
        "1",
        Deno.execPath(),
        "run",
        "-A",
        "train/main.ts",
        "--out",
        `${dir}/run`,
        "--lr",
        lr,
      ];
      const out = await new Deno.Command("mpirun", {
        args: ["--oversubscribe", ...rank("0.1"), ":", ...rank("0.2")],
        env: {
          OMPI_ALLOW_RUN_AS_ROOT: "1",
          OMPI_ALLOW_RUN_AS_ROOT_CONFIRM: "1",
          MESA_SHADER_CACHE_DISABLE: "true",
          NO_COLOR: "1",
        },
        stdout: "piped",
        stderr: "piped",
      }).output();
      const stderr = new TextDecoder().decode(out.stderr);
      assert.notEqual(out.code, 0);
      // (Mesa's software driver may add its own "error: XDG_RUNTIME_DIR …" lines.)
      const lines = stderr.split("\n").filter((l) =>
        l.startsWith("error: ") && !l.includes("XDG_")
      );
      assert.equal(lines.length, 2, stderr);
      for (const l of lines) {
        assert.match(l, /^error: ranks disagree on the flags: 1 of 2 ranks differ/);
      }
      assert.equal(await Deno.stat(`${dir}/run`).then(() => true, () => false), false);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
