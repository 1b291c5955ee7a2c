/**
 * torchvision's ResNet-50/101/152 (He et al., 2016; the "v1.5" variant, with
 * the stride on each Bottleneck's 3×3 conv), the CNN baselines of the ERF
 * tables (SLaK Table 6, RepLKNet Table 10). Key names follow torchvision's
 * state dict (`conv1.weight`, `bn1.*`, `layer1.0.conv1.weight`,
 * `layer1.0.downsample.0.weight`, `layer1.0.downsample.1.*`, `fc.*`), so its
 * checkpoints load by their own keys, and so does its init: convs
 * kaiming_normal(fan_out, relu) without bias, BatchNorm weight 1 bias 0,
 * optionally the last BN of each block zeroed, `fc` PyTorch's default.
 *
 * FLOPs are counted as fvcore counts them: convs, `fc`, eval BatchNorm
 * (2·numel) and the global average pool (`adaptive_avg_pool2d`, numel of its
 * input); ReLU, max pool and the residual adds are not counted. That gives
 * ResNet-50 4.11G and ResNet-101 7.83G MACs at 224²; the papers' 7.9G for
 * ResNet-101 is fvcore run on a model left in training mode, where BatchNorm
 * counts 5·numel (7.88G; ResNet-50 4.14G, still the papers' 4.1G).
 *
 * @example
 * ```ts
 * import { resnet, RESNET_PRESETS } from "./resnet.ts";
 * const m = resnet(RESNET_PRESETS.resnet50);
 * console.log(m.numParams()); // 25557032 (torchvision's count)
 * ```
 * @module
 */
import {
  add,
  BatchNorm2d,
  Conv2d,
  drop,
  Linear,
  MaxPool2d,
  meanHW,
  Meta,
  pipe,
  recordFlops,
  relu,
  Sequential,
  type Value,
} from "./layers.ts";
import { type Classifier, type Init, Module } from "./module.ts";
import { convBatchNorm } from "./conv_bn.ts";

/** Configuration of a Bottleneck ResNet. */
export interface ResNetConfig {
  /** Blocks per stage (`layer1`…`layer4`). */
  layers: number[];
  /** Stem channels and layer1's bottleneck width; stage s has `width·2^s`, outputs ×4 (torchvision: 64). */
  width?: number;
  numClasses?: number;
  inChans?: number;
  /** Zero-init the last BN (`bn3`) of each block, torchvision's `zero_init_residual` (default off). */
  zeroInitResidual?: boolean;
}

/** torchvision's Bottleneck ResNets, and a tiny CPU preset for tests and llvmpipe demos. */
export const RESNET_PRESETS = {
  resnet50: { layers: [3, 4, 6, 3] },
  resnet101: { layers: [3, 4, 23, 3] },
  resnet152: { layers: [3, 8, 36, 3] },
  resnet_cpu: { layers: [1, 1, 1, 1], width: 8 },
} satisfies Record<string, ResNetConfig>;

/** The channel expansion of torchvision's Bottleneck (`planes · 4` outputs). */
export const BOTTLENECK_EXPANSION = 4;

/** torchvision's conv init: kaiming_normal_(mode="fan_out", nonlinearity="relu"), std √(2 / (out·kh·kw)). */
function kaimingFanOut(outChannels: number, kh: number, kw: number): Init {
  return { kind: "normal", std: Math.sqrt(2 / (outChannels * kh * kw)) };
}

/** A bias-free conv with torchvision's init (`conv1x1`, `conv3x3`, the stem). */
function convNoBias(cin: number, cout: number, k: number, stride = 1): Conv2d {
  return new Conv2d(cin, cout, k, {
    stride,
    padding: Math.floor(k / 2),
    bias: false,
    weightInit: kaimingFanOut(cout, k, k),
  });
}

/**
 * torchvision's `AdaptiveAvgPool2d((1, 1))` and the flatten after it:
 * [N,C,H,W] → [N,C]. Counted as fvcore counts `adaptive_avg_pool2d` (kind
 * `pool`, one MAC per input element), unlike {@linkcode meanHW} alone
 * (`aten::mean`, which fvcore skips).
 *
 * @example
 * ```ts
 * import { Meta } from "./layers.ts";
 * import { GlobalAvgPool } from "./resnet.ts";
 * console.log(new GlobalAvgPool().forward(new Meta([2, 2048, 7, 7])).shape); // [2, 2048]
 * ```
 */
export class GlobalAvgPool extends Module {
  forward<V extends Value>(x: V): V {
    if (x.shape.length !== 4) {
      throw new Error(`GlobalAvgPool: expected [N, C, H, W], got [${x.shape}]`);
    }
    if (x instanceof Meta) recordFlops({ module: this, kind: "pool", macs: x.size });
    return meanHW(x);
  }
}

/**
 * torchvision's Bottleneck: 1×1 → 3×3 (stride) → 1×1 (×4), BN after each, ReLU, residual.
 *
 * @example
 * ```ts
 * import { Meta } from "./layers.ts";
 * import { Bottleneck } from "./resnet.ts";
 * const block = new Bottleneck(64, 16, 2, false); // in 64, width 16 (out 64), stride 2
 * console.log(block.forward(new Meta([1, 64, 8, 8])).shape); // [1, 64, 4, 4]
 * ```
 */
