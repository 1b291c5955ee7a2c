/**
 * Every model preset by name (`convnext_tiny`, `slak_tiny`, `replknet_31b`,
 * `resnet50`, `sw_tiny`, … and a tiny `*_cpu` preset per family), with the
 * overrides the official training scripts expose: stage kernels and the
 * small kernel (like `--kernel_size 51 49 47 13 5`), width factor, number
 * of classes, stochastic depth and LayerScale init.
 *
 * @example
 * ```ts
 * import { createModel, MODEL_NAMES, modelInfo } from "./registry.ts";
 * console.log(MODEL_NAMES.includes("slak_tiny"), modelInfo("replknet_xl").inputSize); // true 320
 * const m = createModel("slak_tiny", { kernels: [61, 59, 57, 13, 5], numClasses: 10 });
 * console.log(m.numParams());
 * ```
 * @module
 */
import { convnext, CONVNEXT_PRESETS, type ConvNeXtConfig } from "./convnext.ts";
import type { Classifier } from "./module.ts";
import { replknet, REPLKNET_PRESETS, type RepLKNetConfig } from "./replknet.ts";
import { resnet, RESNET_PRESETS } from "./resnet.ts";
import { shiftwise, SHIFTWISE_PRESETS, type ShiftWiseConfig } from "./shiftwise.ts";
import { type LargeKernelMode, slak, SLAK_PRESETS, widenDims } from "./slak.ts";

/** The model families. */
export type Family = "convnext" | "slak" | "replknet" | "resnet" | "shiftwise";

/** What a preset may change. */
export interface ModelOverrides {
  /**
   * Kernel size per stage (4 numbers), or 5 numbers whose last is the small
   * kernel, as the official `--kernel_size 51 49 47 13 5`.
   */
  kernels?: number[];
  /** N: the small kernel (SLaK's short edge and parallel N×N; RepLKNet's parallel kernel). */
  smallKernel?: number;
  /** Multiply every stage width (int-truncated, as the official `int(d * width_factor)`). */
  widthFactor?: number;
  numClasses?: number;
  /** Stochastic depth rate (ignored by families without drop path). */
  dropPath?: number;
  /** LayerScale init, ≤ 0 disables (ignored by families without LayerScale). */
  layerScaleInit?: number;
  /**
   * How the large kernels are built: SLaK `decomposed` (default), `full`
   * (M×M [+ N×N]) or `merged`; RepLKNet `full` (default) or `merged`
   * (`small_kernel_merged`); ShiftwiseConv `merged` (`N_path` convs merged,
   * the deployed form).
   */
  mode?: LargeKernelMode;
}

/** A registry entry's description. */
export interface ModelInfo {
  name: string;
  family: Family;
  /** The input side the paper reports the preset at (224, RepLKNet-31L 384, XL 320; tiny presets 32). */
  inputSize: number;
  /** One line about the preset. */
  about: string;
}

interface Entry extends ModelInfo {
  build(o: Readonly<ModelOverrides>): Classifier;
}

const OVERRIDE_KEYS = [
  "kernels",
  "smallKernel",
  "widthFactor",
  "numClasses",
  "dropPath",
  "layerScaleInit",
  "mode",
] as const;

function reject(name: string, what: string, why: string): never {
  throw new Error(`${name}: ${what} ${why}`);
}

/** Stage kernels and the small kernel from `kernels` (4 or 5 numbers) and `smallKernel`. */
function splitKernels(
  name: string,
  o: Readonly<ModelOverrides>,
): { kernels?: number[]; smallKernel?: number } {
  let kernels = o.kernels;
  let smallKernel = o.smallKernel;
  if (kernels?.length === 5) {
    if (smallKernel !== undefined && smallKernel !== kernels[4]) {
      reject(name, "kernels", `gives small kernel ${kernels[4]} but smallKernel is ${smallKernel}`);
    }
    smallKernel = kernels[4];
    kernels = kernels.slice(0, 4);
  }
  return { kernels, smallKernel };
}

function convnextEntry(
  name: keyof typeof CONVNEXT_PRESETS,
  about: string,
  inputSize = 224,
): Entry {
  return {
    name,
    family: "convnext",
    inputSize,
    about,
    build(o) {
      const { kernels, smallKernel } = splitKernels(name, o);
      const base: ConvNeXtConfig = CONVNEXT_PRESETS[name];
      const k = kernels ?? base.kernels ?? [7, 7, 7, 7];
      // The official ConvNeXt runs pass a small kernel larger than every stage kernel (`7 7 7 7 100`): none exists.
      if (smallKernel !== undefined && smallKernel <= Math.max(...k)) {
        reject(
          name,
          "smallKernel",
          `${smallKernel}: ConvNeXt has no parallel small kernel (use slak_* with mode "full" for the RepLKNet recipe)`,
        );
      }
      if (o.mode !== undefined) reject(name, "mode", "applies to slak_* models only");
      return convnext({
        ...base,
        dims: o.widthFactor === undefined ? base.dims : widenDims(base.dims, o.widthFactor),
        kernels: k,
        ...common(o),
      });
    },
  };
}

