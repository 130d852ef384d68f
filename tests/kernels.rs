//! Every GPU kernel against its CPU twin in `sret_tome::reference`, on fresh random inputs,
//! several shapes including ragged ones, with outputs poisoned (NaN) before the run.
//! Tolerance: max |gpu - cpu| / max(1, |cpu|) <= 2e-5 unless a test says otherwise (f32 on the
//! GPU against f64 accumulation on the CPU; the sums here are at most a few hundred terms).
//! Every kernel also runs in its f16-storage variant where the adapter has `SHADER_F16`: inputs
//! and weights rounded to f16 for both sides (and intermediate tensors where the GPU stores
//! them), tolerance 2e-3 (see `common::tol`).

mod common;

use common::*;
use sret_tome::kernels::attention::{self, AttentionShape};
use sret_tome::kernels::catalogue::SG_WIDTHS;
use sret_tome::kernels::conv::{self, ConvIo, ConvShape, Layout};
use sret_tome::kernels::linear::{self, Epilogue};
use sret_tome::kernels::program::subgroup_width;
use sret_tome::kernels::tokens::{record_copy, TokenCopy};
use sret_tome::kernels::{merge, mlp, norm};
use sret_tome::kernels::{Family, Kernel, Variant, Variants};
use sret_tome::model::weights::{Conv, LayerNorm, Linear};
use sret_tome::reference as cpu;
use sret_tome::tome::Split;

/// The kernel variants to check: the portable kernels (`None`) and, where the adapter has
/// subgroups, the `*_sg` kernels at every width from 4 up to the adapter's (a workgroup
/// narrower than the subgroup is one partial subgroup, where broadcasts from its lanes are as
/// defined as in a full one; this also covers SwiftShader's 4 lanes on an 8- or 16-lane
/// lavapipe).
fn sg_variants() -> Vec<Option<u32>> {
    // Every width the kernels can run at on this adapter, up to its whole subgroup (also where
    // the engine picks fewer lanes, as on lavapipe of Mesa 25 at 16 lanes).
    let mut v = vec![None];
    if subgroup_width(gpu()).is_some() {
        let lanes = gpu().info.subgroup_min_size;
        v.extend(SG_WIDTHS.into_iter().filter(|&s| s <= lanes).map(Some));
    }
    v
}

fn nchw_to_tokens(x: &[f32], b: usize, c: usize, hw: usize) -> Vec<f32> {
    let mut y = vec![0.0; x.len()];
    for i in 0..b {
        for ch in 0..c {
            for t in 0..hw {
                y[(i * hw + t) * c + ch] = x[(i * c + ch) * hw + t];
            }
        }
    }
    y
}

#[allow(clippy::too_many_arguments)]
fn check_conv(
    seed: u64,
    batch: usize,
    cin: usize,
    h: usize,
    cout: usize,
    groups: usize,
    input: Layout,
    output: Layout,
    relu: bool,
    pos: bool,
) {
    let k = 3;
    let conv0 = Conv {
        weight: random(seed, cout * (cin / groups) * k * k, 0.5),
        bias: random(seed + 1, cout, 0.1),
        out_channels: cout,
        in_channels: cin,
        kernel: k,
        stride: 2,
        padding: 1,
        groups,
    };
    let x0 = random(seed + 2, batch * cin * h * h, 1.0);
    // A prefix of it is the positional embedding (oh * ow <= h * h).
    let pos0 = random(seed + 3, cout * h * h, 0.2);
    for f16 in precisions() {
        check_conv_in(
            f16, &conv0, &x0, &pos0, batch, cin, h, cout, groups, input, output, relu, pos,
        );
    }
}

#[allow(clippy::too_many_arguments)]
fn check_conv_in(
    f16: bool,
    conv0: &Conv,
    x0: &[f32],
    pos0: &[f32],
    batch: usize,
    cin: usize,
    h: usize,
    cout: usize,
    groups: usize,
    input: Layout,
    output: Layout,
    relu: bool,
    pos: bool,
) {
    let k = conv0.kernel;
    let conv = Conv {
        weight: rounded(&conv0.weight, f16),
        bias: rounded(&conv0.bias, f16),
        ..conv0.clone()
    };
    let x_nchw = rounded(x0, f16);
    let (mut want, oh, ow) = cpu::conv2d(&x_nchw, batch, h, h, &conv);
    if relu {
        cpu::relu(&mut want);
    }
    let pos_data = rounded(&pos0[..cout * oh * ow], f16);
    if pos {
        for i in 0..batch {
            for (j, p) in pos_data.iter().enumerate() {
                want[i * cout * oh * ow + j] += p;
            }
        }
    }
    if output == Layout::Tokens {
        want = nchw_to_tokens(&want, batch, cout, oh * ow);
    }
    let x_in = if input == Layout::Tokens {
        nchw_to_tokens(&x_nchw, batch, cin, h * h)
    } else {
        x_nchw
    };
    // Dense convolutions also have subgroup variants; check every width that can run.
    for sg in sg_variants() {
        let got = run(|b| {
            b.set_subgroup_width(sg);
            b.set_f16(f16);
            let x = b.weights("x", &x_in);
            let (w, bias) = conv::upload(b, "conv", &conv);
            let p = pos.then(|| b.weights("pos", &pos_data));
            let y = b.activation("y", batch * cout * oh * ow);
            let shape = ConvShape {
                batch,
                cin,
                h,
                w: h,
                cout,
                k,
                stride: 2,
                pad: 1,
                groups,
            };
            conv::record(
                b,
                Family::Stem,
                shape,
                ConvIo {
                    x,
                    weight: w,
                    bias,
                    pos: p,
                    y,
                    input,
                    output,
                    relu,
                },
            );
            vec![y]
        });
        let err = max_rel_err(&decode(&got[0], f16, want.len()), &want);
        expect(err <= tol(f16), || {
            format!("{} (tolerance {:e})", format_args!("conv {cin}->{cout} g{groups} {h}x{h} (subgroup width: {sg:?}, f16: {f16}): error {err}"), tol(f16))
        });
    }
}

#[test]
fn conv_stem_layers_match_cpu() {
    let _cases = Cases::new();
    // Ragged channel counts (not multiples of the 4-channel tile) and odd sizes.
    check_conv(1, 2, 3, 17, 6, 1, Layout::Nchw, Layout::Nchw, true, false);
    check_conv(2, 1, 5, 12, 8, 1, Layout::Nchw, Layout::Nchw, true, false);
    check_conv(3, 3, 4, 14, 7, 1, Layout::Nchw, Layout::Tokens, true, true);
    // Several pixel and channel tiles of the subgroup kernel, ragged in both.
    check_conv(5, 2, 6, 33, 70, 1, Layout::Nchw, Layout::Nchw, false, false);
    check_conv(6, 1, 9, 20, 64, 1, Layout::Nchw, Layout::Tokens, true, true);
}

#[test]
fn conv_pooling_matches_cpu() {
    let _cases = Cases::new();
    // Grouped conv between stages: groups = in channels, two outputs per input channel.
    check_conv(
        4,
        2,
        8,
        14,
        16,
        8,
        Layout::Tokens,
        Layout::Tokens,
        false,
        false,
    );
    check_conv(
        5,
        1,
        6,
        7,
        12,
        6,
        Layout::Tokens,
        Layout::Tokens,
        false,
        false,
    );
    // Through an unmerge map, as after a stage that merged.
    check_unmerged_pooling(7, 2, 8, 14, 8);
    check_unmerged_pooling(8, 1, 6, 7, 6);
}

/// The pooling reading a merged sequence through the stage's unmerge map (the unmerge stack
/// folded into its loads) against the CPU's gather-then-convolve, on poisoned outputs; lead
/// tokens in front of the sequence are never read.
fn check_unmerged_pooling(seed: u64, batch: usize, cin: usize, h: usize, groups: usize) {
    let (cout, k, lead, n_in) = (2 * cin, 3, 1, h * h / 2 + 3);
    let conv0 = Conv {
        weight: random(seed, cout * (cin / groups) * k * k, 0.5),
        bias: random(seed + 1, cout, 0.1),
        out_channels: cout,
        in_channels: cin,
        kernel: k,
        stride: 2,
        padding: 1,
        groups,
    };
    let seq0 = random(seed + 2, batch * n_in * cin, 1.0);
    // Every grid position maps to some merged token after the lead one, some tokens to many.
    let tokens = (n_in - lead) as f32;
    let map: Vec<u32> = random(seed + 3, batch * h * h, 1.0)
        .iter()
        .map(|&v| (lead + (((v + 1.0) * 0.5 * tokens) as usize).min(n_in - lead - 1)) as u32)
        .collect();
    for f16 in precisions() {
        let conv = Conv {
            weight: rounded(&conv0.weight, f16),
            bias: rounded(&conv0.bias, f16),
            ..conv0.clone()
        };
        let seq = rounded(&seq0, f16);
        let mut grid_nchw = vec![0.0; batch * cin * h * h];
        for i in 0..batch {
            for t in 0..h * h {
                let tok = map[i * h * h + t] as usize;
                for ch in 0..cin {
                    grid_nchw[(i * cin + ch) * h * h + t] = seq[(i * n_in + tok) * cin + ch];
                }
            }
        }
        let (want, oh, ow) = cpu::conv2d(&grid_nchw, batch, h, h, &conv);
        let want = nchw_to_tokens(&want, batch, cout, oh * ow);
        let got = run(|b| {
            b.set_f16(f16);
            let x = b.weights("sequence", &seq);
            let m = b.constant("unmerge map", &map);
            let (w, bias) = conv::upload(b, "pool", &conv);
            let y = b.activation("y", batch * cout * oh * ow);
            let shape = ConvShape {
                batch,
                cin,
                h,
                w: h,
                cout,
                k,
                stride: 2,
                pad: 1,
                groups,
            };
            let input = Layout::Unmerged(merge::Unmerge {
                map: m,
                tokens: n_in,
            });
            let io = ConvIo {
                x,
                weight: w,
                bias,
                pos: None,
                y,
                input,
                output: Layout::Tokens,
                relu: false,
            };
            conv::record(b, Family::Pooling, shape, io);
            vec![y]
        });
        let err = max_rel_err(&decode(&got[0], f16, want.len()), &want);
        expect(err <= tol(f16), || {
            format!(
                "unmerged pooling {cin}->{cout} g{groups} {h}x{h} (f16: {f16}): error {err} \
                 (tolerance {:e})",
                tol(f16)
            )
        });
    }
}

