/**
 * Bind groups that outlive a dispatch: the layout of a kernel's bindings read
 * off its WGSL, and a bounded cache of bind groups keyed by the kernel and
 * the identities of the buffers bound.
 *
 * Creating a bind group was the largest CPU cost of recording a dispatch
 * (about 45% of recording a training step on llvmpipe), yet a training step
 * binds the same buffers to the same kernels step after step: the tensor
 * pool hands out the same buffers. Buffers are keyed by object identity, so
 * a cached group can only be served for the very buffers it was made from;
 * a buffer that is destroyed and replaced by a new one, even of the same size
 * in the same pool slot, is another key. Uniform blocks are bound with a dynamic
 * offset into a persistent uniform arena, so values that change every step
 * do not change the group.
 *
 * @example
 * ```ts
 * import { bindingLayout } from "./bind_groups.ts";
 * const code = `@group(0) @binding(0) var<storage, read> x: array<f32>;
 * @group(0) @binding(1) var<storage, read_write> y: array<f32>;
 * @group(0) @binding(2) var<uniform> P: vec4f;`;
 * console.log(bindingLayout(code, 0, 3)?.map((e) => e.buffer?.type)); // ["read-only-storage", "storage", "uniform"]
 * ```
 * @module
 */

/** `@group(G) @binding(B) var<ADDRESS_SPACE[, ACCESS]>`: every buffer declaration. */
const DECLARATION =
  /@group\(\s*(\d+)\s*\)\s*@binding\(\s*(\d+)\s*\)\s*var\s*<\s*(\w+)\s*(?:,\s*(\w+)\s*)?>/g;

/**
 * The bind group layout entries of `group` in WGSL `source`, bindings
 * `0…count-1` (every declared binding of the group when `count` is
 * undefined), uniforms with a dynamic offset. Null when one of them is not a
 * buffer declared in the source: the caller then lets WebGPU derive the
 * layout.
 *
 * @example
 * ```ts
 * import { bindingLayout } from "./bind_groups.ts";
 * const code = "@group(1) @binding(0) var<storage, read_write> c: array<u32>;";
 * console.log(bindingLayout(code, 1)?.length, bindingLayout(code, 0, 1)); // 1 null
 * ```
 */
export function bindingLayout(
  source: string,
  group: number,
  count?: number,
): GPUBindGroupLayoutEntry[] | null {
  const types = new Map<number, GPUBufferBindingType>();
  for (const [, g, b, space, access] of source.matchAll(DECLARATION)) {
    if (Number(g) !== group) continue;
    if (space === "uniform") types.set(Number(b), "uniform");
    else if (space === "storage") {
      types.set(Number(b), access === "read_write" ? "storage" : "read-only-storage");
    } else return null;
  }
  const n = count ?? (types.size ? Math.max(...types.keys()) + 1 : 0);
  const entries: GPUBindGroupLayoutEntry[] = [];
  for (let binding = 0; binding < n; binding++) {
    const type = types.get(binding);
    if (!type) return null;
    entries.push({
      binding,
      visibility: GPUShaderStage.COMPUTE,
      buffer: type === "uniform" ? { type, hasDynamicOffset: true } : { type },
    });
  }
  return entries;
}

/**
 * The bind group layouts of a pipeline running WGSL `source`, one per group
 * from 0 to the highest declared: group 0 holds the `bindings` that
 * dispatches bind (see {@linkcode bindingLayout}), other groups every binding
 * they declare. Null when a binding is not a buffer declared in the source.
 *
 * @example
 * ```ts
 * import { pipelineLayout } from "./bind_groups.ts";
 * const code = `@group(0) @binding(0) var<storage, read_write> y: array<f32>;
 * @group(1) @binding(0) var<storage, read_write> c: array<u32>;`;
 * console.log(pipelineLayout(code, 1)?.map((g) => g.length)); // [1, 1]
 * ```
 */
export function pipelineLayout(
  source: string,
  bindings: number,
): GPUBindGroupLayoutEntry[][] | null {
  let groups = 1;
  for (const [, g] of source.matchAll(DECLARATION)) groups = Math.max(groups, Number(g) + 1);
  const layout: GPUBindGroupLayoutEntry[][] = [];
  for (let g = 0; g < groups; g++) {
    const entries = bindingLayout(source, g, g === 0 ? bindings : undefined);
    if (!entries) return null;
    layout.push(entries);
  }
  return layout;
}

/** Entries a {@linkcode BindGroupCache} holds by default: several training steps' worth. */
export const BIND_GROUP_CACHE_ENTRIES = 16384;

