/**
 * A convolution followed by a batch norm, as every BN-using model here
 * chains them (SLaK's and RepLKNet's conv-BN branches, ResNet's bottlenecks
 * and stem). In training the two run as they are; in evaluation the batch
 * norm is folded into the convolution (`foldBatchNorm` in `ops/fold_bn.ts`:
 * new weights and bias computed on the GPU from the current parameters, one
 * small kernel over the weights) and one conv runs in place of the conv, the
 * statistics kernel and the normalising pass over its output.
 *
 * The fold is recomputed at every evaluation forward: weights change in
 * place without the module knowing (the optimiser, the EMA copy, which stays
 * in evaluation mode while its weights move every step), so a cached fold
 * could be stale. Reading and writing the weights costs less than reading
 * and writing the output only while the weights are the smaller of the two;
 * where they are not (a late stage at batch 1) the batch norm runs unfused.
 *
 * @example
 * ```ts
 * import { BatchNorm2d, Conv2d, Meta } from "./layers.ts";
 * import { convBatchNorm } from "./conv_bn.ts";
 * const conv = new Conv2d(3, 8, 3, { bias: false });
 * const bn = new BatchNorm2d(8);
 * console.log(convBatchNorm(conv, bn, new Meta([1, 3, 8, 8])).shape); // [1, 8, 8, 8]
 * ```
 * @module
 */
import { foldBatchNorm } from "../ops/fold_bn.ts";
import { numel, type Tensor } from "../ops/tensor.ts";
import { type BatchNorm2d, type Conv2d, pipe } from "./layers.ts";
import { Meta, type Value } from "./value.ts";

/**
 * `bn.forward(conv.forward(x))`; when `bn` is in evaluation mode, `x` a
 * tensor and the conv's weights no larger than its output, one convolution
 * with the batch norm folded in (equal within float rounding, and
 * differentiable in the same parameters).
 *
 * @example
 * ```ts
 * import { initGpu } from "../ops/gpu.ts";
 * import { Tensor } from "../ops/tensor.ts";
 * import { BatchNorm2d, Conv2d } from "./layers.ts";
 * import { convBatchNorm } from "./conv_bn.ts";
 * await initGpu();
 * const conv = new Conv2d(2, 4, 3);
 * const bn = new BatchNorm2d(4).eval();
 * const x = Tensor.randn([1, 2, 5, 5], { seed: 1 });
 * const folded = await convBatchNorm(conv, bn, x).read();
 * const plain = await bn.forward(conv.forward(x)).read();
 * console.log(folded.every((v, i) => Math.abs(v - plain[i]) < 1e-5)); // true
 * ```
 */
export function convBatchNorm<V extends Value>(conv: Conv2d, bn: BatchNorm2d, x: V): V {
  const outSize = numel(conv.outShape(x.shape));
  if (x instanceof Meta || bn.training || conv.weight.size > outSize) {
    return pipe(x, (v) => conv.forward(v), (v) => bn.forward(v));
  }
  if (bn.channels !== conv.outChannels) {
    throw new Error(
      `convBatchNorm: batch norm of ${bn.channels} channels after a conv of ${conv.outChannels}`,
    );
  }
  const folded = foldBatchNorm(conv.weight.tensor, conv.bias?.tensor ?? null, {
    weight: bn.weight.tensor,
    bias: bn.bias.tensor,
    mean: bn.runningMean.tensor,
    variance: bn.runningVar.tensor,
  }, bn.eps);
  const y = conv.convolve(x as Tensor, folded.weight, folded.bias);
  folded.weight.dispose();
  folded.bias.dispose();
  return y as V;
}