export class Bottleneck extends Module {
  readonly conv1: Conv2d;
  readonly bn1: BatchNorm2d;
  readonly conv2: Conv2d;
  readonly bn2: BatchNorm2d;
  readonly conv3: Conv2d;
  readonly bn3: BatchNorm2d;
  readonly downsample: Sequential | null;

  constructor(inplanes: number, planes: number, stride: number, zeroInitResidual: boolean) {
    super();
    const out = planes * BOTTLENECK_EXPANSION;
    this.conv1 = this.child("conv1", convNoBias(inplanes, planes, 1));
    this.bn1 = this.child("bn1", new BatchNorm2d(planes));
    this.conv2 = this.child("conv2", convNoBias(planes, planes, 3, stride));
    this.bn2 = this.child("bn2", new BatchNorm2d(planes));
    this.conv3 = this.child("conv3", convNoBias(planes, out, 1));
    this.bn3 = this.child(
      "bn3",
      new BatchNorm2d(out, 1e-5, 0.1, { kind: zeroInitResidual ? "zeros" : "ones" }),
    );
    this.downsample = stride !== 1 || inplanes !== out
      ? this.child(
        "downsample",
        new Sequential(convNoBias(inplanes, out, 1, stride), new BatchNorm2d(out)),
      )
      : null;
  }

  forward<V extends Value>(x: V): V {
    const y = pipe(
      x,
      (v) => convBatchNorm(this.conv1, this.bn1, v),
      (v) => relu(v),
      (v) => convBatchNorm(this.conv2, this.bn2, v),
      (v) => relu(v),
      (v) => convBatchNorm(this.conv3, this.bn3, v),
    );
    const ds = this.downsample?.layers as [Conv2d, BatchNorm2d] | undefined;
    const identity = ds ? convBatchNorm(ds[0], ds[1], x) : x;
    const sum = add(y, identity);
    drop(y, sum);
    if (identity !== x) drop(identity, sum);
    const out = relu(sum);
    drop(sum, out);
    return out;
  }
}

/**
 * torchvision's ResNet with Bottleneck blocks.
 *
 * @example
 * ```ts
 * import { Meta } from "./layers.ts";
 * import { ResNet, RESNET_PRESETS } from "./resnet.ts";
 * const model = new ResNet({ ...RESNET_PRESETS.resnet_cpu, numClasses: 10 });
 * console.log(model.forward(new Meta([1, 3, 64, 64])).shape); // [1, 10]
 * ```
 */
export class ResNet extends Module implements Classifier {
  readonly conv1: Conv2d;
  readonly bn1: BatchNorm2d;
  readonly maxpool: MaxPool2d;
  readonly stages: Sequential[];
  readonly avgpool: GlobalAvgPool;
  readonly fc: Linear;
  readonly config: Required<ResNetConfig>;

  constructor(config: ResNetConfig) {
    super();
    const c: Required<ResNetConfig> = {
      width: 64,
      numClasses: 1000,
      inChans: 3,
      zeroInitResidual: false,
      ...config,
    };
    this.config = c;
    if (c.layers.length !== 4 || c.layers.some((n) => !(n >= 1))) {
      throw new Error(`ResNet: layers needs 4 positive block counts, got [${c.layers}]`);
    }
    this.conv1 = this.child("conv1", convNoBias(c.inChans, c.width, 7, 2));
    this.bn1 = this.child("bn1", new BatchNorm2d(c.width));
    this.maxpool = this.child("maxpool", new MaxPool2d(3, 2, 1));
    let inplanes = c.width;
    this.stages = c.layers.map((blocks, s) => {
      const planes = c.width * 2 ** s;
      const stage = new Sequential(
        ...Array.from({ length: blocks }, (_, b) => {
          const block = new Bottleneck(
            inplanes,
            planes,
            b === 0 && s > 0 ? 2 : 1,
            c.zeroInitResidual,
          );
          inplanes = planes * BOTTLENECK_EXPANSION;
          return block;
        }),
      );
      return this.child(`layer${s + 1}`, stage);
    });
    this.avgpool = this.child("avgpool", new GlobalAvgPool());
    this.fc = this.child("fc", new Linear(inplanes, c.numClasses));
  }

  /** Output of `layer4`, [N, 32·width, H/32, W/32] (the map the ERF analysis uses). */
  forwardFeatures<V extends Value>(x: V): V {
    return pipe(
      x,
      (v) => convBatchNorm(this.conv1, this.bn1, v),
      (v) => relu(v),
      (v) => this.maxpool.forward(v),
      ...this.stages.map((stage) => (v: V) => stage.forward(v)),
    );
  }

  /** Logits [N, numClasses]. */
  forward<V extends Value>(x: V): V {
    return pipe(
      x,
      (v) => this.forwardFeatures(v),
      (v) => this.avgpool.forward(v),
      (v) => this.fc.forward(v),
    );
  }
}

/** Build a ResNet from a config (see {@linkcode RESNET_PRESETS}). */
export function resnet(config: ResNetConfig): ResNet {
  return new ResNet(config);
}