#[test]
fn layer_norm_matches_cpu() {
    let _cases = Cases::new();
    for (seed, rows, c) in [(10u64, 37usize, 67usize), (11, 5, 256), (12, 130, 3)] {
        let x: Vec<f32> = random(seed, rows * c, 2.0)
            .iter()
            .map(|v| v + 0.7)
            .collect();
        let ln = LayerNorm {
            weight: random(seed + 1, c, 1.0),
            bias: random(seed + 2, c, 0.5),
        };
        for f16 in precisions() {
            let (x, ln) = (
                rounded(&x, f16),
                LayerNorm {
                    weight: rounded(&ln.weight, f16),
                    bias: rounded(&ln.bias, f16),
                },
            );
            let want = cpu::layer_norm(&x, rows, &ln, 1e-6);
            let got = run(|b| {
                b.set_f16(f16);
                let xt = b.weights("x", &x);
                let g = b.weights("g", &ln.weight);
                let be = b.weights("b", &ln.bias);
                let y = b.activation("y", rows * c);
                norm::layer_norm(b, Family::Mlp, rows, c, 1e-6, xt, g, be, y);
                vec![y]
            });
            let err = max_rel_err(&decode(&got[0], f16, want.len()), &want);
            expect(err <= tol(f16), || {
                format!(
                    "{} (tolerance {:e})",
                    format_args!("layernorm {rows}x{c} (f16: {f16}): {err}"),
                    tol(f16)
                )
            });
        }
    }
}

#[test]
fn mean_tokens_matches_cpu() {
    let _cases = Cases::new();
    let (batch, n, c) = (3, 49, 21);
    for f16 in precisions() {
        let x = rounded(&random(20, batch * n * c, 1.0), f16);
        let want = cpu::mean_tokens(&x, batch, n, c);
        let got = run(|b| {
            b.set_f16(f16);
            let xt = b.weights("x", &x);
            let y = b.activation("y", batch * c);
            norm::mean_tokens(b, Family::Head, batch, n, c, xt, None, y);
            vec![y]
        });
        let err = max_rel_err(&decode(&got[0], f16, want.len()), &want);
        expect(err <= tol(f16), || {
            format!(
                "{} (tolerance {:e})",
                format_args!("mean tokens (f16: {f16}): {err}"),
                tol(f16)
            )
        });
        // The mean of a grid read through an unmerge map from a merged sequence of 20 tokens
        // (as SReT's head reads its last stage): the gather then the mean on the CPU.
        let merged = 20;
        let map: Vec<u32> = (0..batch * n)
            .map(|i| ((i * 7 + i / 5) % merged) as u32)
            .collect();
        let grid: Vec<f32> = (0..batch * n * c)
            .map(|i| {
                let (t, ch) = (i / c, i % c);
                x[((t / n) * merged + map[t] as usize) * c + ch]
            })
            .collect();
        let want = cpu::mean_tokens(&grid, batch, n, c);
        let got = run(|b| {
            b.set_f16(f16);
            let xt = b.weights("merged", &x[..batch * merged * c]);
            let m = b.constant("unmerge map", &map);
            let y = b.activation("y", batch * c);
            let via = Some(merge::Unmerge {
                map: m,
                tokens: merged,
            });
            norm::mean_tokens(b, Family::Head, batch, n, c, xt, via, y);
            vec![y]
        });
        let err = max_rel_err(&decode(&got[0], f16, want.len()), &want);
        expect(err <= tol(f16), || {
            format!(
                "mean through a map (f16: {f16}): {err} (tolerance {:e})",
                tol(f16)
            )
        });
    }
}

/// Every linear kernel: the portable and the workgroup-tiled one (no subgroups; the latter
/// where the adapter allows it, as every WebGPU adapter does), and the subgroup kernels at
/// every width of [`sg_variants`].
fn linear_variants() -> Vec<(Option<u32>, Variant)> {
    let mut v = vec![(None, Variant::Portable)];
    if linear::tiled_fits(&gpu().limits) {
        v.push((None, Variant::Tiled));
    }
    v.extend(
        sg_variants()
            .into_iter()
            .flatten()
            .map(|sg| (Some(sg), Variant::Subgroup)),
    );
    v
}

#[test]
fn linear_matches_cpu_for_every_epilogue() {
    let _cases = Cases::new();
    for (seed, m, k, n) in [
        (30u64, 37usize, 23usize, 45usize),
        (31, 64, 64, 192),
        (32, 5, 230, 64),
        (33, 1, 256, 1000),
        // Subgroup kernels: 32 + 13 rows (one 48-row last tile), 32 + 32 + 8 (a 32-row tile and
        // a 40-row last tile), 13 rows (a 16-row tile alone; 37, 5 and 1 above: one 40-row and
        // two 8-row tiles).
        (34, 45, 64, 128),
        (35, 72, 96, 70),
        (38, 13, 48, 96),
        // 2 x 32 + 20 rows (the last 32-row tile runs whole, 20 > 16) and 4 x 32 + 13 (three
        // 32-row tiles and a 48-row one); 84 and 141 rows are partial 64-row tiles of the tiled
        // kernel, 200 columns a partial 64-column one.
        (36, 84, 40, 64),
        (37, 141, 32, 200),
    ] {
        for f16 in precisions() {
            let lin = Linear {
                weight: rounded(&random(seed, n * k, (3.0 / k as f32).sqrt()), f16),
                bias: rounded(&random(seed + 1, n, 0.1), f16),
                out_features: n,
                in_features: k,
            };
            let x = rounded(&random(seed + 2, m * k, 1.0), f16);
            let y0 = rounded(&random(seed + 3, m * n, 1.0), f16);
            let base = cpu::linear(&x, m, &lin);
            for ep in [
                Epilogue::Bias,
                Epilogue::Gelu,
                Epilogue::Residual { ca: 0.9, cb: 0.7 },
            ] {
                let want: Vec<f32> = match ep {
                    Epilogue::Bias => base.clone(),
                    Epilogue::Gelu => {
                        let mut v = base.clone();
                        cpu::gelu(&mut v);
                        v
                    }
                    Epilogue::Residual { ca, cb } => {
                        y0.iter().zip(&base).map(|(r, v)| ca * r + cb * v).collect()
                    }
                };
                // The in-place residual's output starts as the residual stream, so it is not poisoned.
                let residual = matches!(ep, Epilogue::Residual { .. });
                for (sg, v) in linear_variants() {
                    let got = run_opts(!residual, |b| {
                        b.set_subgroup_width(sg);
                        b.set_f16(f16);
                        b.set_variants(Variants {
                            linear: v,
                            ..Variants::default()
                        });
                        let xt = b.weights("x", &x);
                        let w = linear::upload(b, "w", &lin);
                        let y = if residual {
                            b.weights("y0", &y0)
                        } else {
                            b.activation("y", m * n)
                        };
                        linear::record(b, Family::Mlp, m, &w, ep, xt, y);
                        vec![y]
                    });
                    let err = max_rel_err(&decode(&got[0], f16, want.len()), &want);
                    expect(err <= tol(f16), || {
                        format!("{} (tolerance {:e})", format_args!("linear {m}x{k}x{n} {ep:?} ({v:?}, subgroup width: {sg:?}, f16: {f16}): {err}"), tol(f16))
                    });
                }
            }
        }
    }
}

