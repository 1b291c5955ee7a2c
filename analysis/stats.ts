/**
 * Error bars over seeds: the mean and its two-sided Student-t confidence
 * interval (mean ± t₍₁₊ₗ₎/₂,ₙ₋₁ · s/√n), and the Student-t quantile it needs,
 * computed from the regularised incomplete beta function (no table, any
 * degrees of freedom).
 *
 * @example
 * ```ts
 * import { meanCi, studentTQuantile } from "./stats.ts";
 * console.log(studentTQuantile(0.975, 2).toFixed(3)); // 4.303
 * const ci = meanCi([80, 82, 84]);
 * console.log(ci.mean, ci.half.toFixed(2)); // 82 4.97
 * ```
 * @module
 */

/** Mean, sample standard deviation and a two-sided confidence interval. */
export interface MeanCi {
  n: number;
  mean: number;
  /** Sample standard deviation (n − 1 in the denominator); NaN for one value. */
  sd: number;
  /** Half-width of the interval; NaN below two values. */
  half: number;
  lo: number;
  hi: number;
  /** Confidence level, e.g. 0.95. */
  level: number;
}

/** ln Γ(x) for x > 0 (Lanczos, g = 7, nine terms; ~15 significant digits). */
function lnGamma(x: number): number {
  const c = [
    0.99999999999980993,
    676.5203681218851,
    -1259.1392167224028,
    771.32342877765313,
    -176.61502916214059,
    12.507343278686905,
    -0.13857109526572012,
    9.9843695780195716e-6,
    1.5056327351493116e-7,
  ];
  if (x < 0.5) return Math.log(Math.PI / Math.sin(Math.PI * x)) - lnGamma(1 - x);
  const z = x - 1;
  let a = c[0];
  const t = z + 7.5;
  for (let i = 1; i < 9; i++) a += c[i] / (z + i);
  return 0.5 * Math.log(2 * Math.PI) + (z + 0.5) * Math.log(t) - t + Math.log(a);
}

/** Continued fraction of the incomplete beta function (modified Lentz). */
function betaFraction(x: number, a: number, b: number): number {
  const tiny = 1e-300;
  let c = 1;
  let d = 1 - ((a + b) * x) / (a + 1);
  if (Math.abs(d) < tiny) d = tiny;
  d = 1 / d;
  let h = d;
  for (let m = 1; m <= 300; m++) {
    const m2 = 2 * m;
    let aa = (m * (b - m) * x) / ((a + m2 - 1) * (a + m2));
    d = 1 + aa * d;
    if (Math.abs(d) < tiny) d = tiny;
    c = 1 + aa / c;
    if (Math.abs(c) < tiny) c = tiny;
    d = 1 / d;
    h *= d * c;
    aa = (-(a + m) * (a + b + m) * x) / ((a + m2) * (a + m2 + 1));
    d = 1 + aa * d;
    if (Math.abs(d) < tiny) d = tiny;
    c = 1 + aa / c;
    if (Math.abs(c) < tiny) c = tiny;
    d = 1 / d;
    const step = d * c;
    h *= step;
    if (Math.abs(step - 1) < 1e-15) break;
  }
  return h;
}

/**
 * The regularised incomplete beta function I_x(a, b), 0 ≤ x ≤ 1.
 *
 * @example
 * ```ts
 * import { incompleteBeta } from "./stats.ts";
 * console.log(incompleteBeta(0.5, 2, 2)); // 0.5 (symmetric)
 * ```
 */
export function incompleteBeta(x: number, a: number, b: number): number {
  if (x <= 0) return 0;
  if (x >= 1) return 1;
  const front = Math.exp(
    lnGamma(a + b) - lnGamma(a) - lnGamma(b) + a * Math.log(x) + b * Math.log(1 - x),
  );
  // The fraction converges fast on the side of the mean; use the symmetry on the other.
  return x < (a + 1) / (a + b + 2)
    ? (front * betaFraction(x, a, b)) / a
    : 1 - (front * betaFraction(1 - x, b, a)) / b;
}

/**
 * P(T ≤ t) for Student's t with `df` degrees of freedom.
 *
 * @example
 * ```ts
 * import { studentTCdf } from "./stats.ts";
 * console.log(studentTCdf(0, 5), studentTCdf(12.706, 1).toFixed(4)); // 0.5 0.9750
 * ```
 */
export function studentTCdf(t: number, df: number): number {
  const tail = 0.5 * incompleteBeta(df / (df + t * t), df / 2, 0.5);
  return t >= 0 ? 1 - tail : tail;
}

/**
 * The p-quantile of Student's t with `df` > 0 degrees of freedom (bisection
 * on {@linkcode studentTCdf} to 1e-12). Bad input throws one line.
 *
 * @example
 * ```ts
 * import { studentTQuantile } from "./stats.ts";
 * console.log(studentTQuantile(0.975, 4).toFixed(3), studentTQuantile(0.975, 29).toFixed(3)); // 2.776 2.045
 * ```
 */
export function studentTQuantile(p: number, df: number): number {
  if (!(p > 0 && p < 1)) throw new Error(`studentTQuantile: p must be in (0, 1), got ${p}`);
  if (!(df > 0)) throw new Error(`studentTQuantile: df must be positive, got ${df}`);
  if (p === 0.5) return 0;
  if (p < 0.5) return -studentTQuantile(1 - p, df);
  let lo = 0;
  let hi = 1;
  while (studentTCdf(hi, df) < p) hi *= 2;
  while (hi - lo > 1e-12 * Math.max(1, hi)) {
    const mid = (lo + hi) / 2;
    if (studentTCdf(mid, df) < p) lo = mid;
    else hi = mid;
  }
  return (lo + hi) / 2;
}

/**
 * Mean of `values` with its two-sided Student-t confidence interval at
 * `level` (default 95%). With one value the spread is unknown: `sd`, `half`,
 * `lo` and `hi` are NaN (no interval is better than a made-up one).
 *
 * @example
 * ```ts
 * import { meanCi } from "./stats.ts";
 * const c = meanCi([1, 2, 3, 4]);
 * console.log(c.mean, c.lo.toFixed(3), c.hi.toFixed(3)); // 2.5 0.446 4.554
 * ```
 */
export function meanCi(values: readonly number[], level = 0.95): MeanCi {
  const n = values.length;
  if (n === 0) throw new Error("meanCi: no values");
  if (!(level > 0 && level < 1)) throw new Error(`meanCi: level must be in (0, 1), got ${level}`);
  const mean = values.reduce((a, v) => a + v, 0) / n;
  if (n < 2) return { n, mean, sd: NaN, half: NaN, lo: NaN, hi: NaN, level };
  const sd = Math.sqrt(values.reduce((a, v) => a + (v - mean) ** 2, 0) / (n - 1));
  const half = studentTQuantile((1 + level) / 2, n - 1) * sd / Math.sqrt(n);
  return { n, mean, sd, half, lo: mean - half, hi: mean + half, level };
}
