//! The whole SReT + ToMe forward pass on the CPU, one image at a time (and that of the DeiT
//! and PiT baselines, whose blocks are the same without recursion, slicing or `Non_proj`).

use super::attention::{check_permutation, grouped_attention, head_mean_keys};
use super::merging::{bipartite_matching_split, merge_split, Matching};
use super::ops::{conv2d, gelu, layer_norm, linear, mean_tokens, relu};
use super::LN_EPS;
use crate::model::weights::{BlockWeights, LayerNorm, Linear, ModelWeights, NonProjWeights};
use crate::model::{ModelConfig, Readout};
use crate::tome::Split;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Everything a forward needs beyond weights and images, all static per plan.
#[derive(Clone, Copy, Debug)]
pub struct ReferenceSpec<'a> {
    /// `safe_r[stage][exec]`: tokens merged in each `Transformer_Block` execution (0 = no
    /// merge). Already constrained.
    pub safe_r: &'a [Vec<usize>],
    /// `perms[stage][exec]`: `Some(permutation of the current length)` for permuted executions
    /// (`cfg.stages[s].permutes(exec)`), else `None`.
    pub perms: &'a [Vec<Option<Vec<u32>>>],
    /// Optional forced matching decisions, `forced[stage][exec][image]`: where an entry is
    /// `Some`, it replaces the computed `bipartite_matching`.
    pub forced: Option<&'a [Vec<Vec<Option<Matching>>>]>,
}

/// What the CPU twin's forward returns: the logits and every merge decision it made, for
/// comparison with the GPU.
#[derive(Clone, Debug)]
pub struct ReferenceOutput {
    /// `[batch, num_classes]`
    pub logits: Vec<f32>,
    /// `matchings[stage][exec][image]` (empty for executions with r = 0).
    pub matchings: Vec<Vec<Vec<Matching>>>,
    /// `stage_maps[stage]`: `[batch, tokens(stage)]`, original grid position -> slot of the
    /// stage's final merged sequence.
    pub stage_maps: Vec<Vec<u32>>,
    /// `masses[stage][exec]`: `[batch, n_out]` token masses after that execution's merge
    /// (empty if r = 0).
    pub masses: Vec<Vec<Vec<f32>>>,
}

/// What one image's forward produces; assembled into [`ReferenceOutput`].
struct ImageOutput {
    logits: Vec<f32>,
    /// `[stage][exec]`, `None` where nothing was merged.
    matchings: Vec<Vec<Option<Matching>>>,
    maps: Vec<Vec<u32>>,
    masses: Vec<Vec<Option<Vec<f32>>>>,
}

/// Runs the model on `images: [batch, 3, size, size]` (normalised).
///
/// Images are independent; they are spread over the available cores, and every image's result
/// is the same whatever the batch it is run in.
pub fn forward(
    cfg: &ModelConfig,
    w: &ModelWeights,
    images: &[f32],
    batch: usize,
    spec: &ReferenceSpec,
) -> ReferenceOutput {
    let side = cfg.image_size;
    let per_image = 3 * side * side;
    assert_eq!(
        images.len(),
        batch * per_image,
        "forward: images are not [{batch}, 3, {side}, {side}]"
    );
    check_spec(cfg, w, batch, spec);

    let run =
        |i: usize| forward_image(cfg, w, &images[i * per_image..(i + 1) * per_image], i, spec);
    let threads = std::thread::available_parallelism()
        .map_or(1, |p| p.get())
        .min(batch)
        .max(1);
    let mut results: Vec<Option<ImageOutput>> = (0..batch).map(|_| None).collect();
    if threads <= 1 {
        for (i, slot) in results.iter_mut().enumerate() {
            *slot = Some(run(i));
        }
    } else {
        let next = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|_| {
                    scope.spawn(|| {
                        let mut done = Vec::new();
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            if i >= batch {
                                break done;
                            }
                            done.push((i, run(i)));
                        }
                    })
                })
                .collect();
            for h in handles {
                match h.join() {
                    Ok(done) => {
                        for (i, r) in done {
                            results[i] = Some(r);
                        }
                    }
                    Err(payload) => std::panic::resume_unwind(payload),
                }
            }
        });
    }
    let results: Vec<ImageOutput> = results
        .into_iter()
        .map(|r| r.expect("every image was run"))
        .collect();

    let stages = cfg.stages.len();
    let mut out = ReferenceOutput {
        logits: Vec::with_capacity(batch * cfg.num_classes),
        matchings: vec![Vec::new(); stages],
        stage_maps: vec![Vec::new(); stages],
        masses: vec![Vec::new(); stages],
    };
    for r in &results {
        out.logits.extend_from_slice(&r.logits);
    }
    for s in 0..stages {
        for r in &results {
            out.stage_maps[s].extend_from_slice(&r.maps[s]);
        }
        for e in 0..cfg.stages[s].depth {
            let merged = spec.safe_r[s][e] > 0;
            let mut ms = Vec::new();
            let mut mass = Vec::new();
            if merged {
                for r in &results {
                    ms.push(
                        r.matchings[s][e]
                            .clone()
                            .expect("merged execution has a matching"),
                    );
                    mass.extend_from_slice(
                        r.masses[s][e]
                            .as_deref()
                            .expect("merged execution has masses"),
                    );
                }
            }
            out.matchings[s].push(ms);
            out.masses[s].push(mass);
        }
    }
    out
}

