/**
 * The WGSL generator of the tiled matrix-product kernel: one function,
 * {@linkcode gemmSource}, from a product (its shape, loaders and store) and a
 * small config object ({@linkcode GemmConfig}) to the kernel's source. Every
 * candidate that the planner times and `scripts/bench_gemm.ts --sweep`
 * sweeps is a configuration of this one generator; `gemm_kernel.ts` launches
 * what it builds.
 *
 * The kernel: a workgroup owns a `bm × bn` output tile. Per `bk`-deep step it
 * stages a `bm × bk` slab of A and a `bk × bn` slab of B in workgroup memory,
 * both k-major (`As[k][m]`, `Bs[k][n]`), so that in the inner loop one vec4
 * read of `As` gives 4 rows and one of `Bs` 4 columns of the same k, and
 * every invocation accumulates a `tm × tn` register block (one staged value
 * serves `tn` or `tm` multiply-adds). The blocks of neighbouring lanes
 * interleave in steps of 4, so the lanes of a warp read neighbouring vec4s
 * (no bank conflicts) or the same one (a broadcast). The config's switches:
 *
 * - `prefetch`: the next slabs are fetched from global memory into registers
 *   while the current ones are multiplied, so the loads' latency hides
 *   behind the arithmetic.
 * - `double`: two workgroup-memory buffers, one written while the other is
 *   read, so each step needs one barrier instead of two (implies prefetch).
 * - `vec`: global memory is read 4 elements at a time (one 16-byte load
 *   instead of four 4-byte ones: a quarter of the load instructions and
 *   address arithmetic) where the product offers vec4 addressing
 *   (`GemmSourceSpec.vecA` / `vecB`); else that operand stays scalar.
 * - `interior`: tiles wholly inside the product (and slabs wholly inside the
 *   k range) skip every bounds check of their loads and stores; only edge
 *   tiles run the checked code. The branch is uniform per workgroup.
 * - `unroll`: the `bk` steps of the inner loop are written out, so that the
 *   workgroup-memory offsets are constants and nothing counts the loop.
 * - `lanes`: the slabs are laid out by the invocation that reads them,
 *   `As[buffer][ty][k · tm/4 + i4]` (B by `tx`), so that with `unroll`
 *   every read of the inner loop indexes by the buffer, the lane and a
 *   constant. WebGPU bounds every array index that is not a constant (wgpu
 *   clamps it): a flat slab's reads each paid that clamp and the address
 *   arithmetic before it, these pay it once per buffer and lane. On an H100
 *   the same tiles ran 5–8% faster on SLaK-T's and ConvNeXt-T's products.
 * - `splits`: the inner dimension is cut into chunks of whole slabs, one per
 *   extra workgroup, for products with few output tiles and a long `k`
 *   (weight gradients); the partial products go to `part` and a second
 *   kernel (in `gemm_kernel.ts`) sums them.
 *
 * @example
 * ```ts
 * import { gemmSource } from "./gemm_source.ts";
 * const wgsl = gemmSource({
 *   batch: 1, m: 64, n: 64, k: 64, inputs: ["a", "b"], outputs: ["y"], written: 1,
 *   loadA: "return a[m * 64u + k];", aKFast: true,
 *   loadB: "return b[k * 64u + n];", bKFast: false,
 *   vecB: { input: "b", index: "k * 64u + n" },
 *   store: "y[m * 64u + n] = v;",
 * }, { bm: 32, bn: 32, bk: 8, tm: 4, tn: 4, vec: true, double: true, interior: true });
 * console.log(wgsl.includes("b_v4"), wgsl.includes("fn ldA4")); // true false
 * ```
 * @module
 */
import { storage } from "./kernel.ts";