/// The CPU twin of `lin(ln(x))` over `m` rows as the GPU computes it from `folded`
/// ([`linear::fold_layer_norm`] of the pair). f32: LayerNorm then Linear, the module pair
/// itself. f16: the folded weights are what is stored (rounded), so the twin is LayerNorm
/// without affine, then the rounded fold.
fn layer_norm_then_linear(
    x: &[f32],
    m: usize,
    ln: &LayerNorm,
    lin: &Linear,
    folded: &Linear,
    f16: bool,
) -> Vec<f32> {
    if !f16 {
        return cpu::linear(&cpu::layer_norm(x, m, ln, 1e-6), m, lin);
    }
    let plain = LayerNorm {
        weight: vec![1.0; ln.weight.len()],
        bias: vec![0.0; ln.bias.len()],
    };
    let stored = Linear {
        weight: rounded(&folded.weight, true),
        bias: rounded(&folded.bias, true),
        ..folded.clone()
    };
    cpu::linear(&cpu::layer_norm(x, m, &plain, 1e-6), m, &stored)
}

/// `m` random rows `k` wide whose means are far from zero (a few units apart, so a one-pass
/// variance would cancel), a LayerNorm over them and a `k -> n` linear layer after it.
fn ln_linear_case(seed: u64, m: usize, k: usize, n: usize) -> (Vec<f32>, LayerNorm, Linear) {
    let x: Vec<f32> = random(seed, m * k, 2.0)
        .iter()
        .enumerate()
        .map(|(i, v)| v + 3.0 * ((i / k) % 5) as f32 - 4.0)
        .collect();
    let (ln, lin) = ln_and_linear(seed + 1, k, n, 0.1);
    (x, ln, lin)
}

/// A random LayerNorm over `k` columns and a `k -> n` linear layer (biases up to `bias`),
/// from seeds `seed..seed + 4`.
fn ln_and_linear(seed: u64, k: usize, n: usize, bias: f32) -> (LayerNorm, Linear) {
    let ln = LayerNorm {
        weight: random(seed, k, 1.0),
        bias: random(seed + 1, k, 0.5),
    };
    let lin = Linear {
        weight: random(seed + 2, n * k, (3.0 / k as f32).sqrt()),
        bias: random(seed + 3, n, bias),
        out_features: n,
        in_features: k,
    };
    (ln, lin)
}

/// LayerNorm folded into the linear layer after it (`ln_stats` + a linear that normalises rows
/// as it loads them, gamma and beta in its weights) against LayerNorm then Linear on the CPU,
/// for rows whose mean is far from zero, both kernels and two epilogues.
#[test]
fn layer_norm_folded_into_linear_matches_cpu() {
    let _cases = Cases::new();
    for (seed, m, k, n) in [
        (70u64, 37usize, 64usize, 192usize),
        (71, 9, 230, 64),
        (72, 66, 128, 460),
        (73, 90, 48, 136),
    ] {
        let (x, ln, lin) = ln_linear_case(seed, m, k, n);
        for f16 in precisions() {
            let x = rounded(&x, f16);
            let folded = linear::fold_layer_norm(&lin, &ln);
            let base = layer_norm_then_linear(&x, m, &ln, &lin, &folded, f16);
            for ep in [Epilogue::Bias, Epilogue::Gelu] {
                let mut want = base.clone();
                if ep == Epilogue::Gelu {
                    cpu::gelu(&mut want);
                }
                for (sg, v) in linear_variants() {
                    let got = run(|b| {
                        b.set_subgroup_width(sg);
                        b.set_f16(f16);
                        b.set_variants(Variants {
                            linear: v,
                            ..Variants::default()
                        });
                        let xt = b.weights("x", &x);
                        let stats = norm::ln_stats(b, Family::Mlp, m, k, xt, "x");
                        let w = linear::upload(b, "w", &folded);
                        let y = b.activation("y", m * n);
                        linear::record_normalized(b, Family::Mlp, m, &w, ep, xt, stats, 1e-6, y);
                        vec![y]
                    });
                    let err = max_rel_err(&decode(&got[0], f16, want.len()), &want);
                    expect(err <= tol(f16), || {
                        format!("{} (tolerance {:e})", format_args!("LN + linear {m}x{k}x{n} {ep:?} ({v:?}, subgroup width: {sg:?}, f16: {f16}): {err}"), tol(f16))
                    });
                }
            }
        }
    }
}

/// Every part of `width` columns of the rows of `n` columns in `rows` (the last of a row may be
/// narrower), in order, with its mean and sum of squared deviations (f64): what a kernel's
/// statistics parts should hold.
fn part_stats(rows: &[f32], n: usize, width: usize) -> Vec<(&[f32], f64, f64)> {
    rows.chunks_exact(n)
        .flat_map(|row| row.chunks(width))
        .map(|part| {
            let mean = part.iter().map(|&v| v as f64).sum::<f64>() / part.len() as f64;
            let m2 = part.iter().map(|&v| (v as f64 - mean).powi(2)).sum();
            (part, mean, m2)
        })
        .collect()
}

/// A residual linear layer that writes the LayerNorm statistics of the rows it stores, and the
/// layer after it normalising those rows with them (LayerNorm folded into it), against the CPU:
/// the statistics part by part (each kernel's part width; one part, from `ln_stats`, where the
/// width is not a multiple of 8) and the normalised layer's output, for rows whose mean is far
/// from zero, every kernel and subgroup width.
#[test]
fn linear_row_statistics_match_cpu() {
    let _cases = Cases::new();
    for (seed, m, k, n, n2) in [
        (80u64, 37usize, 64usize, 64usize, 48usize),
        (81, 70, 96, 256, 40),
        (82, 9, 40, 136, 64),
        (83, 20, 32, 60, 24),
        (84, 45, 48, 200, 32),
    ] {
        for f16 in precisions() {
            let lin = Linear {
                weight: rounded(&random(seed, n * k, (3.0 / k as f32).sqrt()), f16),
                bias: rounded(&random(seed + 1, n, 0.1), f16),
                out_features: n,
                in_features: k,
            };
            let x = rounded(&random(seed + 2, m * k, 1.0), f16);
            let y0: Vec<f32> = random(seed + 3, m * n, 1.0)
                .iter()
                .enumerate()
                .map(|(i, v)| v + 3.0 * ((i / n) % 5) as f32 - 4.0)
                .collect();
            let y0 = rounded(&y0, f16);
            let (ca, cb) = (0.9f32, 1.1f32);
            let (ln, lin2) = ln_and_linear(seed + 4, n, n2, 0.1);
            let folded = linear::fold_layer_norm(&lin2, &ln);
            // The rows as stored, then LayerNorm and the second layer.
            let base = cpu::linear(&x, m, &lin);
            let rows: Vec<f32> = y0.iter().zip(&base).map(|(r, v)| ca * r + cb * v).collect();
            let rows = rounded(&rows, f16);
            let want = layer_norm_then_linear(&rows, m, &ln, &lin2, &folded, f16);
            for (sg, v) in linear_variants() {
                let widths = std::cell::Cell::new((0, 0));
                let got = run(|b| {
                    b.set_subgroup_width(sg);
                    b.set_f16(f16);
                    b.set_variants(Variants {
                        linear: v,
                        ..Variants::default()
                    });
                    let xt = b.weights("x", &x);
                    let w = linear::upload(b, "w", &lin);
                    let y = b.weights("y0", &y0);
                    let ep = Epilogue::Residual { ca, cb };
                    // Each kernel's part width, or one part where n is not a multiple of 8.
                    let expected = match n % 8 {
                        0 => linear::stats_part_width(linear::route(b)),
                        _ => n,
                    };
                    let stats = linear::record_with_stats(b, Family::Mlp, m, &w, ep, xt, y, "y");
                    widths.set((stats.width, expected));
                    let w2 = linear::upload(b, "w2", &folded);
                    let z = b.activation("z", m * n2);
                    let bias = Epilogue::Bias;
                    linear::record_normalized(b, Family::Mlp, m, &w2, bias, y, stats, 1e-6, z);
                    vec![stats.tensor, z]
                });
                let what =
                    format!("{m}x{k}x{n} then {n2} ({v:?}, subgroup width: {sg:?}, f16: {f16})");
                let (width, expected) = widths.get();
                expect(width == expected, || {
                    format!("{what}: parts of {width} columns, {expected} expected")
                });
                // Per row, parts of `width` columns, the last one narrower where width does not
                // divide n.
                let parts = n.div_ceil(width);
                let expected_parts = part_stats(&rows, n, width);
                let means: Vec<f32> = expected_parts
                    .iter()
                    .map(|&(_, mean, _)| mean as f32)
                    .collect();
                let m2s: Vec<f32> = expected_parts.iter().map(|&(_, _, m2)| m2 as f32).collect();
                let st = decode(&got[0], false, 2 * m * parts);
                let got_means: Vec<f32> = st.iter().step_by(2).copied().collect();
                let got_m2s: Vec<f32> = st.iter().skip(1).step_by(2).copied().collect();
                for (name, g, w) in [("means", &got_means, &means), ("M2", &got_m2s, &m2s)] {
                    let err = max_rel_err(&g[..m * parts], w);
                    expect(err <= tol(f16), || {
                        format!(
                            "statistics {name} of {what}: {err} (tolerance {:e})",
                            tol(f16)
                        )
                    });
                }
                let err = max_rel_err(&decode(&got[1], f16, want.len()), &want);
                expect(err <= tol(f16), || {
                    format!(
                        "normalised layer after {what}: {err} (tolerance {:e})",
                        tol(f16)
                    )
                });
            }
        }
    }
}

