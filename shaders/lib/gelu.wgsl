// Exact (erf-based) GELU, shared by every kernel with a GELU epilogue. src/kernels/catalogue.rs
// appends this file to those kernels' sources (WGSL module-scope declarations may come in any
// order), so it is defined once; it is not a kernel of its own.

// Complementary error function for z >= 0, Numerical Recipes' Chebyshev fit
// (fractional error < 1.2e-7).
fn erfc_pos(z: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 +
        t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 +
        t * (-0.82215223 + t * 0.17087277))))))));
    return t * exp(poly);
}

// gelu(v) = 0.5 v (1 + erf(v / sqrt 2)) = 0.5 v erfc(-v / sqrt 2), without cancellation for v < 0.
fn gelu(v: f32) -> f32 {
    let e = erfc_pos(abs(v) * 0.70710678118654752);
    if (v < 0.0) {
        return 0.5 * v * e;
    }
    return 0.5 * v * (2.0 - e);
}