/** Tile shape of one `gemm` launch. */
export interface GemmConfig {
  /** Output tile rows and columns per workgroup. */
  bm: number;
  bn: number;
  /** Inner-dimension depth staged per step. */
  bk: number;
  /**
   * Register block per invocation (rows × columns, multiples of 4); the workgroup is
   * (bm/tm)·(bn/tn) invocations.
   */
  tm: number;
  tn: number;
  /** Split the inner dimension over this many workgroups (default: chosen from the shape). */
  splits?: number;
  /**
   * Load the next `bk`-deep slabs from global memory into registers while the
   * current ones are multiplied (software pipelining: the loads' latency
   * hides behind the arithmetic instead of stalling the workgroup).
   */
  prefetch?: boolean;
  /** Read global memory as vec4s where the product offers vec4 addressing (needs `bk` % 4 = 0). */
  vec?: boolean;
  /** Two workgroup-memory buffers, one barrier per slab (implies `prefetch`). */
  double?: boolean;
  /** Tiles wholly inside the product load and store without bounds checks. */
  interior?: boolean;
  /** Write the `bk` steps of the inner loop out. */
  unroll?: boolean;
  /**
   * Lay the staged slabs out by the invocation that reads them (`[buffer][ty or tx][k, i4]`),
   * so that every workgroup-memory read of an unrolled inner loop has a constant last index.
   */
  lanes?: boolean;
}

/**
 * vec4 addressing of an operand: `index` is a WGSL expression of the element
 * index in input `input` of A(bt, m, k) (B(bt, n, k) for B), with unit
 * stride along the operand's fast axis (k when k-fast, else m or n). Offer
 * it only when the fast axis's extent is a multiple of 4 and the index of
 * every fast coordinate that is a multiple of 4 is one too: then every
 * group of 4 that starts at such a coordinate is one aligned vec4.
 */
export interface GemmVecOperand {
  input: string;
  index: string;
}

/**
 * A product as the generator sees it, by WGSL names: `out[bt, m, n] =
 * Σ_k A(bt, m, k) · B(bt, n, k)` (`GemmSpec` in `gemm_kernel.ts` is the same
 * with tensors in place of the names).
 */
export interface GemmSourceSpec {
  batch: number;
  m: number;
  n: number;
  k: number;
  /** Input names, bound first in this order (read-only). */
  inputs: string[];
  /** Output names, bound after the inputs and their vec4 views; the first `written` read-write. */
  outputs: string[];
  /** How many leading `outputs` the store writes; the rest are read-only. */
  written: number;
  /** WGSL body of `fn ldA(bt: u32, m: u32, k: u32) -> f32`; called with m < M, k < K only. */
  loadA: string;
  /** True when consecutive k are (mostly) adjacent in memory for A: decides the load order. */
  aKFast: boolean;
  /** WGSL body of `fn ldB(bt: u32, n: u32, k: u32) -> f32`; called with n < N, k < K only. */
  loadB: string;
  bKFast: boolean;
  /**
   * Optional vec4 addressing of A (see {@linkcode GemmVecOperand}): lets configs with `vec` read
   * 4 fast-axis elements in one load. Give it only when A's fast extent is a multiple of 4.
   */
  vecA?: GemmVecOperand;
  /** Optional vec4 addressing of B, as `vecA`. */
  vecB?: GemmVecOperand;
  /** WGSL body of `fn st(bt: u32, m: u32, n: u32, v: f32)`: where the value goes. */
  store: string;
  /** WGSL helpers the loaders or the store call (e.g. `erf_f32`). */
  prelude?: string;
}

/**
 * How `c` cuts an inner dimension of `k`: into `splits` chunks of `chunk`
 * (a multiple of `bk`, the last one shorter).
 *
 * @example
 * ```ts
 * import { kChunks } from "./gemm_source.ts";
 * console.log(kChunks({ bm: 8, bn: 8, bk: 4, tm: 4, tn: 4, splits: 3 }, 30)); // { chunk: 12, splits: 3 }
 * ```
 */
export function kChunks(c: GemmConfig, k: number): { chunk: number; splits: number } {
  const chunk = Math.ceil(Math.ceil(k / (c.splits ?? 1)) / c.bk) * c.bk;
  return { chunk, splits: Math.max(1, Math.ceil(k / Math.max(chunk, 1))) };
}

/**
 * The inputs that the kernel of `c` binds a second time as `array<vec4f>`
 * (named `<input>_v4`), in binding order: right after the inputs.
 *
 * @example
 * ```ts
 * import { vecViews } from "./gemm_source.ts";
 * const spec = { vecA: { input: "x", index: "m * 8u + k" }, vecB: { input: "x", index: "k" } };
 * console.log(vecViews(spec, { bm: 8, bn: 8, bk: 4, tm: 4, tn: 4, vec: true })); // ["x"]
 * ```
 */