/// The MLP half of a block, `y = ca * y + cb * fc2(gelu(fc1(LN(y))))` in place with the
/// LayerNorm folded into fc1, alone and after the attention half's projection and residual
/// `y = pa * y + pb * proj(attn)`, fused (`mlp_fused.wgsl`, one dispatch, the row statistics
/// measured in the kernel and the hidden values kept on chip in f32) and as linear layers (the
/// projected rows and the hidden values stored, rounded to the storage precision), against the
/// CPU: the stored rows and the statistics written beside them (one part per row fused, each
/// linear kernel's parts unfused), for rows whose mean is far from zero, widths that are not
/// multiples of 4 or 8, partial 16-row tiles and hidden sizes that are not multiples of the
/// 64-column chunk.
#[test]
fn mlp_matches_cpu() {
    let _cases = Cases::new();
    // (seed, rows, width, hidden, projection in front, hidden of a chained second MLP,
    // outputs of a next layer)
    for (seed, m, dim, hidden, with_proj, chained, next_width) in [
        (
            90u64,
            37usize,
            64usize,
            230usize,
            false,
            None,
            Some(192usize),
        ),
        (91, 16, 256, 921, true, Some(300usize), Some(768)),
        (92, 5, 128, 460, false, None, None),
        (93, 50, 60, 100, true, Some(77), Some(180)),
        (94, 1, 192, 768, true, None, Some(100)),
        (95, 33, 18, 7, false, Some(40), None),
        (96, 37, 64, 230, true, Some(230), Some(192)),
        (97, 33, 18, 7, true, None, Some(54)),
    ] {
        let y0: Vec<f32> = random(seed, m * dim, 2.0)
            .iter()
            .enumerate()
            .map(|(i, v)| v + 3.0 * ((i / dim) % 5) as f32 - 4.0)
            .collect();
        let first = HostMlp::random(seed + 1, dim, hidden, (0.9, 1.1));
        let second = chained.map(|h| HostMlp::random(seed + 20, dim, h, (1.05, 0.7)));
        let attn = random(seed + 7, m * dim, 1.5);
        let proj = Linear {
            weight: random(seed + 8, dim * dim, (3.0 / dim as f32).sqrt()),
            bias: random(seed + 9, dim, 0.3),
            out_features: dim,
            in_features: dim,
        };
        let (pa, pb) = (0.8f32, 1.2f32);
        // The next layer, LN(rows) Wq^T + bq, with the LayerNorm folded in.
        let next = next_width.map(|q| {
            let (ln, lin) = ln_and_linear(seed + 30, dim, q, 0.2);
            let folded = linear::fold_layer_norm(&lin, &ln);
            (ln, lin, folded)
        });
        for f16 in precisions() {
            let y0 = rounded(&y0, f16);
            let attn = rounded(&attn, f16);
            // The MLP's input: y0, or y0 after the projection's residual, stored.
            let y_in = if with_proj {
                let stored = Linear {
                    weight: rounded(&proj.weight, f16),
                    bias: rounded(&proj.bias, f16),
                    ..proj.clone()
                };
                let v = cpu::linear(&attn, m, &stored);
                let y: Vec<f32> = y0.iter().zip(&v).map(|(y, v)| pa * y + pb * v).collect();
                rounded(&y, f16)
            } else {
                y0.clone()
            };
            for (variant, linear_variants) in [
                (Variant::Fused, vec![(None, Variant::Portable)]),
                (Variant::Portable, linear_variants()),
            ] {
                let fused_twin = variant == Variant::Fused;
                let mut rows = first.twin(&y_in, m, fused_twin, f16);
                if let Some(second) = &second {
                    rows = second.twin(&rows, m, fused_twin, f16);
                }
                let next_rows = next.as_ref().map(|(ln, lin, folded)| {
                    rounded(&layer_norm_then_linear(&rows, m, ln, lin, folded, f16), f16)
                });
                for (sg, lv) in linear_variants {
                    let shape = std::cell::Cell::new((0, (0, 0)));
                    let got = run(|b| {
                        b.set_subgroup_width(sg);
                        b.set_f16(f16);
                        b.set_variants(Variants {
                            linear: lv,
                            mlp: variant,
                            ..Variants::default()
                        });
                        let y = b.weights("y0", &y0);
                        let first = first.upload(b, "mlp");
                        let second = second.as_ref().map(|s| s.upload(b, "then"));
                        let wp = linear::upload(b, "proj", &proj);
                        let projection = with_proj.then(|| mlp::Projection {
                            attn: b.weights("attn", &attn),
                            weights: &wp,
                            packed: Some(mlp::upload_packed(b, "proj", &proj)),
                            coef: (pa, pb),
                        });
                        // No statistics given: the fused kernel measures them, the pair takes
                        // the projection's or an ln_stats dispatch's.
                        let norm = (None, 1e-6);
                        let then = second.as_ref();
                        let next_weights = next.as_ref().map(|(_, _, f)| {
                            (
                                linear::upload(b, "next", f),
                                mlp::upload_packed(b, "next", f),
                            )
                        });
                        let next_layer = next_weights.as_ref().map(|(w, packed)| mlp::NextLayer {
                            weights: w,
                            packed: Some(*packed),
                        });
                        let out = mlp::record(
                            b, m, &first, then, norm, projection, next_layer, true, y, "mlp",
                        );
                        let after = out.stats.expect("statistics asked for");
                        let fused = (0..b.dispatch_count())
                            .filter(|&i| b.step(i).0.kernel == Kernel::MlpFused)
                            .count();
                        // Fused, the projection and the whole chain are one dispatch.
                        shape.set((after.width, (fused, b.dispatch_count())));
                        let mut read = vec![y, after.tensor];
                        read.extend(out.next);
                        read
                    });
                    let (width, fused) = shape.get();
                    let what = format!(
                        "MLP {m}x{dim}x{hidden} (projection: {with_proj}, then: {chained:?}, next: {next_width:?}, {variant:?}, linear {lv:?}, subgroup width: {sg:?}, f16: {f16})"
                    );
                    let want = if variant == Variant::Fused {
                        (1, 1)
                    } else {
                        (0, fused.1)
                    };
                    expect(fused == want, || {
                        format!("{what}: (fused dispatches, dispatches) {fused:?}, want {want:?}")
                    });
                    let tolerance = tol(f16);
                    let err = max_rel_err(&decode(&got[0], f16, rows.len()), &rows);
                    expect(err <= tolerance, || {
                        format!("{what}: {err} (tolerance {tolerance:e})")
                    });
                    expect(got.len() == 2 + next_rows.is_some() as usize, || {
                        format!("{what}: the next layer's output was not returned")
                    });
                    if let Some(want) = &next_rows {
                        let err = max_rel_err(&decode(&got[2], f16, want.len()), want);
                        expect(err <= tolerance, || {
                            format!("next layer of {what}: {err} (tolerance {tolerance:e})")
                        });
                    }
                    // Per part, what the GPU's statistics may differ by if each stored value
                    // differs by up to the rows' tolerance e_i = tol * max(1, |x_i|): the mean
                    // by max e_i, M2 (a sum of squared deviations) by 2 sqrt(M2 sum e_i^2) +
                    // sum e_i^2. A part of a few columns has a small M2 that one rounding step
                    // of a large value moves by much of itself, so a relative bound would not do.
                    let parts = dim.div_ceil(width);
                    let st = decode(&got[1], false, 2 * m * parts);
                    let mut worst = (0.0f64, String::from("no part"));
                    for (p, (part, mean, m2)) in
                        part_stats(&rows, dim, width).into_iter().enumerate()
                    {
                        let e: Vec<f64> = part
                            .iter()
                            .map(|&v| tolerance as f64 * (v.abs() as f64).max(1.0))
                            .collect();
                        let e2: f64 = e.iter().map(|x| x * x).sum();
                        let mean_bound = e.iter().cloned().fold(0.0, f64::max);
                        let m2_bound = 2.0 * (m2 * e2).sqrt() + e2;
                        for (name, got, want, bound) in [
                            ("mean", st[2 * p] as f64, mean, mean_bound),
                            ("M2", st[2 * p + 1] as f64, m2, m2_bound),
                        ] {
                            let ratio = (got - want).abs() / bound;
                            if ratio.is_nan() || ratio > worst.0 {
                                worst = (ratio, format!("{name} of part {p}: got {got}, want {want}, bound {bound:.3e}"));
                            }
                        }
                    }
                    expect(worst.0 <= 1.0, || {
                        format!(
                            "statistics of {what}: {} ({:.2} of the bound)",
                            worst.1, worst.0
                        )
                    });
                }
            }
        }
    }
}