function slakEntry(name: keyof typeof SLAK_PRESETS, about: string, inputSize = 224): Entry {
  return {
    name,
    family: "slak",
    inputSize,
    about,
    build(o) {
      const { kernels, smallKernel } = splitKernels(name, o);
      const base = SLAK_PRESETS[name];
      return slak({
        ...base,
        ...(kernels ? { kernels } : {}),
        ...(smallKernel !== undefined ? { smallKernel } : {}),
        ...(o.widthFactor !== undefined ? { widthFactor: o.widthFactor } : {}),
        ...(o.mode !== undefined ? { mode: o.mode } : {}),
        ...common(o),
      });
    },
  };
}

function resnetEntry(name: keyof typeof RESNET_PRESETS, about: string, inputSize = 224): Entry {
  return {
    name,
    family: "resnet",
    inputSize,
    about,
    build(o) {
      for (const k of ["kernels", "smallKernel", "mode"] as const) {
        if (o[k] !== undefined) reject(name, k, "does not apply to ResNet");
      }
      const base = RESNET_PRESETS[name];
      const width = (base as { width?: number }).width ?? 64;
      return resnet({
        ...base,
        ...(o.widthFactor !== undefined ? { width: Math.trunc(width * o.widthFactor) } : {}),
        ...(o.numClasses !== undefined ? { numClasses: o.numClasses } : {}),
      });
    },
  };
}

function replknetEntry(
  name: keyof typeof REPLKNET_PRESETS,
  about: string,
  inputSize = 224,
): Entry {
  return {
    name,
    family: "replknet",
    inputSize,
    about,
    build(o) {
      const { kernels, smallKernel } = splitKernels(name, o);
      const base: RepLKNetConfig = REPLKNET_PRESETS[name];
      const k = kernels ?? base.largeKernelSizes;
      let small = smallKernel ?? base.smallKernel ?? null;
      // Like `7 7 7 7 100` for SLaK, a small kernel above every stage kernel means none; so does
      // the preset's 5×5 with stage kernels below 5 (RepLKNet-3 of Table 5).
      if (small !== null && (small > Math.max(...k) || (!smallKernel && small > Math.min(...k)))) {
        small = null;
      }
      if (small !== null && small > Math.min(...k)) {
        reject(name, "smallKernel", `${small} is larger than a stage kernel (${k.join("-")})`);
      }
      if (o.mode === "decomposed") reject(name, "mode", "decomposed applies to slak_* models only");
      return replknet({
        ...base,
        largeKernelSizes: k,
        smallKernel: small,
        ...(o.widthFactor !== undefined
          ? { channels: base.channels.map((c) => Math.trunc(c * o.widthFactor!)) }
          : {}),
        ...(o.mode === "merged" ? { smallKernelMerged: true } : {}),
        ...(o.numClasses !== undefined ? { numClasses: o.numClasses } : {}),
        ...(o.dropPath !== undefined ? { dropPath: o.dropPath } : {}),
      });
    },
  };
}

function shiftwiseEntry(
  name: keyof typeof SHIFTWISE_PRESETS,
  about: string,
  inputSize = 224,
): Entry {
  return {
    name,
    family: "shiftwise",
    inputSize,
    about,
    build(o) {
      const { kernels, smallKernel } = splitKernels(name, o);
      const base: ShiftWiseConfig = SHIFTWISE_PRESETS[name];
      if (o.mode !== undefined && o.mode !== "merged") {
        reject(name, "mode", `${o.mode} does not apply to ShiftwiseConv (only "merged")`);
      }
      return shiftwise({
        ...base,
        ...(kernels ? { kernels } : {}),
        ...(smallKernel !== undefined ? { smallKernel } : {}),
        ...(o.widthFactor !== undefined ? { dims: widenDims(base.dims, o.widthFactor) } : {}),
        ...(o.mode === "merged" ? { merged: true } : {}),
        ...common(o),
      });
    },
  };
}

/** numClasses, dropPath, layerScaleInit where given. */
function common(o: Readonly<ModelOverrides>) {
  return {
    ...(o.numClasses !== undefined ? { numClasses: o.numClasses } : {}),
    ...(o.dropPath !== undefined ? { dropPath: o.dropPath } : {}),
    ...(o.layerScaleInit !== undefined ? { layerScaleInit: o.layerScaleInit } : {}),
  };
}