export function vecViews(
  spec: Pick<GemmSourceSpec, "vecA" | "vecB">,
  c: GemmConfig,
): string[] {
  if (!c.vec) return [];
  return [...new Set([spec.vecA?.input, spec.vecB?.input].filter((s) => s !== undefined))];
}

/**
 * Storage declarations of `names` numbered from binding `first`, the first
 * `written` read-write (`name:type` gives an element type, as in
 * `storage()`).
 *
 * @example
 * ```ts
 * import { bindingsFrom } from "./gemm_source.ts";
 * console.log(bindingsFrom(["y"], 2, 1)); // @group(0) @binding(2) var<storage, read_write> y: array<f32>;
 * ```
 */
export function bindingsFrom(names: string[], first: number, written: number): string {
  return storage(...names.map((n, i) => (i < written ? `${n}!` : n))).replace(
    /@binding\((\d+)\)/g,
    (_, i) => `@binding(${Number(i) + first})`,
  );
}

/**
 * The lane-major layout of one operand's staged slab (config switch
 * `lanes`): `S[buffer][lane][inner]` of vec4s, where `lane` is the
 * invocation's `ty` (A) or `tx` (B) and `inner = k · perK + i4` walks the
 * `perK` vec4s (the register block's rows or columns, 4 at a time) that
 * this lane reads at each `k`. Rows `4·(i4·lanes + lane) … + 3` of the tile
 * sit at `[lane][k · perK + i4]`. `size` (the inner extent) is odd, so the
 * lanes' rows start in different banks.
 */
interface LaneLayout {
  /** Invocations along this operand's side of the tile (ty's count for A, tx's for B). */
  count: number;
  /** vec4s a lane reads per k (tm/4 or tn/4). */
  perK: number;
  /** Inner extent: bk · perK, made odd. */
  size: number;
}

/** The lane-major layout of an operand with `count` lanes, `perK` vec4s per k, `bk`-deep slabs. */
function laneLayout(count: number, perK: number, bk: number): LaneLayout {
  return { count, perK, size: (bk * perK) | 1 };
}

/**
 * WGSL `let`s of where element (`row`, `kk`) of a slab goes in a lane-major
 * layout: `lo<id>` the lane, `li<id>` the inner index, `lc<id>` the vec4
 * component.
 */
function laneAt(id: string, row: string, kk: string, l: LaneLayout): string {
  return `let lo${id} = ((${row}) / 4u) % ${l.count}u; let li${id} = (${kk}) * ${l.perK}u + ((${row}) / 4u) / ${l.count}u; let lc${id} = (${row}) % 4u;`;
}

/**
 * Bytes of workgroup memory the staged slabs of config `c` take at most:
 * k-major rows padded by 4 floats (a product that stores an operand k-fast;
 * the others take 16 bytes less per k-row), or lane-major rows of odd
 * length ({@linkcode LaneLayout}), twice when double-buffered. The tile
 * checks (`isGemmConfig`) hold it against the adapter's limit.
 *
 * @example
 * ```ts
 * import { slabBytes } from "./gemm_source.ts";
 * console.log(slabBytes({ bm: 8, bn: 8, bk: 4, tm: 4, tn: 4 })); // 384
 * ```
 */
export function slabBytes(c: GemmConfig): number {
  const lane = (count: number, perK: number) => {
    const l = laneLayout(count, perK, c.bk);
    return 16 * l.count * l.size;
  };
  const one = c.lanes
    ? lane(c.bm / c.tm, c.tm / 4) + lane(c.bn / c.tn, c.tn / 4)
    : 4 * c.bk * (c.bm + 4 + c.bn + 4);
  return one * (c.double ? 2 : 1);
}

/** The inner index of vec4 `i4` at k = `kk` (a WGSL u32: a literal when the loop is unrolled). */
function laneIndex(kk: string, perK: number, i4: number): string {
  const k = /^\d+u$/.test(kk) ? Number(kk.slice(0, -1)) : null;
  return k === null ? `${kk} * ${perK}u + ${i4}u` : `${k * perK + i4}u`;
}