/** One level of the cache's tree: kernel → buffer → … → uniform buffer → uniform bytes → group. */
type Level = Map<unknown, unknown>;

/** Where a level keeps its group. */
const GROUP = Symbol("group");

/**
 * Bind groups by kernel and bound buffers, at most `capacity` of them (when
 * full, it starts over empty: cheaper than tracking recency on every hit, and
 * a step's working set is far below the default capacity). A lookup walks a
 * tree of maps keyed by the buffer objects themselves, one level per binding:
 * identity hashes, no key strings to build and hash per dispatch.
 *
 * @example
 * ```ts
 * import { BindGroupCache } from "./bind_groups.ts";
 * const cache = new BindGroupCache(2);
 * const [a, b] = [{}, {}] as unknown as GPUBuffer[];
 * cache.set(1, [a, b], null, 0, { label: "ab" } as GPUBindGroup);
 * console.log(cache.get(1, [a, b], null, 0)?.label, cache.get(1, [b, a], null, 0)); // ab undefined
 * ```
 */
export class BindGroupCache {
  readonly capacity: number;
  #root: Level = new Map();
  #size = 0;
  /** For each bound buffer, the levels where it is a key (its groups live below them). */
  #parents = new Map<GPUBuffer, Set<Level>>();
  /** Levels cut off by {@linkcode forget}: their groups are no longer counted. */
  #detached = new WeakSet<Level>();
  /** Lookups that found a group, and ones that did not (tests and statistics). */
  hits = 0;
  misses = 0;

  constructor(capacity: number = BIND_GROUP_CACHE_ENTRIES) {
    this.capacity = capacity;
  }

  /** Groups held now. */
  get size(): number {
    return this.#size;
  }

  /**
   * The group of `kernel` (a number per pipeline) binding `buffers` in order,
   * then `uniforms` (a buffer bound at a dynamic offset) if any,
   * `uniformBytes` wide; undefined when none is held.
   */
  get(
    kernel: number,
    buffers: readonly GPUBuffer[],
    uniforms: GPUBuffer | null,
    uniformBytes: number,
  ): GPUBindGroup | undefined {
    let level = this.#root.get(kernel) as Level | undefined;
    for (let i = 0; level && i < buffers.length; i++) level = level.get(buffers[i]) as Level;
    if (level && uniforms) level = (level.get(uniforms) as Level)?.get(uniformBytes) as Level;
    const group = level?.get(GROUP) as GPUBindGroup | undefined;
    if (group) this.hits++;
    else this.misses++;
    return group;
  }

  /** Hold `group` as the one of `kernel` binding `buffers` (and `uniforms`), see {@linkcode get}. */
  set(
    kernel: number,
    buffers: readonly GPUBuffer[],
    uniforms: GPUBuffer | null,
    uniformBytes: number,
    group: GPUBindGroup,
  ): void {
    if (this.#size >= this.capacity) this.clear();
    const keys: unknown[] = [kernel, ...buffers];
    if (uniforms) keys.push(uniforms, uniformBytes);
    let level = this.#root;
    for (const [i, key] of keys.entries()) {
      let next = level.get(key) as Level | undefined;
      if (!next) {
        level.set(key, next = new Map());
        if (i > 0 && typeof key === "object") {
          let parents = this.#parents.get(key as GPUBuffer);
          if (!parents) this.#parents.set(key as GPUBuffer, parents = new Set());
          parents.add(level);
        }
      }
      level = next;
    }
    if (!level.has(GROUP)) this.#size++;
    level.set(GROUP, group);
  }

  /**
   * `buffer` is being destroyed: drop the groups that bind it (a destroyed
   * buffer is never bound again, so they could not be served anyway). Only
   * those go: the pool returns a few buffers to the driver in a steady step,
   * and every other group stays valid.
   */
  forget(buffer: GPUBuffer): void {
    const parents = this.#parents.get(buffer);
    if (!parents) return;
    this.#parents.delete(buffer);
    for (const level of parents) {
      const below = level.get(buffer) as Level | undefined;
      if (!below || this.#detached.has(level)) continue;
      level.delete(buffer);
      this.#size -= this.#detach(below);
    }
  }

  /** Mark every level under `level` (itself included) cut off; the number of groups in it. */
  #detach(level: Level): number {
    this.#detached.add(level);
    let groups = level.has(GROUP) ? 1 : 0;
    for (const [key, next] of level) if (key !== GROUP) groups += this.#detach(next as Level);
    return groups;
  }

  /** Drop every group. */
  clear(): void {
    this.#root = new Map();
    this.#size = 0;
    this.#parents = new Map();
    this.#detached = new WeakSet();
  }
}