/// A stage's first `qkv` alone (`mlp::record_next`: the fused MLP kernel with only its next
/// layer, measuring the rows' LayerNorm statistics, or `ln_stats` and a linear layer) against
/// LayerNorm then Linear on the CPU, rows far from zero mean, every width and backend; the
/// rows themselves must come back untouched.
#[test]
fn next_layer_matches_cpu() {
    let _cases = Cases::new();
    for (seed, m, dim, q) in [
        (120u64, 37usize, 64usize, 192usize),
        (121, 5, 256, 768),
        (122, 50, 60, 180),
        (123, 1, 18, 54),
    ] {
        let (y0, ln, lin) = ln_linear_case(seed, m, dim, q);
        let folded = linear::fold_layer_norm(&lin, &ln);
        for f16 in precisions() {
            let y0 = rounded(&y0, f16);
            let want = rounded(
                &layer_norm_then_linear(&y0, m, &ln, &lin, &folded, f16),
                f16,
            );
            for (variant, linear_variants) in [
                (Variant::Fused, vec![(None, Variant::Portable)]),
                (Variant::Portable, linear_variants()),
            ] {
                for (sg, lv) in linear_variants {
                    let fused = std::cell::Cell::new((0, 0));
                    let got = run(|b| {
                        b.set_subgroup_width(sg);
                        b.set_f16(f16);
                        b.set_variants(Variants {
                            linear: lv,
                            mlp: variant,
                            ..Variants::default()
                        });
                        let y = b.weights("y0", &y0);
                        let weights = linear::upload(b, "next", &folded);
                        let packed =
                            mlp::fused(b, dim).then(|| mlp::upload_packed(b, "next", &folded));
                        let next = mlp::NextLayer {
                            weights: &weights,
                            packed,
                        };
                        let out = mlp::record_next(b, m, next, (None, 1e-6), y, "qkv");
                        let n = (0..b.dispatch_count())
                            .filter(|&i| b.step(i).0.kernel == Kernel::MlpFused)
                            .count();
                        fused.set((n, b.dispatch_count()));
                        vec![out, y]
                    });
                    let what = format!(
                        "next layer {m}x{dim}x{q} ({variant:?}, linear {lv:?}, subgroup width: {sg:?}, f16: {f16})"
                    );
                    let want_dispatches = if variant == Variant::Fused {
                        (1, 1)
                    } else {
                        (0, 2)
                    };
                    expect(fused.get() == want_dispatches, || {
                        format!(
                            "{what}: (fused dispatches, dispatches) {:?}, want {want_dispatches:?}",
                            fused.get()
                        )
                    });
                    let err = max_rel_err(&decode(&got[0], f16, want.len()), &want);
                    expect(err <= tol(f16), || {
                        format!("{what}: {err} (tolerance {:e})", tol(f16))
                    });
                    let rows = decode(&got[1], f16, y0.len());
                    expect(rows == y0, || format!("{what}: the rows changed"));
                }
            }
        }
    }
}

/// An MLP's host weights for [`mlp_matches_cpu`]: `ca * y + cb * fc2(gelu(fc1(LN(y))))`.
struct HostMlp {
    ln: LayerNorm,
    fc1: Linear,
    folded: Linear,
    fc2: Linear,
    coef: (f32, f32),
}

impl HostMlp {
    fn random(seed: u64, dim: usize, hidden: usize, coef: (f32, f32)) -> Self {
        let ln = LayerNorm {
            weight: random(seed, dim, 1.0),
            bias: random(seed + 1, dim, 0.5),
        };
        let fc1 = Linear {
            weight: random(seed + 2, hidden * dim, (3.0 / dim as f32).sqrt()),
            bias: random(seed + 3, hidden, 0.1),
            out_features: hidden,
            in_features: dim,
        };
        let fc2 = Linear {
            weight: random(seed + 4, dim * hidden, (3.0 / hidden as f32).sqrt()),
            bias: random(seed + 5, dim, 0.1),
            out_features: dim,
            in_features: hidden,
        };
        let folded = linear::fold_layer_norm(&fc1, &ln);
        HostMlp {
            ln,
            fc1,
            folded,
            fc2,
            coef,
        }
    }

    fn upload(&self, b: &mut sret_tome::kernels::ProgramBuilder, name: &str) -> mlp::Mlp {
        mlp::Mlp {
            weights: mlp::upload(b, name, &self.folded, &self.fc2),
            coef: self.coef,
        }
    }

    /// The rows after this MLP on the CPU, stored in the storage precision; `fused`: the hidden
    /// values stay in f32 (unfused, they are stored in the storage precision).
    fn twin(&self, y_in: &[f32], m: usize, fused: bool, f16: bool) -> Vec<f32> {
        let mut h = layer_norm_then_linear(y_in, m, &self.ln, &self.fc1, &self.folded, f16);
        cpu::gelu(&mut h);
        if !fused {
            h = rounded(&h, f16);
        }
        let stored2 = Linear {
            weight: rounded(&self.fc2.weight, f16),
            bias: rounded(&self.fc2.bias, f16),
            ..self.fc2.clone()
        };
        let out = cpu::linear(&h, m, &stored2);
        let (ca, cb) = self.coef;
        let rows: Vec<f32> = y_in
            .iter()
            .zip(&out)
            .map(|(r, v)| ca * r + cb * v)
            .collect();
        rounded(&rows, f16)
    }
}

#[allow(clippy::too_many_arguments)]
fn check_attention(
    seed: u64,
    batch: usize,
    n: usize,
    dim: usize,
    heads: usize,
    groups: usize,
    permuted: bool,
    with_mass: bool,
) {
    for f16 in precisions() {
        check_attention_in(f16, seed, batch, n, dim, heads, groups, permuted, with_mass);
    }
}

#[allow(clippy::too_many_arguments)]
fn check_attention_in(
    f16: bool,
    seed: u64,
    batch: usize,
    n: usize,
    dim: usize,
    heads: usize,
    groups: usize,
    permuted: bool,
    with_mass: bool,
) {
    let qkv = rounded(&random(seed, batch * n * 3 * dim, 1.5), f16);
    let mut rng = cpu::SplitMix64::new(seed + 1);
    let perm = rng.permutation(n);
    let mass: Vec<f32> = if with_mass {
        (0..batch * n)
            .map(|_| 1.0 + (rng.below(7) as f32))
            .collect()
    } else {
        vec![1.0; batch * n]
    };
    let want = cpu::grouped_attention(
        &qkv,
        batch,
        n,
        dim,
        heads,
        groups,
        permuted.then_some(&perm[..]),
        &mass,
    );
    // A merge after the attention: its matching on the same keys, against the CPU twin per
    // image (the sets vary with the seed: lead tokens, A parity).
    let hd = dim / heads;
    let split = Split {
        lead: (seed % 2) as usize,
        a_odd: seed.is_multiple_of(3),
        sorted: false,
    };
    let merge_shape = merge::MergeShape {
        batch,
        n,
        r: 1,
        c: dim,
        dim,
        heads,
        n_grid: n - split.lead,
        split,
    };
    let keys = cpu::head_mean_keys(&qkv, batch, n, dim, heads);
    let matchings: Vec<cpu::Matching> = keys
        .chunks_exact(n * hd)
        .map(|k| cpu::bipartite_matching_split(k, n, hd, split))
        .collect();
    let want_row_max: Vec<f32> = matchings.iter().flat_map(|m| m.row_max.clone()).collect();
    let want_dst: Vec<u32> = matchings.iter().flat_map(|m| m.dst.clone()).collect();
    // Every attention variant, alone and with each matcher the plan may prefer: the subgroup
    // matcher rides in the subgroup attention's dispatch.
    let mut variants = vec![(None, Variant::Portable), (None, Variant::Vec4)];
    variants.extend(
        sg_variants()
            .into_iter()
            .flatten()
            .map(|w| (Some(w), Variant::Subgroup)),
    );
    for (sg, variant) in variants {
        let matchers = [None, Some(Variant::Portable)]
            .into_iter()
            .chain(sg.map(|_| Some(Variant::Subgroup)));
        for matcher in matchers {
            let mut dispatches = 0;
            let got = run(|b| {
                b.set_subgroup_width(sg);
                b.set_f16(f16);
                b.set_variants(Variants {
                    attention: variant,
                    matching: matcher.unwrap_or(Variant::Portable),
                    ..Variants::default()
                });
                let q = b.weights("qkv", &qkv);
                let p = permuted.then(|| b.constant("perm", &perm));
                let m = with_mass.then(|| b.constant("mass", &mass)); // f32 whatever the precision
                let out = b.activation("out", batch * n * dim);
                let shape = AttentionShape {
                    batch,
                    n,
                    dim,
                    heads,
                    groups,
                };
                let matching = matcher.map(|_| (merge_shape, "m"));
                let matched = attention::record(b, shape, q, p, m, out, matching);
                dispatches = b.dispatch_count();
                let mut outs = vec![out];
                if let Some(m) = matched {
                    outs.extend([m.row_max, m.dst]);
                }
                outs
            });
            let what = format!("attention n{n} d{dim} h{heads} g{groups} perm {permuted} mass {with_mass} {variant:?} subgroup width {sg:?} matcher {matcher:?} f16 {f16}");
            let err = max_rel_err(&decode(&got[0], f16, want.len()), &want);
            expect(err <= tol(f16), || {
                format!("{what}: {err} (tolerance {:e})", tol(f16))
            });
            let Some(matcher) = matcher else {
                assert_eq!(dispatches, 1, "{what}");
                assert_eq!(got.len(), 1, "{what}: matched without a merge");
                continue;
            };
            // In the attention's dispatch where both run at one subgroup width.
            let attention_sg = sg.filter(|_| variant == Variant::Subgroup && hd == 32);
            let matcher_sg = sg.filter(|_| matcher == Variant::Subgroup && hd == 32);
            let fused = attention_sg.is_some() && attention_sg == matcher_sg;
            assert_eq!(dispatches, if fused { 1 } else { 2 }, "{what}");
            let err = max_rel_err(&as_f32(&got[1]), &want_row_max);
            expect(err <= tol(f16), || {
                format!("{what}: row max {err} (tolerance {:e})", tol(f16))
            });
            assert_eq!(got[2], want_dst, "{what}: dst");
        }
    }
}

