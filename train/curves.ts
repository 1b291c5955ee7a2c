/**
 * The learning-curve figure the trainer rewrites after every epoch: loss
 * (train and validation) and accuracy (top-1, top-5, EMA top-1) per epoch.
 *
 * @example
 * ```ts
 * import { plotCurves } from "./curves.ts";
 * await plotCurves([{ epoch: 1, train_loss: 1.2, val_loss: 1.1, top1: 40, top5: 90 }], "out/curves.png", "demo");
 * ```
 * @module
 */
import { type Series, writeLineChart } from "../analysis/plot.ts";

/** Write `path` (PNG, atomically) from the per-epoch rows of the CSV log. */
export async function plotCurves(
  rows: readonly Record<string, number>[],
  path: string,
  title: string,
): Promise<void> {
  const x = rows.map((r) => r.epoch);
  const series = (keys: [string, string][]): Series[] =>
    keys.filter(([k]) => rows.some((r) => Number.isFinite(r[k])))
      .map(([k, name]) => ({ name, x, y: rows.map((r) => r[k] ?? NaN), markers: true }));
  await writeLineChart(path, {
    title,
    subtitle: "per epoch",
    panels: [
      {
        title: "loss",
        xLabel: "epoch",
        yLabel: "cross-entropy",
        series: series([["train_loss", "train"], ["val_loss", "validation"]]),
        legend: "top-right",
      },
      {
        title: "validation accuracy",
        xLabel: "epoch",
        yLabel: "%",
        series: series([["top1", "top-1"], ["top5", "top-5"], ["ema_top1", "EMA top-1"]]),
        legend: "bottom-right",
      },
    ],
  });
}