/** The workgroup-memory declaration of a slab: flat k-major vec4s, or lane-major. */
function slabDecl(name: string, l: LaneLayout | undefined, flat: number, buffers: number): string {
  return l
    ? `var<workgroup> ${name}: array<array<array<vec4f, ${l.size}>, ${l.count}>, ${buffers}>;`
    : `var<workgroup> ${name}: array<vec4f, ${flat * buffers}>;`;
}

/** One operand's slab: per-invocation setup, and the WGSL of fetching and of staging it. */
interface Slab {
  decl: string;
  /** Global memory → registers for the slab starting at `kf` (a WGSL `let` in scope). */
  fetch(checked: boolean): string;
  /** Registers → workgroup memory at vec4 offset `buf`. */
  put(buf: string): string;
}

/**
 * The loads of one operand's `rows × bk` slab, spread over `threads`
 * invocations. Which element (or vec4) an invocation moves depends on its
 * index only, so the split into (row, k) and the workgroup-memory address
 * are computed once, outside the k loop. The fast axis goes to neighbouring
 * lanes, so their global reads are adjacent.
 */
function slab(
  which: "A" | "B",
  o: {
    rows: number;
    stride: number;
    kFast: boolean;
    limit: number;
    vec: boolean;
    lanes?: LaneLayout;
  },
  bk: number,
  threads: number,
): Slab {
  const { rows, stride, kFast, limit, vec, lanes } = o;
  const r = which === "A" ? "m" : "n";
  const S = `${which}s`;
  const units = (rows * bk) / (vec ? 4 : 1);
  const per = Math.ceil(units / threads);
  const decl: string[] = [];
  const fetches: [string, string][] = [];
  const puts: string[] = [];
  const zero = vec ? "vec4f(0.0)" : "0.0";
  const ld = vec ? `ld${which}4` : `ld${which}`;
  for (let q = 0; q < per; q++) {
    const e = `li + ${q * threads}u`;
    const id = `${which}${q}`;
    // The last round of a slab that does not divide evenly leaves some invocations idle.
    const live = (q + 1) * threads > units ? `${e} < ${units}u` : "";
    const when = (cond: string) => (cond ? `if (${cond}) ` : "");
    // (row, k) of the first element this invocation moves.
    let row: string;
    let kk: string;
    if (!vec) {
      [row, kk] = kFast ? [`(${e}) / ${bk}u`, `(${e}) % ${bk}u`] : [
        `(${e}) % ${rows}u`,
        `(${e}) / ${rows}u`,
      ];
      if (lanes) {
        decl.push(laneAt(id, row, kk, lanes));
        puts.push(`${when(live)}{ ${S}[buf][lo${id}][li${id}][lc${id}] = r${id}; }`);
      } else {
        decl.push(`let at${id} = (${kk}) * ${stride}u + ${row};`);
        puts.push(`${when(live)}{ ${S}[buf + at${id} / 4u][at${id} % 4u] = r${id}; }`);
      }
    } else if (kFast) {
      // 4 consecutive k of one row: staged as 4 scalars of 4 k-rows of the slab.
      [row, kk] = [`(${e}) / ${bk / 4}u`, `((${e}) % ${bk / 4}u) * 4u`];
      const C = ["x", "y", "z", "w"];
      let four: string[];
      if (lanes) {
        decl.push(laneAt(id, row, kk, lanes));
        four = C.map((c, j) =>
          `${S}[buf][lo${id}][li${id} + ${j * lanes.perK}u][lc${id}] = r${id}.${c};`
        );
      } else {
        decl.push(`let at${id} = (${kk}) * ${stride}u + ${row};`);
        four = C.map((c, j) => {
          const at = `at${id} + ${j * stride}u`;
          return `${S}[buf + (${at}) / 4u][(${at}) % 4u] = r${id}.${c};`;
        });
      }
      puts.push(`${when(live)}{ ${four.join(" ")} }`);
    } else {
      // 4 consecutive rows of one k: one vec4 of the k-major slab as it is.
      [row, kk] = [`((${e}) % ${rows / 4}u) * 4u`, `(${e}) / ${rows / 4}u`];
      if (lanes) {
        decl.push(laneAt(id, row, kk, lanes));
        puts.push(`${when(live)}{ ${S}[buf][lo${id}][li${id}] = r${id}; }`);
      } else {
        decl.push(`let at${id} = ((${kk}) * ${stride}u + ${row}) / 4u;`);
        puts.push(`${when(live)}{ ${S}[buf + at${id}] = r${id}; }`);
      }
    }
    decl.push(`let rr${id} = ${row}; let kk${id} = ${kk}; var r${id} = ${zero};`);
    const g = `${r}0 + rr${id}`;
    const gk = `kf + kk${id}`;
    // With vec addressing every group of 4 starts at a multiple of 4 of an extent that is one, and
    // chunks are whole slabs of a multiple of 4: the group is in range iff its first element is.
    fetches.push([
      `r${id} = ${zero}; { let gr = ${g}; let gk = ${gk};
      ${
        when([live, `gr < ${limit}u`, "gk < kEnd"].filter(Boolean).join(" && "))
      }{ r${id} = ${ld}(bt, gr, gk); } }`,
      `${when(live)}{ r${id} = ${ld}(bt, ${g}, ${gk}); }`,
    ]);
  }
  return {
    decl: decl.join("\n  "),
    fetch: (checked) => fetches.map(([c, u]) => (checked ? c : u)).join("\n      "),
    put: (buf) => `{ let buf = ${buf};\n    ${puts.join("\n    ")} }`,
  };
}

