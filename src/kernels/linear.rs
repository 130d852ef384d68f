//! `nn.Linear` as a register-tiled matrix multiply with its epilogue fused.

use crate::gpu::{Family, KernelKey, ProgramBuilder, Shader, TensorId};

/// What happens to `x W^T + b` before it is stored.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Epilogue {
    /// `y = x W^T + b`
    Bias,
    /// `y = gelu(x W^T + b)` (exact, erf-based)
    Gelu,
    /// `y = ca * y + cb * (x W^T + b)`: SReT's residual with its learnable coefficients, in place.
    Residual { ca: f32, cb: f32 },
}

#[allow(clippy::too_many_arguments)]
pub fn record(
    b: &mut ProgramBuilder,
    family: Family,
    m: usize,
    k: usize,
    n: usize,
    epilogue: Epilogue,
    x: TensorId,
    weight: TensorId,
    bias: TensorId,
    y: TensorId,
) {
    let (mode, ca, cb) = match epilogue {
        Epilogue::Bias => (0, 0.0f32, 0.0f32),
        Epilogue::Gelu => (1, 0.0, 0.0),
        Epilogue::Residual { ca, cb } => (2, ca, cb),
    };
    let tiles = m.div_ceil(4) * n.div_ceil(4);
    let grid = b.grid(tiles, 64);
    b.dispatch(
        family,
        KernelKey::plain(Shader::Linear),
        &[
            m as u32,
            k as u32,
            n as u32,
            mode,
            ca.to_bits(),
            cb.to_bits(),
        ],
        &[x, weight, bias, y],
        grid,
    );
}
