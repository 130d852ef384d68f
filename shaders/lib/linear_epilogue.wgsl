// The fused epilogue of every linear kernel (linear.wgsl, linear_sg, linear_tiled.wgsl),
// appended to them by src/kernels/catalogue.rs like gelu.wgsl, so the modes are written once.
// epilogue_value() is what v = acc + bias becomes at y[o] as the kernel's `p.mode` says:
//   mode 0: y = v
//   mode 1: y = gelu(v)
//   mode 2: y = ca * y + cb * v    (SReT's residual with its learnable coefficients, in place)
// and epilogue() stores it, returning the stored value (rounded to `elem`) for the row
// statistics a kernel may write (shaders/lib/ln_row_stats.wgsl). Uses the kernel's `p` (its
// Params), its `y` binding and its `elem` storage type.
fn epilogue_value(o: u32, v: f32) -> elem {
    if (p.mode == 1u) {
        return elem(gelu(v));
    } else if (p.mode == 2u) {
        return elem(p.ca * f32(y[o]) + p.cb * v);
    }
    return elem(v);
}

fn epilogue(o: u32, v: f32) -> f32 {
    let e = epilogue_value(o, v);
    y[o] = e;
    return f32(e);
}