#[test]
fn attention_matches_cpu() {
    let _cases = Cases::new();
    check_attention(40, 2, 24, 64, 2, 4, false, false);
    check_attention(41, 2, 24, 64, 2, 2, true, true);
    check_attention(42, 1, 49, 256, 8, 1, false, true);
    // Groups of 49 and 98 queries: not multiples of the subgroup kernel's 8-query blocks.
    check_attention(44, 2, 98, 64, 2, 2, true, true);
    check_attention(45, 1, 196, 128, 4, 4, false, false);
    // SReT-S head size 42, odd token count in one group.
    check_attention(43, 3, 15, 126, 3, 1, true, true);
    // Many heads of 32 over a long sequence: the subgroup matcher in the attention's dispatch
    // past hundreds of attention workgroups.
    check_attention(46, 2, 577, 512, 16, 1, false, true);
}

/// One merge on the GPU (metric, matching, ranking, slots, weighted merge, map update) against
/// the CPU twin, then a second merge and the one-gather unmerge.
#[allow(clippy::too_many_arguments)]
fn check_merges(
    seed: u64,
    batch: usize,
    n: usize,
    dim: usize,
    heads: usize,
    r1: usize,
    r2: usize,
    split: Split,
) {
    for f16 in precisions() {
        check_merges_in(f16, seed, batch, n, dim, heads, r1, r2, split);
    }
}

#[allow(clippy::too_many_arguments)]
fn check_merges_in(
    f16: bool,
    seed: u64,
    batch: usize,
    n: usize,
    dim: usize,
    heads: usize,
    r1: usize,
    r2: usize,
    split: Split,
) {
    let hd = dim / heads;
    let lead = split.lead;
    let n_grid = n - lead;
    let qkv1 = rounded(&random(seed, batch * n * 3 * dim, 1.0), f16);
    let x1 = rounded(&random(seed + 1, batch * n * dim, 1.0), f16);
    let n2 = n - r1;
    let qkv2 = rounded(&random(seed + 2, batch * n2 * 3 * dim, 1.0), f16);
    let n3 = n2 - r2;

    // CPU: per image, two merges and the composed map.
    let keys1 = cpu::head_mean_keys(&qkv1, batch, n, dim, heads);
    let keys2 = cpu::head_mean_keys(&qkv2, batch, n2, dim, heads);
    let (mut want_x2, mut want_m2, mut want_slot1) = (vec![], vec![], vec![]);
    let (mut want_x3, mut want_m3, mut want_map, mut want_full) = (vec![], vec![], vec![], vec![]);
    for i in 0..batch {
        let m1 = cpu::bipartite_matching_split(&keys1[i * n * hd..(i + 1) * n * hd], n, hd, split);
        let (xa, ma, sa) = cpu::merge_split(
            &x1[i * n * dim..(i + 1) * n * dim],
            &vec![1.0; n],
            n,
            dim,
            r1,
            &m1,
            split,
        );
        let m2 =
            cpu::bipartite_matching_split(&keys2[i * n2 * hd..(i + 1) * n2 * hd], n2, hd, split);
        // The GPU stores the first merge's tokens (as f16 in an f16 program).
        let xa = rounded(&xa, f16);
        let (xb, mb, sb) = cpu::merge_split(&xa, &ma, n2, dim, r2, &m2, split);
        let map: Vec<u32> = (0..n_grid).map(|o| sb[sa[lead + o] as usize]).collect();
        for &slot in &map {
            want_full.extend_from_slice(&xb[slot as usize * dim..(slot as usize + 1) * dim]);
        }
        want_x2.extend(xa);
        want_m2.extend(ma);
        want_slot1.extend(sa);
        want_x3.extend(xb);
        want_m3.extend(mb);
        want_map.extend(map);
    }
    let want_mean = cpu::mean_tokens(&want_full, batch, n_grid, dim);

    // The matching has an 8-lane subgroup variant for 32-channel heads; check both. The steps
    // after matching run fused where the device has the workgroup memory, else as four kernels.
    let g = gpu();
    if g.info.name.contains("llvmpipe") && g.info.backend == wgpu::Backend::Vulkan {
        assert!(
            merge::fused_fits(n, &g.limits),
            "lavapipe runs the fused merge"
        );
    }
    let unfused_limits = wgpu::Limits {
        max_compute_workgroup_storage_size: merge::FUSED_WORKGROUP_BYTES - 4,
        ..gpu().limits.clone()
    };
    for (sg, fused) in sg_variants()
        .into_iter()
        .flat_map(|sg| [(sg, true), (sg, false)])
    {
        let limits = if fused {
            gpu().limits.clone()
        } else {
            unfused_limits.clone()
        };
        let got = run_planned_for(&limits, true, |b| {
            b.set_subgroup_width(sg);
            b.set_f16(f16);
            let q1 = b.weights("qkv1", &qkv1);
            let q2 = b.weights("qkv2", &qkv2);
            let x = b.weights("x", &x1);
            let map = b.activation_words("map", batch * n_grid);
            let shape = merge::MergeShape {
                batch,
                n,
                r: r1,
                c: dim,
                dim,
                heads,
                n_grid,
                split,
            };
            // The first merge keeps its slot map (as a trace does), the second hands on the
            // merged rows' LayerNorm statistics in its place.
            let a = merge::record_merge(b, shape, q1, None, x, None, map, true, true, true, "m1");
            let slot = a.slot.expect("a slot map where asked for");
            b.pin(a.x);
            b.pin(a.mass);
            b.pin(slot);
            let shape = merge::MergeShape {
                n: n2,
                r: r2,
                ..shape
            };
            // The second merge takes a matching recorded before it (as the attention hands
            // on the one it ran).
            let matched = merge::record_match(b, shape, q2, "m2");
            let c = merge::record_merge(
                b,
                shape,
                q2,
                Some(matched),
                a.x,
                Some(a.mass),
                map,
                false,
                false,
                true,
                "m2",
            );
            let stats = c.stats.expect("statistics where asked for");
            assert_eq!(stats.width, dim);
            b.pin(stats.tensor);
            let fused_steps = (0..b.dispatch_count())
                .filter(|&i| b.step(i).0.kernel == Kernel::TomeMergeFused)
                .count();
            // Fused wherever the limits allow (on lavapipe's Vulkan they do; see below).
            let want = [n, n2]
                .into_iter()
                .filter(|&m| merge::fused_fits(m, &limits))
                .count();
            assert_eq!(fused_steps, want, "fused: {fused}");
            assert!(
                fused || want == 0,
                "the unfused limits still fit the fused kernel"
            );
            // The restored grid's mean, read through the composed map (as SReT's head does).
            let mean = b.activation("grid mean", batch * dim);
            let grid = merge::Unmerge { map, tokens: n3 };
            norm::mean_tokens(b, Family::Head, batch, n_grid, dim, c.x, Some(grid), mean);
            vec![a.x, a.mass, slot, c.x, c.mass, map, mean, stats.tensor]
        });
        // The merged rows' statistics (mean, M2) as stored, against the CPU's rows rounded to
        // the storage precision.
        let rows = rounded(&want_x3, f16);
        let want_stats: Vec<f32> = rows
            .chunks_exact(dim)
            .flat_map(|row| {
                let mean = row.iter().map(|&v| v as f64).sum::<f64>() / dim as f64;
                let m2: f64 = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum();
                [mean as f32, m2 as f32]
            })
            .collect();
        assert_eq!(
            got[2], want_slot1,
            "first merge's slot map (subgroup width: {sg:?}, fused: {fused}, f16: {f16})"
        );
        assert_eq!(
            got[5], want_map,
            "composed unmerge map (fused: {fused}, f16: {f16})"
        );
        // Tokens are in storage precision, masses always f32.
        let tokens = |g: &[u32], w: &[f32]| decode(g, f16, w.len());
        for (i, (got, w, what)) in [
            (tokens(&got[0], &want_x2), &want_x2, "x after merge 1"),
            (as_f32(&got[1]), &want_m2, "mass after merge 1"),
            (tokens(&got[3], &want_x3), &want_x3, "x after merge 2"),
            (as_f32(&got[4]), &want_m3, "mass after merge 2"),
            (
                tokens(&got[6], &want_mean),
                &want_mean,
                "mean of the restored grid",
            ),
            (
                as_f32(&got[7])[..want_stats.len()].to_vec(),
                &want_stats,
                "row statistics after merge 2",
            ),
        ]
        .into_iter()
        .enumerate()
        {
            let err = max_rel_err(&got, w);
            expect(err <= tol(f16), || {
                format!("{} (tolerance {:e})", format_args!("{i}: {what} (n {n}, r {r1}/{r2}, {split:?}, subgroup width: {sg:?}, fused: {fused}, f16: {f16}): {err}"), tol(f16))
            });
        }
    }
}