/**
 * The WGSL of the tiled kernel of `spec` under `c` (see the module
 * documentation). Bindings: the inputs, then the vec4 views of
 * {@linkcode vecViews}, then the outputs, or a single read-write `part`
 * (`splits · batch · m · n` partial sums, split-major) when `c` splits `k`.
 *
 * @example
 * ```ts
 * import { gemmSource } from "./gemm_source.ts";
 * const wgsl = gemmSource({
 *   batch: 1, m: 8, n: 8, k: 8, inputs: ["a"], outputs: ["y"], written: 1,
 *   loadA: "return a[m * 8u + k];", aKFast: true, loadB: "return a[k * 8u + n];", bKFast: false,
 *   store: "y[m * 8u + n] = v;",
 * }, { bm: 8, bn: 8, bk: 4, tm: 4, tn: 4 });
 * console.log(wgsl.includes("@workgroup_size(4)")); // true
 * ```
 */
export function gemmSource(spec: GemmSourceSpec, c: GemmConfig): string {
  const { batch, m, n, k } = spec;
  const { bm, bn, bk, tm, tn } = c;
  const tx = bn / tn;
  const ty = bm / tm;
  const threads = tx * ty;
  const { chunk, splits } = kChunks(c, k);
  const partial = splits > 1;
  const tilesM = Math.ceil(m / bm);
  const tilesN = Math.ceil(n / bn);
  const total = tilesM * tilesN * batch * splits;
  const double = c.double === true;
  const prefetch = double || c.prefetch === true;
  const vecA = c.vec ? spec.vecA : undefined;
  const vecB = c.vec ? spec.vecB : undefined;
  // k-major slabs; rows stored k-fast are padded by 4 floats so that the 8 lanes of a k-fast
  // store that share a row land in distinct banks.
  const sa = bm + (spec.aKFast ? 4 : 0);
  const sb = bn + (spec.bKFast ? 4 : 0);
  const slabA = (bk * sa) / 4;
  const slabB = (bk * sb) / 4;
  // Lane-major slabs: every read of the inner loop is [buffer][ty or tx][constant].
  const laneA = c.lanes ? laneLayout(ty, tm / 4, bk) : undefined;
  const laneB = c.lanes ? laneLayout(tx, tn / 4, bk) : undefined;
  const A = slab(
    "A",
    { rows: bm, stride: sa, kFast: spec.aKFast, limit: m, vec: !!vecA, lanes: laneA },
    bk,
    threads,
  );
  const B = slab(
    "B",
    { rows: bn, stride: sb, kFast: spec.bKFast, limit: n, vec: !!vecB, lanes: laneB },
    bk,
    threads,
  );
  // Where buffer `b` (0 or 1, a WGSL u32) of each operand starts: a vec4 offset, or for
  // lane-major slabs the buffer index itself.
  const bufA = (b: string) => (laneA ? b : b === "0u" ? "0u" : `(${b}) * ${slabA}u`);
  const bufB = (b: string) => (laneB ? b : b === "0u" ? "0u" : `(${b}) * ${slabB}u`);
  const interior = c.interior === true;
  // Interior slabs (the tile inside the product, the slab inside the chunk) load unchecked.
  const fetchAt = (kf: string) => {
    const checked = `${A.fetch(true)}\n      ${B.fetch(true)}`;
    if (!interior) return `{ let kf = ${kf};\n      ${checked} }`;
    return `{ let kf = ${kf};
    if (inside && kf + ${bk}u <= kEnd) {
      ${A.fetch(false)}
      ${B.fetch(false)}
    } else {
      ${checked}
    } }`;
  };
  const put = (bufA: string, bufB: string) => `${A.put(bufA)}\n    ${B.put(bufB)}`;

  // The inner loop over the slab's k: per k, tm/4 vec4s of As and tn/4 of Bs, tm·tn/4 vec4 FMAs.
  const C = ["x", "y", "z", "w"];
  const fmas: string[] = [];
  for (let i = 0; i < tm; i++) {
    for (let j4 = 0; j4 < tn / 4; j4++) {
      fmas.push(`c${i}_${j4} = fma(vec4f(a${i >> 2}.${C[i & 3]}), b${j4}, c${i}_${j4});`);
    }
  }
  const readA = (kk: string, i4: number) =>
    laneA
      ? `As[aBuf][ty][${laneIndex(kk, laneA.perK, i4)}]`
      : `As[aBuf + ${kk} * ${sa / 4}u + ${i4 * ty}u + ty]`;
  const readB = (kk: string, j4: number) =>
    laneB
      ? `Bs[bBuf][tx][${laneIndex(kk, laneB.perK, j4)}]`
      : `Bs[bBuf + ${kk} * ${sb / 4}u + ${j4 * tx}u + tx]`;
  const step = (kk: string) =>
    `{ ${Array.from({ length: tm / 4 }, (_, i4) => `let a${i4} = ${readA(kk, i4)};`).join(" ")}
      ${Array.from({ length: tn / 4 }, (_, j4) => `let b${j4} = ${readB(kk, j4)};`).join(" ")}
      ${fmas.join("\n      ")} }`;
  const multiply = (bufA: string, bufB: string) =>
    `{ let aBuf = ${bufA}; let bBuf = ${bufB};
    ${
      c.unroll
        ? Array.from({ length: bk }, (_, kk) => step(`${kk}u`)).join("\n    ")
        : `for (var kk = 0u; kk < ${bk}u; kk++) ${step("kk")}`
    } }`;

  let loop: string;
  if (double) {
    // One barrier per slab: slab s is read from buffer s % 2 while slab s + 1 is written to the
    // other; the barrier that ends step s orders both the reads of s before step s + 1 overwrites
    // that buffer, and the writes of s + 1 before step s + 1 reads them.
    loop = `${fetchAt("kBegin")}
  ${put(bufA("0u"), bufB("0u"))}
  workgroupBarrier();
  var cur = 0u;
  for (var k0 = kBegin; k0 < kEnd; k0 += ${bk}u) {
    let more = k0 + ${bk}u < kEnd;
    if (more) ${fetchAt(`k0 + ${bk}u`)}
    ${multiply(bufA("cur"), bufB("cur"))}
    if (more) {
    ${put(bufA("1u - cur"), bufB("1u - cur"))}
    }
    workgroupBarrier();
    cur = 1u - cur;
  }`;
  } else if (prefetch) {
    loop = `${fetchAt("kBegin")}
  for (var k0 = kBegin; k0 < kEnd; k0 += ${bk}u) {
    ${put("0u", "0u")}
    workgroupBarrier();
    if (k0 + ${bk}u < kEnd) ${fetchAt(`k0 + ${bk}u`)}
    ${multiply("0u", "0u")}
    workgroupBarrier();
  }`;
  } else {
    loop = `for (var k0 = kBegin; k0 < kEnd; k0 += ${bk}u) {
    ${fetchAt("k0")}
    ${put("0u", "0u")}
    workgroupBarrier();
    ${multiply("0u", "0u")}
    workgroupBarrier();
  }`;
  }

  // Register block → output: rows (i4·ty + ty)·4 + r, columns (j4·tx + tx)·4 + s.
  const mn = m * n;
  const accs: string[] = [];
  const checkedStores: string[] = [];
  const freeStores: string[] = [];
  for (let i = 0; i < tm; i++) {
    for (let j4 = 0; j4 < tn / 4; j4++) {
      accs.push(`var c${i}_${j4} = vec4f(0.0);`);
      const put1 = (q: number) =>
        partial
          ? `part[(ks * ${batch}u + bt) * ${mn}u + row * ${n}u + col + ${q}u] = c${i}_${j4}.${
            C[q]
          };`
          : `st(bt, row, col + ${q}u, c${i}_${j4}.${C[q]});`;
      const at = `let row = m0 + (${(i >> 2) * ty}u + ty) * 4u + ${i & 3}u; let col = n0 + (${
        j4 * tx
      }u + tx) * 4u;`;
      checkedStores.push(`{ ${at}
    if (row < ${m}u) { ${
        [0, 1, 2, 3].map((q) => `if (col + ${q}u < ${n}u) { ${put1(q)} }`).join(" ")
      } } }`);
      freeStores.push(`{ ${at} ${[0, 1, 2, 3].map(put1).join(" ")} }`);
    }
  }
  const stores = interior
    ? `if (inside) {
    ${freeStores.join("\n    ")}
  } else {
    ${checkedStores.join("\n    ")}
  }`
    : checkedStores.join("\n  ");

  const views = vecViews(spec, c);
  const ld4 = (which: "A" | "B", v: GemmVecOperand | undefined) =>
    v
      ? `fn ld${which}4(bt: u32, ${
        which === "A" ? "m" : "n"
      }: u32, k: u32) -> vec4f { return ${v.input}_v4[(${v.index}) / 4u]; }`
      : "";
  return `${storage(...spec.inputs)}
${bindingsFrom(views.map((v) => `${v}_v4:vec4f`), spec.inputs.length, 0)}
${
    bindingsFrom(
      partial ? ["part"] : spec.outputs,
      spec.inputs.length + views.length,
      partial ? 1 : spec.written,
    )
  }
${spec.prelude ?? ""}
fn ldA(bt: u32, m: u32, k: u32) -> f32 { ${spec.loadA} }
fn ldB(bt: u32, n: u32, k: u32) -> f32 { ${spec.loadB} }
${ld4("A", vecA)}
${ld4("B", vecB)}
${partial ? "" : `fn st(bt: u32, m: u32, n: u32, v: f32) { ${spec.store} }`}
${slabDecl("As", laneA, slabA, double ? 2 : 1)}
${slabDecl("Bs", laneB, slabB, double ? 2 : 1)}
@compute @workgroup_size(${threads})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) li: u32) {
  // With vec4 loads a scalar binding may go unread, and an unread binding drops out of the
  // pipeline's layout: keep every input in it (arrayLength reads no memory).
  ${spec.inputs.map((name) => `_ = arrayLength(&${name});`).join(" ")}
  let g = wid.x + wid.y * nwg.x;
  if (g >= ${total}u) { return; }
  let m0 = ((g / ${tilesN}u) % ${tilesM}u) * ${bm}u;
  let n0 = (g % ${tilesN}u) * ${bn}u;
  let rest = g / ${tilesN * tilesM}u;
  let bt = rest % ${batch}u;
  let ks = rest / ${batch}u;
  let kBegin = ks * ${chunk}u;
  let kEnd = min(kBegin + ${chunk}u, ${k}u);
  let tx = li % ${tx}u;
  let ty = li / ${tx}u;
  ${interior ? `let inside = m0 + ${bm}u <= ${m}u && n0 + ${bn}u <= ${n}u;` : ""}
  ${accs.join(" ")}
  ${A.decl}
  ${B.decl}
  ${loop}
  ${stores}
}`;
}