/// Validates the spec's shapes and the token counts its merges produce, with readable panics.
fn check_spec(cfg: &ModelConfig, w: &ModelWeights, batch: usize, spec: &ReferenceSpec) {
    let stages = cfg.stages.len();
    assert_eq!(
        w.stages.len(),
        stages,
        "weights have {} stages, config {stages}",
        w.stages.len()
    );
    assert_eq!(
        spec.safe_r.len(),
        stages,
        "safe_r has {} stages, expected {stages}",
        spec.safe_r.len()
    );
    assert_eq!(
        spec.perms.len(),
        stages,
        "perms has {} stages, expected {stages}",
        spec.perms.len()
    );
    if let Some(f) = spec.forced {
        assert_eq!(
            f.len(),
            stages,
            "forced has {} stages, expected {stages}",
            f.len()
        );
    }
    for (s, st) in cfg.stages.iter().enumerate() {
        assert_eq!(
            spec.safe_r[s].len(),
            st.depth,
            "safe_r[{s}] has {} entries, expected {}",
            spec.safe_r[s].len(),
            st.depth
        );
        assert_eq!(
            spec.perms[s].len(),
            st.depth,
            "perms[{s}] has {} entries, expected {}",
            spec.perms[s].len(),
            st.depth
        );
        if let Some(f) = spec.forced {
            assert_eq!(
                f[s].len(),
                st.depth,
                "forced[{s}] has {} entries, expected {}",
                f[s].len(),
                st.depth
            );
        }
        let mut n = cfg.tokens(s);
        for e in 0..st.depth {
            let g = st.groups_of(e);
            assert!(
                n.is_multiple_of(g),
                "stage {s} exec {e}: {n} tokens not divisible into {g} groups"
            );
            match (&spec.perms[s][e], st.permutes(e)) {
                (Some(p), true) => check_permutation(p, n),
                (None, false) => {}
                (Some(_), false) => panic!(
                    "stage {s} exec {e}: a permutation was given for an unpermuted execution"
                ),
                (None, true) => {
                    panic!("stage {s} exec {e}: permuted execution needs a permutation of {n}")
                }
            }
            let r = spec.safe_r[s][e];
            assert!(
                r <= n / 2,
                "stage {s} exec {e}: cannot merge {r} of {n} tokens"
            );
            if let Some(f) = spec.forced {
                assert!(
                    f[s][e].is_empty() || f[s][e].len() == batch,
                    "forced[{s}][{e}] has {} images, expected {batch} (or none)",
                    f[s][e].len()
                );
            }
            n -= r;
        }
    }
}

/// `x = c_keep * x + c_add * y`, elementwise.
fn residual(x: &mut [f32], c_keep: f32, y: &[f32], c_add: f32) {
    assert_eq!(x.len(), y.len());
    let (a, b) = (c_keep as f64, c_add as f64);
    for (xv, &yv) in x.iter_mut().zip(y) {
        *xv = (a * *xv as f64 + b * yv as f64) as f32;
    }
}