#[test]
fn merge_pipeline_matches_cpu() {
    let _cases = Cases::new();
    let whole = Split::default();
    check_merges(50, 2, 64, 64, 2, 16, 8, whole);
    // Odd length (the A set is one larger), the half bound, and a larger head count.
    check_merges(51, 3, 49, 256, 8, 10, 19, whole);
    check_merges(52, 1, 24, 126, 3, 12, 1, whole);
}

/// Lead tokens (class, distillation) as DeiT's official ToMe and the paper's PiT treat them:
/// never merged, A set by global parity or by patch parity, unmerged tokens sorted or ranked.
#[test]
fn merges_with_lead_tokens_match_cpu() {
    let _cases = Cases::new();
    let split = |lead, a_odd, sorted| Split {
        lead,
        a_odd,
        sorted,
    };
    // DeiT (class token only): A = odd window positions, sorted.
    check_merges(53, 2, 197, 192, 3, 60, 20, split(1, true, true));
    // DeiT-Distill: two lead tokens, A = even window positions, sorted.
    check_merges(54, 2, 198, 192, 3, 8, 98 - 8 - 1, split(2, false, true));
    // PiT-Distill: lead tokens split off, rank order, 32-channel heads (subgroup matcher).
    check_merges(55, 3, 51, 64, 2, 24, 5, split(2, false, false));
    check_merges(56, 1, 30, 64, 2, 3, 3, split(1, true, false));
    // ViT-L/16 at 384 pixels: 16 heads of 64 over 577 tokens (the portable matcher with its
    // 32-token chunks; smaller chunks made Mesa 22's lavapipe leave lanes unwritten here).
    check_merges(57, 2, 577, 1024, 16, 100, 100, split(1, true, true));
}

/// Token copies as the baselines use them (shared lead tokens put in front of every image's
/// patches, then a run taken out of the middle of each sequence) against the CPU twin, on
/// poisoned outputs that the copies must fill completely; copies are exact.
#[test]
fn token_copies_match_cpu() {
    let _cases = Cases::new();
    for f16 in precisions() {
        check_token_copies(f16);
    }
}

fn check_token_copies(f16: bool) {
    let (batch, lead, tokens, c) = (3, 2, 29, 24);
    let n = lead + tokens;
    let lead_x = rounded(&random(80, lead * c, 1.0), f16);
    let patches = rounded(&random(81, batch * tokens * c, 1.0), f16);
    let (off, count) = (5, 11);
    let mut want_seq = vec![0.0; batch * n * c];
    cpu::copy_tokens(&lead_x, &mut want_seq, batch, lead, c, 0, 0, n, 0);
    cpu::copy_tokens(
        &patches,
        &mut want_seq,
        batch,
        tokens,
        c,
        tokens,
        0,
        n,
        lead,
    );
    let mut want_run = vec![0.0; batch * count * c];
    cpu::copy_tokens(&want_seq, &mut want_run, batch, count, c, n, off, count, 0);
    let got = run(|b| {
        b.set_f16(f16);
        let l = b.weights("lead", &lead_x);
        let p = b.weights("patches", &patches);
        let seq = b.activation("seq", batch * n * c);
        let copy = |count, in_tokens, in_off, out_tokens, out_off| TokenCopy {
            batch,
            count,
            c,
            in_tokens,
            in_off,
            out_tokens,
            out_off,
        };
        record_copy(b, Family::Stem, copy(lead, 0, 0, n, 0), l, seq);
        record_copy(b, Family::Stem, copy(tokens, tokens, 0, n, lead), p, seq);
        let part = b.activation("run", batch * count * c);
        record_copy(b, Family::Head, copy(count, n, off, count, 0), seq, part);
        vec![seq, part]
    });
    assert_eq!(
        decode(&got[0], f16, want_seq.len()),
        want_seq,
        "lead tokens in front of the patches (f16: {f16})"
    );
    assert_eq!(
        decode(&got[1], f16, want_run.len()),
        want_run,
        "a run of tokens taken out (f16: {f16})"
    );
}

/// conv1 -> conv2 band by band (as the stem runs them) equals the two whole convolutions.
#[test]
fn banded_convolutions_match_cpu() {
    let _cases = Cases::new();
    use sret_tome::kernels::conv::Band;
    let (batch, h, c0, c1, c2) = (2usize, 23usize, 3usize, 5usize, 6usize);
    let mk = |seed: u64, cout: usize, cin: usize| Conv {
        weight: random(seed, cout * cin * 9, 0.5),
        bias: random(seed + 1, cout, 0.1),
        out_channels: cout,
        in_channels: cin,
        kernel: 3,
        stride: 2,
        padding: 1,
        groups: 1,
    };
    for f16 in precisions() {
        let round_conv = |c: Conv| Conv {
            weight: rounded(&c.weight, f16),
            bias: rounded(&c.bias, f16),
            ..c
        };
        let (k1, k2) = (round_conv(mk(60, c1, c0)), round_conv(mk(62, c2, c1)));
        let x = rounded(&random(64, batch * c0 * h * h, 1.0), f16);
        let (mut y1, h1, _) = cpu::conv2d(&x, batch, h, h, &k1);
        cpu::relu(&mut y1);
        // conv1's bands are stored between the two kernels (as f16 in an f16 program).
        let y1 = rounded(&y1, f16);
        let (mut want, h2, _) = cpu::conv2d(&y1, batch, h1, h1, &k2);
        cpu::relu(&mut want);
        let s1 = ConvShape {
            batch,
            cin: c0,
            h,
            w: h,
            cout: c1,
            k: 3,
            stride: 2,
            pad: 1,
            groups: 1,
        };
        let s2 = ConvShape {
            batch,
            cin: c1,
            h: h1,
            w: h1,
            cout: c2,
            k: 3,
            stride: 2,
            pad: 1,
            groups: 1,
        };
        let variants = sg_variants().into_iter();
        for (sg, band_rows) in variants.flat_map(|s| [1usize, 2, 3, h2].map(|r| (s, r))) {
            let got = run(|b| {
                b.set_subgroup_width(sg);
                b.set_f16(f16);
                let xt = b.weights("x", &x);
                let (w1, b1) = conv::upload(b, "conv1", &k1);
                let (w2, b2) = conv::upload(b, "conv2", &k2);
                let y = b.activation("y", batch * c2 * h2 * h2);
                for first in (0..h2).step_by(band_rows) {
                    let rows = (first, (first + band_rows).min(h2));
                    let (r0, r1) = s2.input_rows(rows);
                    let t = b.activation("band", batch * c1 * (r1 - r0) * h1);
                    let io1 = ConvIo {
                        x: xt,
                        weight: w1,
                        bias: b1,
                        pos: None,
                        y: t,
                        input: Layout::Nchw,
                        output: Layout::Nchw,
                        relu: true,
                    };
                    conv::record_band(
                        b,
                        Family::Stem,
                        s1,
                        io1,
                        Band {
                            out_rows: (r0, r1),
                            in_buf: (0, h),
                            out_buf: (r0, r1 - r0),
                        },
                    );
                    let io2 = ConvIo {
                        x: t,
                        weight: w2,
                        bias: b2,
                        pos: None,
                        y,
                        input: Layout::Nchw,
                        output: Layout::Nchw,
                        relu: true,
                    };
                    conv::record_band(
                        b,
                        Family::Stem,
                        s2,
                        io2,
                        Band {
                            out_rows: rows,
                            in_buf: (r0, r1 - r0),
                            out_buf: (0, h2),
                        },
                    );
                }
                vec![y]
            });
            let err = max_rel_err(&decode(&got[0], f16, want.len()), &want);
            expect(err <= tol(f16), || {
                format!(
                    "{} (tolerance {:e})",
                    format_args!(
                        "bands of {band_rows} rows (subgroup width: {sg:?}, f16: {f16}): {err}"
                    ),
                    tol(f16)
                )
            });
        }
    }
}

