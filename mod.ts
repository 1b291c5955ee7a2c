/**
 * largekernel: large-kernel ConvNets (SLaK, RepLKNet, ShiftwiseConv, and
 * their ConvNeXt/ResNet baselines) built, trained and analysed on WebGPU.
 *
 * @example
 * ```ts
 * import { initGpu, Tensor, depthwiseConv2d } from "./mod.ts";
 * await initGpu();
 * const x = Tensor.randn([1, 8, 16, 16], { seed: 0 });
 * const w = Tensor.randn([8, 1, 31, 31], { seed: 1 });
 * console.log(depthwiseConv2d(x, w, null).shape); // [1, 8, 16, 16]
 * ```
 * @module
 */
export * from "./ops/gpu.ts";
export * from "./ops/tensor.ts";
export * from "./ops/autograd.ts";
export * from "./ops/kernel.ts";
export * from "./ops/elementwise.ts";
export * from "./ops/conv.ts";
export * from "./ops/depthwise.ts";
export * from "./ops/sparse_depthwise.ts";
export * from "./ops/sparse_path.ts";
export * from "./ops/matmul.ts";
export * from "./ops/gemm_kernel.ts";
export * from "./ops/gemm_plan.ts";
export * from "./ops/planner.ts";
export * from "./ops/plan_cache.ts";
export * from "./ops/timing.ts";
export * from "./ops/random.ts";
export * from "./ops/fused.ts";
export * from "./ops/fused_residual.ts";
export * from "./ops/fused_layernorm.ts";
export * from "./ops/fold_bn.ts";
export * from "./ops/norm.ts";
export * from "./ops/pool.ts";
export * from "./ops/shape.ts";
export * from "./ops/drop_path.ts";
export * from "./ops/loss.ts";
export * from "./ops/optim.ts";
export * from "./ops/ema.ts";
export * from "./ops/masked.ts";
export * from "./ops/center_point.ts";
export * from "./models/module.ts";
// The functional helpers of layers.ts (gelu, add, …) accept shapes too; ops' versions keep the plain names.
export {
  Activation,
  BatchNorm2d,
  Conv2d,
  type Conv2dConfig,
  DropPath,
  type FlopRecord,
  LayerNorm,
  Linear,
  MaxPool2d,
  Meta,
  Sequential,
  setForwardSeed,
  torchDefaultInit,
  traceFlops,
  type Value,
} from "./models/layers.ts";
export * as layers from "./models/layers.ts";
export * from "./models/conv_bn.ts";
export * from "./models/convnext.ts";
export * from "./models/slak.ts";
export * from "./models/safetensors.ts";
export * from "./models/pth.ts";
export * from "./ops/shift.ts";
export * from "./models/replknet.ts";
export * from "./models/resnet.ts";
export * from "./models/shiftwise.ts";
export * from "./models/registry.ts";
export * from "./models/sync_batch_norm.ts";
export * from "./models/weight_mapping.ts";
// train: the trainer behind `deno task train`, its presets and datasets
export {
  type EpochRow,
  evaluate,
  NonFiniteLossError,
  train,
  type TrainHooks,
  type TrainResult,
} from "./train/trainer.ts";
export { type Replicas, singleProcess } from "./train/parallel.ts";
export { defaultConfig, presetConfig, PRESETS, type TrainConfig } from "./train/config.ts";
export {
  loadModelWeights,
  type LoadModelWeightsOptions,
  loadWeightsFile,
} from "./train/weights.ts";
export { type FlagSpec, type FlagSpecs, type FlagValues, parseFlags } from "./train/flags.ts";
export {
  type Batch,
  type Dataset,
  type DatasetSpec,
  ImageFolderDataset,
  mixupBatch,
  naturalLikeBatch,
  naturalLikeImage,
  openDataset,
  ProceduralDataset,
} from "./train/data/mod.ts";
// sparse: masks, layer-wise densities, prune-and-grow (SLaK and ShiftwiseConv recipes)
export * from "./sparse/density.ts";
export * from "./sparse/masks.ts";
export * from "./sparse/prune_grow.ts";
export * from "./analysis/flops.ts";
export * from "./analysis/csv.ts";
export * from "./analysis/plot.ts";
export * from "./analysis/npy.ts";
export * from "./analysis/erf.ts";
export * from "./analysis/heatmap.ts";
export * from "./analysis/fonts.ts";
export * from "./analysis/stats.ts";
