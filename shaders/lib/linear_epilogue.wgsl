// The fused epilogue of every linear kernel (linear.wgsl, linear_sg, linear_tiled.wgsl),
// appended to them by src/kernels/catalogue.rs like gelu.wgsl, so the modes are written once. It
// stores v = acc + bias at y[o] as the kernel's `p.mode` says:
//   mode 0: y = v
//   mode 1: y = gelu(v)
//   mode 2: y = ca * y + cb * v    (SReT's residual with its learnable coefficients, in place)
// using the kernel's `p` (its Params), its `y` binding and its `elem` storage type.
fn epilogue(o: u32, v: f32) {
    if (p.mode == 1u) {
        y[o] = elem(gelu(v));
    } else if (p.mode == 2u) {
        y[o] = elem(p.ca * f32(y[o]) + p.cb * v);
    } else {
        y[o] = elem(v);
    }
}