/// The subgroup kernels are what runs wherever the adapter has subgroups, at its width: a pass
/// that silently fell back to the portable kernels (feature not enabled, width not taken up)
/// fails here instead of passing on the portable kernels alone. On lavapipe the width follows
/// `LP_NATIVE_VECTOR_WIDTH` (256 bits: 8 lanes, the default; 512: 16).
#[test]
fn subgroup_kernels_run_at_the_adapters_width() {
    use sret_tome::kernels::{KernelKey, ProgramBuilder};
    let g = gpu();
    let width = subgroup_width(g);
    let has = g.features.contains(wgpu::Features::SUBGROUP);
    println!(
        "adapter {} ({:?}): SUBGROUP {has}, subgroups of {}..{} lanes; subgroup kernels at width {width:?}, tested at {:?}",
        g.info.name,
        g.info.backend,
        g.info.subgroup_min_size,
        g.info.subgroup_max_size,
        sg_variants()
    );
    // lavapipe, Mesa's Vulkan on llvmpipe (wgpu's GL backend on llvmpipe has no subgroups):
    // subgroups of LP_NATIVE_VECTOR_WIDTH / 32 lanes, whose kernels run at 8 lanes from Mesa 23
    // on (program::subgroup_width_for).
    let lavapipe = g.info.name.contains("llvmpipe") && g.info.backend == wgpu::Backend::Vulkan;
    let newer_mesa =
        sret_tome::gpu::context::mesa_version(&g.info.driver_info).is_some_and(|v| v >= (23, 0));
    if has && SG_WIDTHS.contains(&g.info.subgroup_min_size) {
        let lanes = g.info.subgroup_min_size;
        let want = if lavapipe && newer_mesa {
            lanes.min(sret_tome::kernels::program::LAVAPIPE_LANES)
        } else {
            lanes
        };
        assert_eq!(width, Some(want));
    }
    if lavapipe {
        assert!(has, "lavapipe without Features::SUBGROUP");
        let bits: u32 = std::env::var("LP_NATIVE_VECTOR_WIDTH")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(256);
        assert_eq!(
            g.info.subgroup_min_size,
            bits / 32,
            "lavapipe's subgroups at {bits} bits"
        );
    }
    let Some(width) = width else {
        return;
    };
    // A plan for this adapter records the width-specific kernels: for 2 x 32 + 5 rows one
    // 32-row tile and a 40-row last tile; for 5 rows an 8-row tile.
    let lin = Linear {
        weight: random(90, 64 * 32, 0.1),
        bias: random(91, 64, 0.1),
        out_features: 64,
        in_features: 32,
    };
    let mut keys = Vec::new();
    for m in [2 * linear::SG_TILE_ROWS + 5, 5] {
        let mut b = ProgramBuilder::new(&g.limits);
        b.set_subgroup_width(Some(width));
        let x = b.weights("x", &random(92, m * 32, 1.0));
        let w = linear::upload(&mut b, "w", &lin);
        let y = b.activation("y", m * 64);
        b.pin(y);
        linear::record(&mut b, Family::Mlp, m, &w, Epilogue::Bias, x, y);
        let program = b.finish(g, cache(), &[]).expect("program");
        keys.extend(program.dispatches.iter().map(|d| d.key));
    }
    let sg = KernelKey::with_sg(Kernel::LinearSg, width);
    assert_eq!(
        keys,
        vec![sg.with_rows(32), sg.with_rows(40), sg.with_rows(8)]
    );
    assert!(keys
        .iter()
        .all(|k| k.sg == width && k.wgsl().contains(&format!("const SG: u32 = {width}u;"))));
}

/// The tiled linear kernel is what a tiled plan records (so the checks above ran it), and a
/// device without its workgroup memory or invocations gets the portable kernel instead.
#[test]
fn tiled_linear_is_recorded_where_the_limits_allow() {
    use sret_tome::kernels::program::ProgramBuilder;
    let lin = Linear {
        weight: random(95, 64 * 32, 0.1),
        bias: random(96, 64, 0.1),
        out_features: 64,
        in_features: 32,
    };
    let small_memory = wgpu::Limits {
        max_compute_workgroup_storage_size: linear::TILED_WORKGROUP_BYTES - 4,
        ..wgpu::Limits::default()
    };
    let few_invocations = wgpu::Limits {
        max_compute_invocations_per_workgroup: 128,
        ..wgpu::Limits::default()
    };
    for (limits, want) in [
        (wgpu::Limits::default(), Kernel::LinearTiled),
        (wgpu::Limits::downlevel_defaults(), Kernel::LinearTiled),
        (small_memory, Kernel::Linear),
        (few_invocations, Kernel::Linear),
    ] {
        let mut b = ProgramBuilder::new(&limits);
        b.set_variants(Variants {
            linear: Variant::Tiled,
            ..Variants::default()
        });
        let x = b.weights("x", &random(97, 70 * 32, 1.0));
        let w = linear::upload(&mut b, "w", &lin);
        let y = b.activation("y", 70 * 64);
        linear::record(&mut b, Family::Mlp, 70, &w, Epilogue::Bias, x, y);
        assert_eq!(b.dispatch_count(), 1);
        let (key, _, _, _, grid) = b.step(0);
        assert_eq!(key.kernel, want, "{limits:?}");
        if want == Kernel::LinearTiled {
            // Two 64-row tiles of one 64-column tile.
            assert_eq!(grid, [2, 1, 1]);
        }
    }
    // The shader's tile constants are the ones the grid is computed from.
    let src = Kernel::LinearTiled.source(0);
    for (name, v) in [
        ("TM", linear::TILED_TILE),
        ("TN", linear::TILED_TILE),
        ("TK", linear::TILED_DEPTH),
    ] {
        assert!(
            src.contains(&format!("const {name}: u32 = {v}u;")),
            "{name}"
        );
    }
    assert!(src.contains(&format!("@workgroup_size({})", linear::TILED_INVOCATIONS)));
}

/// The tiled linear kernel with its grid wrapped into a second dimension (a device allowing 5
/// workgroups per dimension: 3 x 4 = 12 tiles as [4, 3, 1], the last of which is past the
/// tiles and leaves), against the CPU twin.
#[test]
fn tiled_linear_runs_a_wrapped_grid() {
    let (m, k, n) = (141usize, 40usize, 200usize);
    if !linear::tiled_fits(&gpu().limits) {
        eprintln!("skipped: this adapter cannot run the tiled linear kernel");
        return;
    }
    let lin = Linear {
        weight: random(98, n * k, (3.0 / k as f32).sqrt()),
        bias: random(99, n, 0.1),
        out_features: n,
        in_features: k,
    };
    let x = random(100, m * k, 1.0);
    let want = cpu::linear(&x, m, &lin);
    let limits = wgpu::Limits {
        max_compute_workgroups_per_dimension: 5,
        ..gpu().limits.clone()
    };
    let got = run_planned_for(&limits, true, |b| {
        b.set_variants(Variants {
            linear: Variant::Tiled,
            ..Variants::default()
        });
        let xt = b.weights("x", &x);
        let w = linear::upload(b, "w", &lin);
        let y = b.activation("y", m * n);
        linear::record(b, Family::Mlp, m, &w, Epilogue::Bias, xt, y);
        assert_eq!(b.step(0).4, [4, 3, 1]);
        vec![y]
    });
    let err = max_rel_err(&decode(&got[0], false, want.len()), &want);
    expect(err <= tol(false), || {
        format!(
            "{} (tolerance {:e})",
            format_args!("tiled linear, wrapped grid: {err}"),
            tol(false)
        )
    });
}

/// The test that checks each catalogued kernel against its CPU twin, as `(file, test)`. The
/// match is exhaustive: a kernel added to the catalogue without a twin test does not compile.
fn twin_test(k: sret_tome::kernels::Kernel) -> (&'static str, &'static str) {
    use sret_tome::kernels::Kernel as K;
    match k {
        K::Conv => ("kernels.rs", "conv_pooling_matches_cpu"),
        K::ConvDense | K::ConvSg => ("kernels.rs", "conv_stem_layers_match_cpu"),
        K::LayerNorm => ("kernels.rs", "layer_norm_matches_cpu"),
        K::LnStats => ("kernels.rs", "layer_norm_folded_into_linear_matches_cpu"),
        K::Linear | K::LinearSg | K::LinearTiled => {
            ("kernels.rs", "linear_matches_cpu_for_every_epilogue")
        }
        K::Attention | K::AttentionVec4 | K::AttentionSg => ("kernels.rs", "attention_matches_cpu"),
        K::MeanTokens => ("kernels.rs", "mean_tokens_matches_cpu"),
        K::TomeMetric
        | K::TomeMatch
        | K::TomeMatchSg
        | K::TomeRank
        | K::TomeSlots
        | K::TomeMerge
        | K::TomeMergeFused
        | K::TomeMapUpdate => ("kernels.rs", "merge_pipeline_matches_cpu"),
        K::CopyTokens => ("kernels.rs", "token_copies_match_cpu"),
        K::MlpFused => ("kernels.rs", "mlp_matches_cpu"),
        K::Preprocess => ("api.rs", "gpu_preprocessing_is_the_cpu_preprocessing"),
    }
}

/// Every catalogue entry names a CPU-twin test ([`twin_test`]) that exists as a `#[test]` in
/// the file it names.
#[test]
fn every_catalogued_kernel_has_a_twin_test() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let mut missing = Vec::new();
    for k in sret_tome::kernels::Kernel::ALL {
        let (file, test) = twin_test(k);
        let src = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
        if !src.contains(&format!("#[test]\nfn {test}()")) {
            missing.push(format!("{} -> tests/{file}::{test}", k.name()));
        }
    }
    assert!(missing.is_empty(), "twin tests not found: {missing:?}");
}
