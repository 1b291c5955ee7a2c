/**
 * The WebGPU device, the command recorder and the kernel cache.
 *
 * One lazily created `GPUDevice` serves the whole process. Ops record
 * dispatches into one open compute pass; nothing reaches the queue until a
 * sync point (`flush()`, a read-back), so a training step is a handful of
 * submits, not one per op.
 *
 * @example
 * ```ts
 * import { initGpu, gpu } from "./gpu.ts";
 * await initGpu();
 * console.log(gpu().description, gpu().isFallback);
 * ```
 * @module
 */

import {
  checkWorkgroupBounds,
  WORKGROUP_CHECK_BYTES,
  WORKGROUP_CHECK_GROUP,
  workgroupCheckRequested,
} from "./workgroup_check.ts";
import {
  type DispatchFacts,
  type KernelInfo,
  launchSite,
  shaderDumpFile,
  shaderDumpRequested,
  writeShaderDump,
} from "./wgsl_dump.ts";
import { callerSite, GpuDeviceLostError, GpuErrorWatch, GpuOpError } from "./gpu_errors.ts";
import { type HostBuffer, type HostStepFn, QueueOrder } from "./queue_order.ts";
import { BindGroupCache, pipelineLayout } from "./bind_groups.ts";

export { GpuDeviceLostError, GpuOpError };
export type { HostBuffer, HostStepFn };

/**
 * Thrown when no WebGPU implementation or no adapter is available.
 *
 * @example
 * ```ts
 * import { createGpu, GpuUnavailableError } from "./gpu.ts";
 * try {
 *   await createGpu({ gpu: undefined }); // a runtime without WebGPU
 * } catch (e) {
 *   console.log(e instanceof GpuUnavailableError); // true
 * }
 * ```
 */
export class GpuUnavailableError extends Error {
  override name = "GpuUnavailableError";
}

/**
 * Submit on our own after this many recorded dispatches, so the GPU starts on
 * a step while the CPU still records the rest of it (recording a ConvNeXt-T
 * training step took 111 ms of CPU on the H100 machine, longer than a third
 * of the step; with one submit per step the GPU sat idle meanwhile).
 */
const AUTO_FLUSH_DISPATCHES = 256;

/**
 * The first submit after a sync comes sooner: until then the GPU has nothing
 * to do, so every dispatch recorded before it is pure lag (256 dispatches are
 * ~13 ms of recording, 7% of a ConvNeXt-T training step on the H100).
 */
const FIRST_FLUSH_DISPATCHES = 32;
/** Bytes of one uniform arena (256 dispatches at the usual 256-byte offset alignment). */
const UNIFORM_ARENA_BYTES = 1 << 16;

/** A compiled kernel and what recording a dispatch of it needs. */
interface Kernel {
  pipeline: GPUComputePipeline;
  /** A number of its own, for bind group keys. */
  id: number;
  /** Layout of group 0; derived by WebGPU at the first dispatch when the source was not understood. */
  layout: GPUBindGroupLayout | null;
  /** True when its uniform block (if any) is bound at a dynamic offset (an explicit layout). */
  dynamicUniforms: boolean;
  /** The workgroup-check bind group, when its source was instrumented. */
  checkGroup: GPUBindGroup | null;
}

/** An arena: a persistent buffer and its bytes, written before each submit that uses them. */
interface Arena {
  buffer: GPUBuffer;
  bytes: Uint8Array<ArrayBuffer>;
  used: number;
}

/** The arenas of one use (uniform blocks, or uploads), and the one being filled. */
interface ArenaSet {
  list: Arena[];
  index: number;
  usage: number;
}

/**
 * Uploads up to this many bytes go through an upload arena (see
 * `Gpu.upload`); larger ones (weights at start-up) are written by the queue
 * after the work recorded before them is submitted.
 */
const UPLOAD_SLOT_MAX = 1 << 16;
/** Bytes of one upload arena. */
const UPLOAD_ARENA_BYTES = 1 << 18;

/** Features we use when the adapter offers them; nothing depends on them. */
const OPTIONAL_FEATURES = ["timestamp-query", "shader-f16", "subgroups"] as const;

/** Limits we raise to the adapter's maximum: large kernels need big buffers and workgroups. */
const MAX_LIMITS = [
  "maxStorageBufferBindingSize",
  "maxBufferSize",
  "maxComputeWorkgroupStorageSize",
  "maxComputeInvocationsPerWorkgroup",
  "maxComputeWorkgroupSizeX",
  "maxComputeWorkgroupSizeY",
  "maxComputeWorkgroupSizeZ",
  "maxStorageBuffersPerShaderStage",
  "maxComputeWorkgroupsPerDimension",
] as const;

const INSTALL_HINT = "install a GPU driver with Vulkan support, or Mesa's software renderer " +
  "(Debian/Ubuntu: apt-get install mesa-vulkan-drivers libegl1)";