const ENTRIES: Entry[] = [
  convnextEntry("convnext_tiny", "ConvNeXt-T, 7×7 depthwise kernels"),
  convnextEntry("convnext_small", "ConvNeXt-S"),
  convnextEntry("convnext_base", "ConvNeXt-B"),
  convnextEntry("convnext_cpu", "tiny ConvNeXt for llvmpipe tests", 32),
  slakEntry("slak_tiny", "SLaK-T: ConvNeXt-T, 51-49-47-13 decomposed with N=5, width ×1.3"),
  slakEntry("slak_small", "SLaK-S"),
  slakEntry("slak_base", "SLaK-B"),
  slakEntry("slak_cpu", "tiny SLaK for llvmpipe tests", 32),
  resnetEntry("resnet50", "torchvision ResNet-50"),
  resnetEntry("resnet101", "torchvision ResNet-101"),
  resnetEntry("resnet152", "torchvision ResNet-152"),
  resnetEntry("resnet_cpu", "tiny ResNet for llvmpipe tests", 32),
  replknetEntry("replknet_31b", "RepLKNet-31B: 31-29-27-13 kernels with a parallel 5×5"),
  replknetEntry("replknet_31l", "RepLKNet-31L (reported at 384²)", 384),
  replknetEntry("replknet_xl", "RepLKNet-XL: 27-27-27-13, dw ratio 1.5 (reported at 320²)", 320),
  replknetEntry("replknet_cpu", "tiny RepLKNet for llvmpipe tests", 32),
  shiftwiseEntry("sw_tiny", "ShiftwiseConv v2 SW-tiny (SW-51 with 3×3 kernels)"),
  shiftwiseEntry("sw_small", "ShiftwiseConv v2 SW-small"),
  shiftwiseEntry("sw_cpu", "tiny ShiftwiseConv for llvmpipe tests", 32),
];

const BY_NAME = new Map(ENTRIES.map((e) => [e.name, e]));

/** Every preset name. */
export const MODEL_NAMES: readonly string[] = ENTRIES.map((e) => e.name);

function entry(name: string): Entry {
  const e = BY_NAME.get(name);
  if (!e) throw new Error(`unknown model "${name}" (valid: ${MODEL_NAMES.join(", ")})`);
  return e;
}

/** Family, default input size and description of a preset (unknown name → error listing the valid ones). */
export function modelInfo(name: string): ModelInfo {
  const { build: _build, ...info } = entry(name);
  return info;
}

const isPosInt = (v: unknown): v is number => Number.isInteger(v) && (v as number) > 0;

/** Check override values (the trainer passes them untyped); a wrong one is a one-line error. */
function checkOverrides(name: string, o: Record<string, unknown>): ModelOverrides {
  for (const k of Object.keys(o)) {
    if (!(OVERRIDE_KEYS as readonly string[]).includes(k)) {
      reject(name, `override "${k}"`, `is unknown (valid: ${OVERRIDE_KEYS.join(", ")})`);
    }
  }
  const v = o as ModelOverrides;
  if (
    v.kernels !== undefined &&
    !(Array.isArray(v.kernels) && (v.kernels.length === 4 || v.kernels.length === 5) &&
      v.kernels.every(isPosInt))
  ) {
    reject(name, "kernels", `must be 4 or 5 positive integers, got ${JSON.stringify(v.kernels)}`);
  }
  if (v.smallKernel !== undefined && !isPosInt(v.smallKernel)) {
    reject(name, "smallKernel", `must be a positive integer, got ${v.smallKernel}`);
  }
  if (v.numClasses !== undefined && !isPosInt(v.numClasses)) {
    reject(name, "numClasses", `must be a positive integer, got ${v.numClasses}`);
  }
  if (v.widthFactor !== undefined && !(typeof v.widthFactor === "number" && v.widthFactor > 0)) {
    reject(name, "widthFactor", `must be a positive number, got ${v.widthFactor}`);
  }
  if (
    v.dropPath !== undefined &&
    !(typeof v.dropPath === "number" && v.dropPath >= 0 && v.dropPath < 1)
  ) {
    reject(name, "dropPath", `must be in [0, 1), got ${v.dropPath}`);
  }
  if (
    v.layerScaleInit !== undefined &&
    !(typeof v.layerScaleInit === "number" && Number.isFinite(v.layerScaleInit))
  ) {
    reject(name, "layerScaleInit", `must be a number, got ${v.layerScaleInit}`);
  }
  if (v.mode !== undefined && !["decomposed", "full", "merged"].includes(v.mode)) {
    reject(name, "mode", `must be decomposed, full or merged, got ${v.mode}`);
  }
  return v;
}

/**
 * Build a preset with optional overrides (parameters are declared, not
 * allocated: building needs no GPU). Unknown names and overrides, or an
 * override the family has no use for (kernels for ResNet, a small kernel
 * for ConvNeXt), are errors; `dropPath` and `layerScaleInit` are ignored by
 * families without drop path or LayerScale, so one training config serves
 * every family.
 */
export function createModel(name: string, overrides: ModelOverrides = {}): Classifier {
  const e = entry(name);
  return e.build(checkOverrides(name, overrides as Record<string, unknown>));
}