/// `fc2(gelu(fc1(layer_norm(x))))` on `[rows, c]` tokens.
fn mlp(x: &[f32], rows: usize, norm: &LayerNorm, fc1: &Linear, fc2: &Linear) -> Vec<f32> {
    let y = layer_norm(x, rows, norm, LN_EPS);
    let mut h = linear(&y, rows, fc1);
    gelu(&mut h);
    linear(&h, rows, fc2)
}

/// `[rows, cols] -> [cols, rows]`.
fn transpose(x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = x[r * cols + c];
        }
    }
    out
}

/// One image through the model. Long on purpose: it reads top to bottom like the paper's
/// PyTorch forward it is checked against (stem, stages, merges, unmerge, pooling, head).
fn forward_image(
    cfg: &ModelConfig,
    w: &ModelWeights,
    image: &[f32],
    index: usize,
    spec: &ReferenceSpec,
) -> ImageOutput {
    // Stem: SReT's three stride-2 convolutions (BatchNorm folded), each followed by ReLU, or
    // the transformers' one patch convolution.
    let (mut h, mut wd) = (cfg.image_size, cfg.image_size);
    let mut grid = image.to_vec();
    for conv in &w.stem {
        let (mut y, oh, ow) = conv2d(&grid, 1, h, wd, conv);
        if cfg.stem_relu() {
            relu(&mut y);
        }
        grid = y;
        h = oh;
        wd = ow;
    }
    let dim0 = cfg.stages[0].dim;
    assert_eq!(
        (h, wd),
        (cfg.grid_side(0), cfg.grid_side(0)),
        "stem output grid is {h}x{wd}"
    );
    assert_eq!(
        w.pos_embed.len(),
        grid.len(),
        "pos_embed is not [{dim0}, {h}, {wd}]"
    );
    for (g, &p) in grid.iter_mut().zip(&w.pos_embed) {
        *g += p;
    }
    // Class and distillation tokens (none for SReT), `[lead, c]`.
    let split = Split::of(cfg);
    let lead = split.lead;
    let mut lead_x = w.lead_tokens.clone();
    assert_eq!(
        lead_x.len(),
        lead * dim0,
        "lead tokens are not [{lead}, {dim0}]"
    );

    let stages = cfg.stages.len();
    let mut out = ImageOutput {
        logits: Vec::new(),
        matchings: Vec::with_capacity(stages),
        maps: Vec::with_capacity(stages),
        masses: Vec::with_capacity(stages),
    };
    for (s, st) in cfg.stages.iter().enumerate() {
        let sw = &w.stages[s];
        let c = st.dim;
        let tokens = h * wd;
        assert_eq!(tokens, cfg.tokens(s), "stage {s} grid is {h}x{wd}");
        assert_eq!(
            grid.len(),
            c * tokens,
            "stage {s} input is not [{c}, {h}, {wd}]"
        );
        // Lead tokens, then the NCHW grid as tokens [n, c], token t = row * side + col.
        let mut x = lead_x.clone();
        x.extend(transpose(&grid, c, tokens));
        let mut n = lead + tokens;
        let mut mass = vec![1.0f32; n];
        // Grid position -> position in the current sequence.
        let mut map: Vec<u32> = (lead as u32..n as u32).collect();
        let mut stage_matchings = Vec::with_capacity(st.depth);
        let mut stage_masses = Vec::with_capacity(st.depth);

        for e in 0..st.depth {
            let blk: &BlockWeights = &sw.blocks[st.block_of(e)];
            let [c1, c2, c3, c4] = blk.coef;
            // Sliced (proportional) attention.
            let y = layer_norm(&x, n, &blk.norm1, LN_EPS);
            let qkv = linear(&y, n, &blk.qkv);
            let perm = if st.permutes(e) {
                spec.perms[s][e].as_deref()
            } else {
                None
            };
            // ToMe's MAE patch: no proportional attention (sizes still weight the merges).
            let ones;
            let att_mass = if !cfg.proportional_attention() {
                ones = vec![1.0f32; n];
                &ones
            } else {
                &mass
            };
            let att = grouped_attention(&qkv, 1, n, c, st.heads, st.groups_of(e), perm, att_mass);
            let proj = linear(&att, n, &blk.proj);
            residual(&mut x, c1, &proj, c2);

            // Token merging between attention and MLP, matched on the head-averaged keys.
            let r = spec.safe_r[s][e];
            if r > 0 {
                let forced = spec
                    .forced
                    .and_then(|f| f[s][e].get(index))
                    .and_then(|m| m.clone());
                let m = forced.unwrap_or_else(|| {
                    let metric = head_mean_keys(&qkv, 1, n, c, st.heads);
                    bipartite_matching_split(&metric, n, st.head_dim(), split)
                });
                let (x_new, mass_new, slot_map) = merge_split(&x, &mass, n, c, r, &m, split);
                for slot in map.iter_mut() {
                    *slot = slot_map[*slot as usize];
                }
                x = x_new;
                mass = mass_new;
                n -= r;
                stage_matchings.push(Some(m));
                stage_masses.push(Some(mass.clone()));
            } else {
                stage_matchings.push(None);
                stage_masses.push(None);
            }

            let m = mlp(&x, n, &blk.norm2, &blk.fc1, &blk.fc2);
            residual(&mut x, c3, &m, c4);

            // SReT: the execution's own Non_proj MLP (never merges).
            if let Some(np) = sw.non_projs.get(e) {
                let np: &NonProjWeights = np;
                let m = mlp(&x, n, &np.norm1, &np.fc1, &np.fc2);
                residual(&mut x, np.coef[0], &m, np.coef[1]);
            }
        }

        // Restore the full grid: every original position takes its final slot's features.
        let mut full = vec![0.0f32; tokens * c];
        for (t, &slot) in map.iter().enumerate() {
            let slot = slot as usize;
            full[t * c..(t + 1) * c].copy_from_slice(&x[slot * c..(slot + 1) * c]);
        }
        lead_x = x[..lead * c].to_vec();
        out.matchings.push(stage_matchings);
        out.masses.push(stage_masses);
        out.maps.push(map);

        match &sw.pool {
            Some(pool) if s + 1 < stages => {
                let nchw = transpose(&full, tokens, c);
                let (y, oh, ow) = conv2d(&nchw, 1, h, wd, pool);
                grid = y;
                h = oh;
                wd = ow;
                if let Some(fc) = &sw.pool_fc {
                    lead_x = linear(&lead_x, lead, fc);
                }
            }
            None if s + 1 == stages && cfg.readout() == Readout::MeanOfTokens => {
                // SReT's mean pool; global_pool='avg' as ToMe's MAE patch pools: merged tokens
                // by their size (`sum(x * size)[:, lead:] / T`), the mean of the restored grid.
                let pooled = mean_tokens(&full, 1, tokens, c);
                let normed = layer_norm(&pooled, 1, &w.norm, LN_EPS);
                out.logits = linear(&normed, 1, &w.head);
            }
            None if s + 1 == stages => {
                debug_assert_eq!(cfg.readout(), Readout::LeadTokens);
                // Classification from the lead tokens: the class token's head, averaged with
                // the distillation token's head when there is one.
                let normed = layer_norm(&lead_x, lead, &w.norm, LN_EPS);
                let cls = linear(&normed[..c], 1, &w.head);
                out.logits = match &w.head_dist {
                    Some(hd) => {
                        let dist = linear(&normed[c..2 * c], 1, hd);
                        cls.iter()
                            .zip(&dist)
                            .map(|(&a, &b)| ((f64::from(a) + f64::from(b)) / 2.0) as f32)
                            .collect()
                    }
                    None => cls,
                };
            }
            _ => panic!("stage {s}: pooling conv must be present exactly for non-final stages"),
        }
    }
    assert_eq!(
        out.logits.len(),
        cfg.num_classes,
        "head produces {} classes, config {}",
        out.logits.len(),
        cfg.num_classes
    );
    out
}