/**
 * The process-wide GPU context: device, adapter facts, recorder and caches.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * const g = await initGpu();
 * console.log(g.description, g.isFallback, g.limits.maxComputeWorkgroupSizeX);
 * ```
 */
export class Gpu {
  readonly device: GPUDevice;
  /** Adapter description, e.g. "NVIDIA H100 80GB HBM3" or "llvmpipe (LLVM 15…)". */
  readonly description: string;
  /**
   * The adapter's identity as the driver reports it: what kernel plans are
   * keyed by, since a plan timed on one GPU or driver says nothing about another.
   */
  readonly adapter: { vendor: string; architecture: string; description: string };
  /** True on a software adapter (llvmpipe): presets and benchmarks shrink. */
  readonly isFallback: boolean;
  readonly features: ReadonlySet<string>;
  readonly limits: GPUSupportedLimits;
  #encoder: GPUCommandEncoder | null = null;
  #pass: GPUComputePassEncoder | null = null;
  /** The pipeline last set on `#pass` (setting it again for the next dispatch is skipped). */
  #passPipeline: GPUComputePipeline | null = null;
  /** `limits.maxComputeWorkgroupsPerDimension`, read once (each read of a limit is a call). */
  readonly maxWorkgroupsPerDimension: number;
  #kernels = new Map<string, Kernel>();
  /** Bind groups by kernel and buffers, reused step after step (see bind_groups.ts). */
  readonly bindGroups: BindGroupCache = new BindGroupCache();
  /** The dynamic offset of the uniform block being bound (reused: no array per dispatch). */
  readonly #offsets = new Uint32Array(1);
  /** Error scopes of fallible calls, thrown at sync points (see gpu_errors.ts). */
  readonly errors: GpuErrorWatch;
  /** Queue work waiting behind host steps, drained in recording order (see queue_order.ts). */
  readonly #order: QueueOrder;
  /** The op that compiled each pipeline, to name it when a later submit fails. */
  #sites = new Map<GPUComputePipeline, string>();
  /**
   * While true, {@linkcode Gpu.dispatch} compiles and records nothing: the
   * planner collects the kernel keys of a step so (they are looked up on the
   * CPU as ops record; running the step, and compiling every kernel of it, is
   * not needed to learn them). Allocations and uploads happen as usual.
   */
  skipDispatches = false;
  /** Inside {@linkcode Gpu.precompile}: dispatches compile their kernel and record nothing. */
  #precompiling = false;
  /** Kernels compiled so far (their ids). */
  #compiles = 0;
  /**
   * Called with each dispatch instead of recording it: the hook records it by
   * calling `record` (once), e.g. inside {@linkcode timedPass}; `name` is the
   * launcher's kernel name, else the op that compiled the kernel, and `kernel`
   * what the launcher passed. `ops/kernel_profile.ts` times each dispatch so.
   */
  dispatchHook:
    | ((name: string, kernel: KernelInfo | undefined, record: () => void) => void)
    | null = null;
  #inHook = false;
  /** The last dispatch recorded: its op and workgroups, to name a failed submit. */
  #lastPipeline: GPUComputePipeline | null = null;
  #lastWorkgroups: readonly number[] = [];
  /**
   * Uniform arenas: every dispatch's uniform block goes to an aligned slot of
   * one (a buffer per dispatch cost more than the dispatch itself), bound at
   * a dynamic offset. They are kept: each submit writes the arenas it filled
   * (the set's `index` and those before) just before itself, so the same buffers,
   * and hence the same bind groups, serve every step; the queue runs writes
   * and submits in order, so a submit still reads its own values.
   */
  #uniformArenas: ArenaSet = {
    list: [],
    index: 0,
    usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
  };
  /**
   * Upload arenas: small uploads (labels, drop-path masks: a dozen or more a
   * step) are copied from a slot of one, written before the submit as the
   * uniform arenas are. A staging buffer per upload cost a buffer creation
   * and destruction each, which on the H100 were most of a step's recording.
   */
  #uploadArenas: ArenaSet = {
    list: [],
    index: 0,
    usage: GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST,
  };
  /** Buffers to destroy once the work recorded so far has been submitted. */
  #afterSubmit: GPUBuffer[] = [];
  /** Dispatches recorded since the last submit (for tests and statistics). */
  dispatchesSinceSubmit = 0;
  /** Dispatches recorded so far (benchmarks count a step's). */
  dispatches = 0;
  /** Submits so far (tests check that ops do not submit per call). */
  submits = 0;
  /** True from a sync until the next submit: the GPU is waiting for work. */
  #idle = true;
  /**
   * Workgroup-memory bounds checking (`LARGEKERNEL_CHECK_WORKGROUP=1`, see
   * workgroup_check.ts): the counter buffer, the bind group of each checked
   * pipeline, and the sources by kernel id for the error message.
   */
  #wgCheck: {
    counter: GPUBuffer;
    sources: string[];
  } | null = null;
  /** Folder that every compiled kernel is written to (`LARGEKERNEL_DUMP_WGSL`, see wgsl_dump.ts). */
  readonly dumpWgsl: string | null;

  constructor(
    device: GPUDevice,
    info: GPUAdapterInfo,
    checkWorkgroup: boolean = workgroupCheckRequested(),
    dumpWgsl: string | null = shaderDumpRequested(),
  ) {
    this.dumpWgsl = dumpWgsl;
    this.device = device;
    this.description = info.description ||
      [info.vendor, info.architecture].filter(Boolean).join(" ") ||
      "unknown adapter";
    this.adapter = {
      vendor: info.vendor ?? "",
      architecture: info.architecture ?? "",
      description: info.description ?? "",
    };
    // deno-lint-ignore no-explicit-any
    this.isFallback = Boolean((info as any).isFallbackAdapter) ||
      /llvmpipe|lavapipe|swiftshader/i.test(
        this.description,
      );
    this.features = new Set(device.features);
    this.limits = device.limits;
    this.maxWorkgroupsPerDimension = device.limits.maxComputeWorkgroupsPerDimension;
    this.errors = new GpuErrorWatch(device);
    this.#order = new QueueOrder(device, this.errors);
    if (checkWorkgroup) {
      this.#wgCheck = {
        counter: device.createBuffer({
          size: WORKGROUP_CHECK_BYTES,
          usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST,
        }),
        sources: [],
      };
    }
  }

  /**
   * The compiled pipeline for `code`, compiled once per distinct source.
   * `kernel` (name and config) and `first` (the dispatch that asked for it)
   * label the pipeline and its dump (see wgsl_dump.ts).
   */
  pipeline(
    code: string,
    kernel?: KernelInfo,
    first?: Omit<DispatchFacts, "adapter" | "boundsChecked">,
  ): GPUComputePipeline {
    return (this.#kernels.get(code) ?? this.#compile(code, kernel, first)).pipeline;
  }

  #compile(
    code: string,
    kernel?: KernelInfo,
    first?: Omit<DispatchFacts, "adapter" | "boundsChecked">,
    ahead = false,
  ): Kernel {
    const check = this.#wgCheck;
    const source = check ? checkWorkgroupBounds(code, check.sources.length) : code;
    const site = callerSite();
    if (this.dumpWgsl) {
      const dumpSite = launchSite(new Error().stack ?? "");
      writeShaderDump(
        this.dumpWgsl,
        shaderDumpFile(source, kernel ?? (dumpSite ? { name: dumpSite.name } : undefined), {
          adapter: this.description,
          launchedFrom: dumpSite?.where,
          workgroups: first?.workgroups ?? [],
          buffers: first?.buffers ?? 0,
          uniformBytes: first?.uniformBytes ?? 0,
          boundsChecked: source !== code,
        }),
      );
    }
    const label = kernel?.name;
    // An explicit layout, read off the source, lets uniforms be bound at a dynamic offset.
    const bindings = first ? first.buffers + (first.uniformBytes > 0 ? 1 : 0) : undefined;
    const groups = bindings === undefined ? null : pipelineLayout(source, bindings);
    let layout: GPUBindGroupLayout | null = null;
    let checkGroup: GPUBindGroup | null = null;
    const compile = () => {
      const module = this.device.createShaderModule({ code: source, label });
      let pipelineLayout: GPUPipelineLayout | "auto" = "auto";
      if (groups) {
        const layouts = groups.map((entries) => this.device.createBindGroupLayout({ entries }));
        layout = layouts[0];
        pipelineLayout = this.device.createPipelineLayout({ bindGroupLayouts: layouts });
      }
      const pipeline = this.device.createComputePipeline({
        label,
        layout: pipelineLayout,
        compute: { module, entryPoint: "main" },
      });
      // In the same scopes: a pipeline that failed fails here too, and belongs to the same report.
      if (check && source !== code) {
        checkGroup = this.device.createBindGroup({
          layout: pipeline.getBindGroupLayout(WORKGROUP_CHECK_GROUP),
          entries: [{ binding: 0, resource: { buffer: check.counter } }],
        });
      }
      return pipeline;
    };
    // Once per kernel: the compile runs in error scopes, reported with the op that asked for it.
    // Compiled ahead of its dispatch, a failed kernel is forgotten instead: the dispatch that
    // asks for it compiles it again, and the failure is reported there.
    const pipeline = ahead
      ? this.errors.quietly(compile, () => this.#kernels.delete(code))
      : this.errors.scoped(compile, () => `compiling the kernel of ${site}`);
    this.#sites.set(pipeline, site);
    if (check && source !== code) check.sources.push(code);
    const compiled: Kernel = {
      pipeline,
      id: ++this.#compiles,
      layout,
      dynamicUniforms: groups !== null,
      checkGroup,
    };
    this.#kernels.set(code, compiled);
    return compiled;
  }

  /** Whether dispatches only compile now (inside {@linkcode Gpu.precompile}). */
  get precompiling(): boolean {
    return this.#precompiling;
  }

  /** Number of kernels compiled so far. */
  get pipelineCount(): number {
    return this.#compiles;
  }

  /**
   * Compile the kernels that `record` dispatches, and record none of them:
   * the planner compiles the next key's candidates so while the GPU runs the
   * timed rounds of the key before (a compile keeps the CPU busy for
   * 0.1–0.2 s on an H200, and the GPU would idle meanwhile). Allocations and
   * uploads in `record` happen, and fail, as usual; what it computes is
   * garbage. A
   * kernel that fails to compile here is not reported: the dispatch that next
   * asks for it compiles it again and reports the failure there.
   *
   * @example
   * ```ts
   * import { initGpu } from "./gpu.ts";
   * import { Tensor } from "./tensor.ts";
   * import { mul } from "./elementwise.ts";
   * const g = await initGpu();
   * const x = Tensor.from([1, 2, 3]);
   * g.precompile(() => mul(x, x).dispose()); // compiled, not dispatched
   * const before = g.pipelineCount;
   * console.log(await mul(x, x).read(), g.pipelineCount === before); // Float32Array [1, 4, 9] true
   * ```
   */
  precompile(record: () => void): void {
    const was = this.#precompiling;
    this.#precompiling = true;
    try {
      record();
    } finally {
      this.#precompiling = was;
    }
  }

  #ensurePass(): GPUComputePassEncoder {
    if (!this.#encoder) this.#encoder = this.device.createCommandEncoder();
    if (!this.#pass) {
      this.#pass = this.#encoder.beginComputePass();
      this.#passPipeline = null;
    }
    return this.#pass;
  }

  /**
   * Record the dispatches `record` makes in a compute pass of their own that
   * writes timestamps `index` (start) and `index + 1` (end) of `querySet`
   * (needs the `timestamp-query` feature): per-launch GPU times for the
   * autotuners, taken while the rest of the work runs as usual.
   */
  timedPass(querySet: GPUQuerySet, index: number, record: () => void): void {
    const encoder = this.encoderForCopy();
    this.#passPipeline = null;
    this.#pass = encoder.beginComputePass({
      timestampWrites: {
        querySet,
        beginningOfPassWriteIndex: index,
        endOfPassWriteIndex: index + 1,
      },
    });
    try {
      record();
    } finally {
      // An auto-flush inside `record` has already ended the pass (the time then covers less).
      if (this.#pass) {
        this.#pass.end();
        this.#pass = null;
      }
    }
  }

  /** The open encoder with no compute pass open: for copies, in recording order. */
  encoderForCopy(): GPUCommandEncoder {
    if (this.#pass) {
      this.#pass.end();
      this.#pass = null;
    }
    if (!this.#encoder) this.#encoder = this.device.createCommandEncoder();
    return this.#encoder;
  }

  /**
   * Record one dispatch of `code` (entry point `main`, `buffers` bound in
   * order at group 0). `uniforms`, when given, are bound after the buffers as
   * one uniform buffer: values that change every step (learning rate, seed)
   * travel there so the kernel is compiled once. `kernel` names the kernel
   * and the config it was built from, for GPU error messages and shader dumps.
   */
  dispatch(
    code: string,
    buffers: GPUBuffer[],
    workgroups: readonly number[],
    uniforms?: ArrayBuffer,
    kernel?: KernelInfo,
  ): void {
    if (this.skipDispatches) return;
    const facts = { workgroups, buffers: buffers.length, uniformBytes: uniforms?.byteLength ?? 0 };
    if (this.#precompiling) {
      if (!this.#kernels.has(code)) this.#compile(code, kernel, facts, true);
      return;
    }
    const k = this.#kernels.get(code) ?? this.#compile(code, kernel, facts);
    if (this.dispatchHook && !this.#inHook) {
      const name = kernel?.name ?? this.#sites.get(k.pipeline) ?? "an unknown op";
      this.#inHook = true;
      try {
        this.dispatchHook(
          name,
          kernel,
          () => this.dispatch(code, buffers, workgroups, uniforms, kernel),
        );
      } finally {
        this.#inHook = false;
      }
      return;
    }
    const slot = uniforms ? this.#uniformSlot(uniforms) : null;
    let group: GPUBindGroup | undefined;
    if (!slot || k.dynamicUniforms) {
      const uniformBuffer = slot && slot.buffer;
      const uniformBytes = slot ? slot.size : 0;
      group = this.bindGroups.get(k.id, buffers, uniformBuffer, uniformBytes);
      if (!group) {
        group = this.#bindGroup(k, buffers, slot && { ...slot, offset: 0 });
        this.bindGroups.set(k.id, buffers, uniformBuffer, uniformBytes, group);
      }
    } else {
      // A layout WebGPU derived has no dynamic offset: a group per dispatch, as the slot moves.
      group = this.#bindGroup(k, buffers, slot);
    }
    const pass = this.#ensurePass();
    if (this.#passPipeline !== k.pipeline) {
      pass.setPipeline(k.pipeline);
      this.#passPipeline = k.pipeline;
    }
    if (slot && k.dynamicUniforms) {
      this.#offsets[0] = slot.offset;
      pass.setBindGroup(0, group, this.#offsets, 0, 1);
    } else {
      pass.setBindGroup(0, group);
    }
    if (k.checkGroup) pass.setBindGroup(WORKGROUP_CHECK_GROUP, k.checkGroup);
    const [x, y = 1, z = 1] = workgroups;
    const max = this.maxWorkgroupsPerDimension;
    if (x > max || y > max || z > max) {
      throw new GpuOpError(
        `${callerSite()}: a dispatch of ${x}×${y}×${z} workgroups exceeds the device limit ${max}`,
      );
    }
    if (x > 0 && y > 0 && z > 0) pass.dispatchWorkgroups(x, y, z);
    this.#lastPipeline = k.pipeline;
    this.#lastWorkgroups = workgroups;
    // Bound the recorded work (and its uniform arenas) of long loops that never sync.
    const limit = this.#idle ? FIRST_FLUSH_DISPATCHES : AUTO_FLUSH_DISPATCHES;
    this.dispatches++;
    if (++this.dispatchesSinceSubmit >= limit) this.flush();
  }

  /** A new bind group of `k` binding `buffers` in order, then the uniform block `slot` if any. */
  #bindGroup(
    k: Kernel,
    buffers: readonly GPUBuffer[],
    slot: Required<GPUBufferBinding> | null,
  ): GPUBindGroup {
    const maxBinding = this.limits.maxStorageBufferBindingSize;
    for (const b of buffers) {
      // Checked here, where the op is known: WebGPU would report it later, from no op in particular.
      if (b.size > maxBinding) {
        throw new GpuOpError(
          `${callerSite()} binds a buffer of ${b.size} bytes, above this device's ` +
            `maxStorageBufferBindingSize of ${maxBinding} bytes`,
        );
      }
    }
    const entries: GPUBindGroupEntry[] = buffers.map((buffer, i) => ({
      binding: i,
      resource: { buffer },
    }));
    if (slot) entries.push({ binding: buffers.length, resource: slot });
    k.layout ??= k.pipeline.getBindGroupLayout(0);
    return this.device.createBindGroup({ layout: k.layout, entries });
  }

  /**
   * A slot of a uniform arena holding `data` (the next arena when the current
   * one is full): its buffer, offset and size.
   */
  #uniformSlot(data: ArrayBuffer): Required<GPUBufferBinding> {
    const size = Math.max(16, Math.ceil(data.byteLength / 16) * 16);
    const align = this.limits.minUniformBufferOffsetAlignment;
    const slot = Math.ceil(size / align) * align;
    const { buffer, offset } = this.#slot(
      this.#uniformArenas,
      new Uint8Array(data),
      slot,
      UNIFORM_ARENA_BYTES,
    );
    return { buffer, offset, size };
  }

  /**
   * `bytes` copied into `slot` bytes (zero-padded) of the set's current
   * arena, or of the next one (created when needed, at least `arenaBytes`)
   * when it is full.
   */
  #slot(
    set: ArenaSet,
    bytes: Uint8Array,
    slot: number,
    arenaBytes: number,
  ): { buffer: GPUBuffer; offset: number } {
    let arena = set.list[set.index];
    while (arena && arena.used + slot > arena.bytes.byteLength) arena = set.list[++set.index];
    if (!arena) {
      this.errors.throwIfLost();
      const size = Math.max(arenaBytes, slot);
      const buffer = this.device.createBuffer({ size, usage: set.usage });
      arena = { buffer, bytes: new Uint8Array(size), used: 0 };
      set.list.push(arena);
      set.index = set.list.length - 1;
    }
    const offset = arena.used;
    arena.bytes.set(bytes, offset);
    arena.bytes.fill(0, offset + bytes.byteLength, offset + slot);
    arena.used += slot;
    return { buffer: arena.buffer, offset };
  }

  /** Write the arenas filled since the last submit (in recording order) and empty them. */
  #writeArenas(): void {
    for (const set of [this.#uniformArenas, this.#uploadArenas]) {
      const last = Math.min(set.index, set.list.length - 1);
      for (let i = 0; i <= last; i++) {
        const arena = set.list[i];
        if (arena.used === 0) continue;
        const bytes = arena.bytes.subarray(0, arena.used);
        if (this.#order.active) this.#order.write(arena.buffer, 0, bytes);
        else this.device.queue.writeBuffer(arena.buffer, 0, bytes);
        arena.used = 0;
      }
      set.index = 0;
    }
  }

  /**
   * Copy `bytes` into `dst` in recording order (after every dispatch recorded
   * so far, before any recorded later). A plain `queue.writeBuffer` would
   * jump ahead of the recorded work and could overwrite a pooled buffer still
   * to be read, so small uploads are copied from a slot of an upload arena
   * (written just before the submit, see `#writeArenas`), and large ones
   * submit the recorded work first and then write: the queue runs submits and
   * writes in order. (A staging buffer mapped at creation filled at about
   * 30 MB/s on the H100: SLaK-T's weights took 6.9 s to upload.)
   */
  upload(dst: GPUBuffer, bytes: ArrayBufferView, dstOffset = 0): void {
    const size = Math.ceil(bytes.byteLength / 4) * 4;
    if (size === 0) return;
    this.errors.throwIfLost();
    const view = new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    if (size <= UPLOAD_SLOT_MAX) {
      // Record the copy first: ending a compute pass does not touch the arenas.
      const encoder = this.encoderForCopy();
      const slot = this.#slot(this.#uploadArenas, view, size, UPLOAD_ARENA_BYTES);
      encoder.copyBufferToBuffer(slot.buffer, slot.offset, dst, dstOffset, size);
      return;
    }
    this.flush();
    // Written as is when it can be: a padded (or shared-memory) view is copied first.
    let data: Uint8Array<ArrayBuffer>;
    if (size === view.byteLength && view.buffer instanceof ArrayBuffer) {
      data = view as Uint8Array<ArrayBuffer>;
    } else {
      data = new Uint8Array(size);
      data.set(view);
    }
    if (this.#order.active) this.#order.write(dst, dstOffset, data);
    else this.device.queue.writeBuffer(dst, dstOffset, data);
  }

  /** Submit everything recorded so far. Cheap when nothing is recorded. */
  flush(): void {
    this.errors.throwIfLost();
    if (this.#pass) {
      this.#pass.end();
      this.#pass = null;
    }
    if (this.#encoder) {
      this.#writeArenas();
      const encoder = this.#encoder;
      const [count, pipeline, groups] = [
        this.dispatchesSinceSubmit,
        this.#lastPipeline,
        this.#lastWorkgroups,
      ];
      const describe = () =>
        `a submit of ${count} dispatches, the last by ${
          (pipeline && this.#sites.get(pipeline)) ?? "an unknown op"
        } over ${groups.join("×")} workgroups`;
      // One scope per submit: a bad binding or dispatch in the batch is reported with the last op.
      if (this.#order.active) {
        this.#order.submit(this.errors.scoped(() => encoder.finish(), describe), describe);
      } else {
        this.errors.scoped(() => this.device.queue.submit([encoder.finish()]), describe);
      }
      this.#encoder = null;
      this.submits++;
      this.#idle = false;
      this.dispatchesSinceSubmit = 0;
    }
    if (this.#order.active) this.#order.destroy(this.#afterSubmit);
    else for (const b of this.#afterSubmit) b.destroy();
    this.#afterSubmit = [];
  }

  /**
   * Record a host step: once the GPU has computed everything recorded so
   * far, the values of `reads` go to `fn` on the CPU, and the arrays it
   * returns are written into `writes` before anything recorded later runs.
   * Recording goes on at once; the step and the work behind it run at the
   * next sync point (a read-back, {@linkcode Gpu.sync}) or whenever the
   * JavaScript thread waits, in recording order (see queue_order.ts). `fn`
   * may return a promise (an MPI all-reduce): the queue waits for it.
   *
   * @example
   * ```ts
   * import { gpu, initGpu } from "./gpu.ts";
   * import { Tensor } from "./tensor.ts";
   * await initGpu();
   * const sums = Tensor.from([1, 2]);
   * gpu().hostStep([sums], [sums], ([v]) => [v.map((a) => a * 10)]);
   * console.log(await sums.read()); // Float32Array [10, 20]
   * ```
   */
  hostStep(reads: readonly HostBuffer[], writes: readonly HostBuffer[], fn: HostStepFn): void {
    this.errors.throwIfLost();
    const floats = reads.map((r) => r.size);
    const staging = this.device.createBuffer({
      size: Math.max(4, floats.reduce((a, b) => a + b, 0) * 4),
      usage: GPUBufferUsage.COPY_DST | GPUBufferUsage.MAP_READ,
    });
    const encoder = this.encoderForCopy();
    let at = 0;
    for (const r of reads) {
      if (r.size > 0) encoder.copyBufferToBuffer(r.buffer, 0, staging, at, r.size * 4);
      at += r.size * 4;
    }
    this.flush();
    // The buffers now: a tensor may be disposed (its buffer pooled) before the step runs.
    const targets = writes.map((w) => ({ buffer: w.buffer, size: w.size }));
    this.#order.host(staging, floats, targets, fn);
  }

  /** True while host steps (and the work recorded behind them) wait to run. */
  get hostStepsPending(): boolean {
    return this.#order.active;
  }

  /** Host steps run so far (tests and statistics). */
  get hostStepsRun(): number {
    return this.#order.hostSteps;
  }

  /**
   * Submit everything recorded so far; the promise resolves once it is on the
   * queue (at once, unless host steps are pending), so that `mapAsync` of a
   * buffer it writes may be called.
   */
  submitted(): Promise<void> {
    this.flush();
    return this.#order.submitted();
  }

  /**
   * `queue.writeBuffer` after everything recorded so far: when host steps are
   * pending, in its place behind them.
   */
  writeBuffer(dst: GPUBuffer, data: ArrayBufferView, dstOffset = 0): void {
    this.flush();
    if (this.#order.active) this.#order.write(dst, dstOffset, data);
    else this.device.queue.writeBuffer(dst, dstOffset, data as ArrayBufferView<ArrayBuffer>);
  }

  /** Destroy `buffer` once the work recorded so far that may use it is submitted. */
  destroyAfterSubmit(buffer: GPUBuffer): void {
    this.bindGroups.forget(buffer);
    this.#afterSubmit.push(buffer);
  }

  /**
   * Create a buffer inside error scopes: running out of memory (or an invalid
   * size) is thrown at the next sync point naming the op and `what` it was for.
   */
  createBuffer(desc: GPUBufferDescriptor, what: () => string): GPUBuffer {
    this.errors.throwIfLost();
    const site = callerSite();
    return this.errors.scoped(
      () => this.device.createBuffer(desc),
      () => `${site}, allocating ${what()} (${desc.size} bytes)`,
    );
  }

  /** Throw the first GPU failure since the last check (or a lost device), as one line. */
  async checkErrors(): Promise<void> {
    await this.errors.check();
  }

  /** Read `size` bytes of `src` from `offset` back to the CPU (a sync point). */
  async readBytes(src: GPUBuffer, size: number, offset = 0): Promise<ArrayBuffer> {
    let out: ArrayBuffer;
    try {
      out = await this.#read(src, size, offset);
    } catch (e) {
      // A failed read-back usually has a cause reported by a scope, or a lost device: say that.
      await this.errors.check();
      throw e;
    }
    await this.errors.check();
    if (this.#wgCheck) await this.#throwOnWorkgroupOverrun();
    return out;
  }

  /** {@linkcode readBytes} without the workgroup check (which reads its counter through it). */
  async #read(src: GPUBuffer, size: number, offset: number): Promise<ArrayBuffer> {
    const padded = Math.ceil(size / 4) * 4;
    const staging = this.device.createBuffer({
      size: Math.max(4, padded),
      usage: GPUBufferUsage.COPY_DST | GPUBufferUsage.MAP_READ,
    });
    if (padded > 0) this.encoderForCopy().copyBufferToBuffer(src, offset, staging, 0, padded);
    this.flush();
    await this.#settle(staging);
    await staging.mapAsync(GPUMapMode.READ);
    this.#idle = true;
    const out = staging.getMappedRange().slice(0, size);
    staging.unmap();
    staging.destroy();
    return out;
  }

  /** With workgroup checking on: throw if a kernel indexed past a workgroup array, then reset. */
  async #throwOnWorkgroupOverrun(): Promise<void> {
    const check = this.#wgCheck!;
    const [count, kernel, index] = new Uint32Array(
      await this.#read(check.counter, WORKGROUP_CHECK_BYTES, 0),
    );
    // Recorded before any later dispatch, so the next read-back counts only what follows.
    this.encoderForCopy().clearBuffer(check.counter);
    if (count === 0) return;
    const source = check.sources[kernel - 1] ?? "?";
    const decls = source.split("\n").filter((l) => l.includes("var<workgroup>")).join(" ");
    throw new Error(
      `workgroup memory overrun: ${count} out-of-range index(es), up to ${index}, in kernel ` +
        `#${kernel - 1} (${decls.trim()}); kernel source:\n${source}`,
    );
  }

  /** Run the pending host steps, if any; a failure among them is thrown here. */
  async #settle(staging?: GPUBuffer): Promise<void> {
    if (!this.#order.unsettled) return;
    try {
      await this.#order.settle();
    } catch (e) {
      staging?.destroy();
      throw e;
    }
  }

  /** Wait until the GPU has finished everything submitted (flushes and runs host steps first). */
  async sync(): Promise<void> {
    this.flush();
    await this.#settle();
    await this.device.queue.onSubmittedWorkDone();
    this.#idle = true;
    await this.errors.check();
    if (this.#wgCheck) await this.#throwOnWorkgroupOverrun();
  }
}

let current: Gpu | null = null;
let pending: Promise<Gpu> | null = null;

/** Options for {@linkcode initGpu}. */
export interface InitGpuOptions {
  /** The WebGPU entry point; `navigator.gpu` by default (tests pass a fake). */
  gpu?: GPU | undefined;
  powerPreference?: GPUPowerPreference;
  /**
   * Check every index into workgroup memory (see workgroup_check.ts); slower.
   * Default: on when the environment has `LARGEKERNEL_CHECK_WORKGROUP=1`.
   */
  checkWorkgroup?: boolean;
  /**
   * Write every compiled kernel to this folder (see wgsl_dump.ts); `null`
   * turns it off. Default: the environment's `LARGEKERNEL_DUMP_WGSL`.
   */
  dumpWgsl?: string | null;
  /**
   * Request only WebGPU's default limits (16 KiB of workgroup memory, 256
   * invocations, 8 storage buffers per stage, 128 MiB bindings), as the
   * smallest adapters offer. Default: on when the environment has
   * `LARGEKERNEL_DEFAULT_LIMITS=1`.
   */
  defaultLimits?: boolean;
}

/**
 * Whether the environment asks for WebGPU's default limits (`LARGEKERNEL_DEFAULT_LIMITS=1`).
 *
 * @example
 * ```ts
 * import { defaultLimitsRequested, initGpu } from "./gpu.ts";
 * // What initGpu() does when `defaultLimits` is not given:
 * await initGpu({ defaultLimits: defaultLimitsRequested() });
 * ```
 */
export function defaultLimitsRequested(): boolean {
  try {
    return Deno.env.get("LARGEKERNEL_DEFAULT_LIMITS") === "1";
  } catch {
    return false; // no permission to read the environment: the adapter's limits
  }
}

/**
 * Acquire an adapter and a device with the adapter's maximum limits (or
 * WebGPU's defaults, see {@linkcode InitGpuOptions.defaultLimits}).
 * Throws {@linkcode GpuUnavailableError} with a one-line message saying what
 * to install when WebGPU or an adapter is missing.
 *
 * @example
 * ```ts
 * import { createGpu } from "./gpu.ts";
 * const g = await createGpu(); // a second device, apart from the process-wide one
 * console.log(g.features.has("timestamp-query"));
 * g.device.destroy();
 * ```
 */
export async function createGpu(options: InitGpuOptions = {}): Promise<Gpu> {
  const entry = "gpu" in options
    ? options.gpu
    : (globalThis.navigator as Navigator | undefined)?.gpu;
  if (!entry) {
    throw new GpuUnavailableError(`WebGPU is not available in this runtime: ${INSTALL_HINT}`);
  }
  const adapter = await entry.requestAdapter({
    powerPreference: options.powerPreference ?? "high-performance",
  });
  if (!adapter) throw new GpuUnavailableError(`no WebGPU adapter found: ${INSTALL_HINT}`);
  const requiredFeatures = OPTIONAL_FEATURES.filter((f) =>
    adapter.features.has(f)
  ) as GPUFeatureName[];
  const requiredLimits: Record<string, number> = {};
  // With defaultLimits the device gets WebGPU's defaults (what every adapter offers, laptop
  // GPUs included), and kernels pick plans that fit them.
  if (!(options.defaultLimits ?? defaultLimitsRequested())) {
    for (const name of MAX_LIMITS) {
      const v = adapter.limits[name];
      if (typeof v === "number") requiredLimits[name] = v;
    }
  }
  const device = await adapter.requestDevice({ requiredFeatures, requiredLimits });
  return new Gpu(device, adapter.info, options.checkWorkgroup, options.dumpWgsl);
}

/** Initialise the process-wide GPU context once; later calls return it. */
export function initGpu(options: InitGpuOptions = {}): Promise<Gpu> {
  if (current) return Promise.resolve(current);
  pending ??= createGpu(options).then((g) => (current = g)).finally(() => (pending = null));
  return pending;
}

/** The process-wide GPU context; {@linkcode initGpu} must have resolved first. */
export function gpu(): Gpu {
  if (!current) throw new Error("GPU not initialised: call `await initGpu()` first");
  return current;
}

/**
 * Flush recorded work to the queue (a no-op before initialisation).
 *
 * @example
 * ```ts
 * import { flush, initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * await initGpu();
 * Tensor.ones([1024]); // recorded, not yet submitted
 * flush(); // submit now, e.g. before timing CPU work that overlaps the GPU
 * ```
 */
export function flush(): void {
  current?.flush();
}

/**
 * Run a command-line entry point: a missing GPU (or any error) prints one
 * line on stderr and exits with a non-zero code instead of a stack trace.
 *
 * @example
 * ```ts
 * import { initGpu, runMain } from "./gpu.ts";
 * await runMain(async () => {
 *   const g = await initGpu(); // with no GPU: one line on stderr and exit code 2
 *   console.log(g.description);
 * });
 * ```
 */
export async function runMain(main: () => Promise<void> | void): Promise<void> {
  try {
    await main();
  } catch (e) {
    const msg = e instanceof Error ? e.message : String(e);
    console.error(`error: ${msg.split("\n")[0]}`);
    if (Deno.env.get("LARGEKERNEL_DEBUG") && e instanceof Error) console.error(e.stack);
    Deno.exit(e instanceof GpuUnavailableError ? 2 : 1);
  }
}
