/**
 * Plain CPU reference implementations (float64 loops) of every op, written
 * for clarity, not speed. GPU kernels are checked against these, and their
 * backward passes against finite differences of these.
 */

/** erf to double precision (Abramowitz–Stegun 7.1.26 is too coarse; this is a series/continued fraction). */
export function erf(x: number): number {
  const a = Math.abs(x);
  let r: number;
  if (a < 2.5) {
    // Maclaurin series: converges fast for |x| < 2.5.
    let term = a;
    let s = a;
    const z = a * a;
    for (let n = 1; n < 60; n++) {
      term *= -z / n;
      s += term / (2 * n + 1);
    }
    r = (2 / Math.sqrt(Math.PI)) * s;
  } else {
    // Continued fraction for erfc, evaluated bottom-up.
    let f = 0;
    for (let n = 60; n >= 1; n--) f = (n / 2) / (a + f);
    r = 1 - Math.exp(-a * a) / Math.sqrt(Math.PI) / (a + f);
  }
  return x < 0 ? -r : r;
}
