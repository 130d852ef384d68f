//! Which merged token every patch ended in, stage by stage, drawn over the input image (as ToMe's
//! visualisation and the paper's stage maps).
//!
//! For each stage the trace gives, per original grid position (28x28, 14x14, 7x7 for a 224-pixel
//! input; a stage patch covers 8, 16 or 32 pixels), the slot of the merged token it is in at the
//! end of the stage, just before the unmerge stack restores the grid. A stage that merges nothing
//! keeps one token per patch.
//!
//! Drawing, per stage panel:
//! * every patch is filled with the mean colour of all the input pixels its token covers (style
//!   [`Style::Mean`], ToMe's look), or with a colour per token blended over the image
//!   ([`Style::Random`]), so a token that spans distant patches is visible as one colour;
//! * thin dark lines separate neighbouring patches that ended in different tokens;
//! * thick yellow lines are the borders of the sliced group attention's groups. Groups change
//!   with every execution (and the recursive passes permute the sequence first), so the figure
//!   shows the groups of the stage's *first* execution on the original grid: `groups1`
//!   contiguous runs of the raster-order sequence (stage 0 of SReT-T: 8 groups of 98 tokens, i.e.
//!   3.5 rows of 28, hence the step in the middle of every other border). A stage with one group
//!   has no group border.

use std::collections::HashMap;

use image::{Rgb, RgbImage};
use plotters::prelude::*;

use crate::error::{Error, Result};
use crate::model::ModelConfig;
use crate::preprocess::{IMAGENET_MEAN, IMAGENET_STD};
use crate::tome::Trajectory;

/// One stage's map from original patches to merged tokens.
#[derive(Clone, Debug, PartialEq)]
pub struct StageMap {
    /// Stage index, 0-based.
    pub stage: usize,
    /// Grid side (28, 14, 7).
    pub side: usize,
    /// `slots[row * side + col]`: the merged token the patch ended in.
    pub slots: Vec<u32>,
    /// Tokens entering the stage and leaving its last execution.
    pub tokens_in: usize,
    /// Tokens leaving the stage's last execution.
    pub tokens_out: usize,
    /// Groups of the stage's first execution (the borders drawn).
    pub groups: usize,
}

impl StageMap {
    /// Distinct tokens, the largest token's patch count, and tokens of a single patch.
    pub fn token_stats(&self) -> (usize, usize, usize) {
        let mut count: HashMap<u32, usize> = HashMap::new();
        for &s in &self.slots {
            *count.entry(s).or_default() += 1;
        }
        let largest = count.values().copied().max().unwrap_or(0);
        let single = count.values().filter(|&&c| c == 1).count();
        (count.len(), largest, single)
    }
}

/// The per-stage maps of image `image` of a traced forward. `trace_maps` holds
/// `(stage, map [batch * n_grid], n_grid)` for the stages that merged; the others get the
/// identity.
pub fn stage_maps(
    cfg: &ModelConfig,
    traj: &Trajectory,
    trace_maps: &[(usize, Vec<u32>, usize)],
    image: usize,
) -> Result<Vec<StageMap>> {
    (0..cfg.stages.len())
        .map(|s| {
            let side = cfg.grid_side(s);
            let n = side * side;
            let slots = match trace_maps.iter().find(|m| m.0 == s) {
                Some((_, map, n_grid)) => {
                    if *n_grid != n || map.len() < (image + 1) * n {
                        return Err(Error::arg(
                            "trace",
                            format!("stage {s}"),
                            format!("map of {} entries for a {side}x{side} grid", map.len()),
                        ));
                    }
                    map[image * n..(image + 1) * n].to_vec()
                }
                None => (0..n as u32).collect(),
            };
            Ok(StageMap {
                stage: s,
                side,
                slots,
                tokens_in: n,
                tokens_out: traj.final_tokens(s).unwrap_or(n),
                groups: cfg.stages[s].groups_of(0),
            })
        })
        .collect()
}

/// Group of every grid position when `side * side` positions in raster order are cut into
/// `groups` contiguous runs (SReT's sliced group attention without permutation).
pub fn group_labels(side: usize, groups: usize) -> Vec<usize> {
    let n = side * side;
    let per = n.div_ceil(groups.max(1)).max(1);
    (0..n).map(|p| p / per).collect()
}

/// The normalised `[3, H, W]` input back to RGB8 (exact for images preprocessed from RGB8).
pub fn denormalize(chw: &[f32], size: usize) -> RgbImage {
    let plane = size * size;
    RgbImage::from_fn(size as u32, size as u32, |x, y| {
        let i = y as usize * size + x as usize;
        let px = |c: usize| {
            let v = (chw[c * plane + i] * IMAGENET_STD[c] + IMAGENET_MEAN[c]) * 255.0;
            v.round().clamp(0.0, 255.0) as u8
        };
        Rgb([px(0), px(1), px(2)])
    })
}

/// How a merge picture colours the tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Style {
    /// Each patch takes the mean colour of its token (ToMe's visualisation).
    #[default]
    Mean,
    /// Each token gets a distinct colour, blended half over the image.
    Random,
}

/// A well-spread colour for token `t` (golden-angle hues).
pub fn token_colour(t: u32) -> [u8; 3] {
    let h = (t as f64 * 137.507_764) % 360.0;
    let (s, v) = (0.75, 0.95);
    let c = v * s;
    let x = c * (1.0 - ((h / 60.0) % 2.0 - 1.0).abs());
    let m = v - c;
    let (r, g, b) = match (h / 60.0) as u32 {
        0 => (c, x, 0.0),
        1 => (x, c, 0.0),
        2 => (0.0, c, x),
        3 => (0.0, x, c),
        4 => (x, 0.0, c),
        _ => (c, 0.0, x),
    };
    [
        ((r + m) * 255.0).round() as u8,
        ((g + m) * 255.0).round() as u8,
        ((b + m) * 255.0).round() as u8,
    ]
}

/// Colour of border lines between tokens.
pub const TOKEN_BORDER: [u8; 3] = [25, 25, 25];
/// Colour of group borders.
pub const GROUP_BORDER: [u8; 3] = [255, 214, 0];

/// First pixel of cell `i` when `size` pixels are cut into `side` cells: the exact patch
/// pitch where it divides (SReT, DeiT), an even partition where it does not (PiT's 27x27 grid
/// of overlapping 16-pixel patches at stride 8 over 224 pixels).
fn edge(i: u32, side: u32, size: u32) -> u32 {
    i * size / side
}

/// The mean input colour over each token's patches.
pub fn token_means(img: &RgbImage, map: &StageMap) -> HashMap<u32, [u8; 3]> {
    let side = map.side as u32;
    let size = img.width();
    let mut sums: HashMap<u32, ([u64; 3], u64)> = HashMap::new();
    for (pos, &slot) in map.slots.iter().enumerate() {
        let (r, c) = (pos as u32 / side, pos as u32 % side);
        let e = sums.entry(slot).or_insert(([0; 3], 0));
        for y in edge(r, side, size)..edge(r + 1, side, size) {
            for x in edge(c, side, size)..edge(c + 1, side, size) {
                let px = img.get_pixel(x, y).0;
                for (acc, &v) in e.0.iter_mut().zip(&px) {
                    *acc += v as u64;
                }
                e.1 += 1;
            }
        }
    }
    sums.into_iter()
        .map(|(s, (sum, n))| {
            let n = n.max(1);
            (
                s,
                [
                    ((sum[0] + n / 2) / n) as u8,
                    ((sum[1] + n / 2) / n) as u8,
                    ((sum[2] + n / 2) / n) as u8,
                ],
            )
        })
        .collect()
}

fn fill(out: &mut RgbImage, x0: u32, y0: u32, w: u32, h: u32, c: [u8; 3]) {
    for y in y0..(y0 + h).min(out.height()) {
        for x in x0..(x0 + w).min(out.width()) {
            out.put_pixel(x, y, Rgb(c));
        }
    }
}

/// One stage panel, `scale` output pixels per input pixel (the panel is `224 * scale` wide).
pub fn render_stage(img: &RgbImage, map: &StageMap, style: Style, scale: u32) -> RgbImage {
    let size = img.width();
    let side = map.side as u32;
    // Output pixels where cell `i` starts.
    let at = |i: u32| edge(i, side, size) * scale;
    let mut out = RgbImage::new(size * scale, size * scale);
    let means = token_means(img, map);
    let slot_at = |r: u32, c: u32| map.slots[(r * side + c) as usize];
    for r in 0..side {
        for c in 0..side {
            let slot = slot_at(r, c);
            let (x0, y0, w, h) = (at(c), at(r), at(c + 1) - at(c), at(r + 1) - at(r));
            match style {
                Style::Mean => fill(&mut out, x0, y0, w, h, means[&slot]),
                Style::Random => {
                    let tc = token_colour(slot);
                    for y in y0..y0 + h {
                        for x in x0..x0 + w {
                            let src = img.get_pixel(x / scale, y / scale).0;
                            let mix = |k: usize| ((src[k] as u16 + tc[k] as u16) / 2) as u8;
                            out.put_pixel(x, y, Rgb([mix(0), mix(1), mix(2)]));
                        }
                    }
                }
            }
        }
    }
    // Token borders: one line on the shared edge of two patches of different tokens.
    let tw = (scale / 2).max(1);
    let groups = group_labels(map.side, map.groups);
    let group_at = |r: u32, c: u32| groups[(r * side + c) as usize];
    for r in 0..side {
        for c in 0..side {
            let (w, h) = (at(c + 1) - at(c), at(r + 1) - at(r));
            if c + 1 < side && slot_at(r, c) != slot_at(r, c + 1) {
                fill(
                    &mut out,
                    at(c + 1) - tw / 2 - tw % 2,
                    at(r),
                    tw,
                    h,
                    TOKEN_BORDER,
                );
            }
            if r + 1 < side && slot_at(r, c) != slot_at(r + 1, c) {
                fill(
                    &mut out,
                    at(c),
                    at(r + 1) - tw / 2 - tw % 2,
                    w,
                    tw,
                    TOKEN_BORDER,
                );
            }
        }
    }
    // Group borders, thicker, on top.
    let gw = (scale * 3 / 2).max(2);
    for r in 0..side {
        for c in 0..side {
            let (w, h) = (at(c + 1) - at(c), at(r + 1) - at(r));
            if c + 1 < side && group_at(r, c) != group_at(r, c + 1) {
                fill(&mut out, at(c + 1) - gw / 2, at(r), gw, h, GROUP_BORDER);
            }
            if r + 1 < side && group_at(r, c) != group_at(r + 1, c) {
                fill(&mut out, at(c), at(r + 1) - gw / 2, w, gw, GROUP_BORDER);
            }
        }
    }
    out
}

/// Layout of the whole picture (all in output pixels).
pub const MARGIN: u32 = 16;
/// Height of the caption band above the panels.
pub const HEADER: u32 = 70;
/// Height of the caption band below the panels.
pub const FOOTER: u32 = 64;

/// The full picture: the input crop, then one panel per stage, with captions.
pub fn render(
    img: &RgbImage,
    maps: &[StageMap],
    style: Style,
    scale: u32,
    title: &str,
) -> Result<RgbImage> {
    super::plots::ensure_font();
    let scale = scale.max(1);
    let panel = img.width() * scale;
    let n = maps.len() as u32 + 1;
    let w = n * panel + (n + 1) * MARGIN;
    let h = HEADER + panel + FOOTER;
    let mut canvas = RgbImage::from_pixel(w, h, Rgb([255, 255, 255]));
    let big = image::imageops::resize(img, panel, panel, image::imageops::FilterType::Nearest);
    image::imageops::replace(&mut canvas, &big, MARGIN as i64, HEADER as i64);
    for (i, m) in maps.iter().enumerate() {
        let x = MARGIN + (i as u32 + 1) * (panel + MARGIN);
        let p = render_stage(img, m, style, scale);
        image::imageops::replace(&mut canvas, &p, x as i64, HEADER as i64);
    }
    // Captions with plotters on the same buffer.
    let (cw, ch) = canvas.dimensions();
    let mut buf = canvas.into_raw();
    {
        let root = BitMapBackend::with_buffer(&mut buf, (cw, ch)).into_drawing_area();
        let err = |e: String| Error::Write {
            path: "(visualisation)".into(),
            why: e,
        };
        let f = |s: u32| ("sans-serif", s).into_font().color(&BLACK);
        root.draw_text(title, &f(20), (MARGIN as i32, 8))
            .map_err(|e| err(e.to_string()))?;
        let px = img.width();
        let caption = |i: u32, l1: String, l2: String| -> Result<()> {
            let x = (MARGIN + i * (panel + MARGIN)) as i32;
            root.draw_text(&l1, &f(16), (x, 38))
                .map_err(|e| err(e.to_string()))?;
            root.draw_text(&l2, &f(14), (x, (HEADER + panel + 8) as i32))
                .map_err(|e| err(e.to_string()))?;
            Ok(())
        };
        caption(
            0,
            format!("input ({px}x{px} centre crop)"),
            "as the model sees it".into(),
        )?;
        for (i, m) in maps.iter().enumerate() {
            let (tokens, largest, _) = m.token_stats();
            let groups = if m.groups > 1 {
                format!(", {} groups of {}", m.groups, m.tokens_in / m.groups)
            } else {
                ", 1 group".into()
            };
            caption(
                i as u32 + 1,
                if (px as usize).is_multiple_of(m.side) {
                    format!(
                        "stage {}: {}x{} patches of {} px{groups}",
                        m.stage,
                        m.side,
                        m.side,
                        px as usize / m.side
                    )
                } else {
                    format!(
                        "stage {}: {}x{} patches (~{:.1} px pitch){groups}",
                        m.stage,
                        m.side,
                        m.side,
                        px as f64 / m.side as f64
                    )
                },
                format!(
                    "{} -> {} tokens; largest token {} patches",
                    m.tokens_in, tokens, largest
                ),
            )?;
        }
        let note = match style {
            Style::Mean => "patches filled with the mean colour of their merged token; dark lines: token borders; yellow: attention groups of the stage's first execution",
            Style::Random => "one colour per merged token; dark lines: token borders; yellow: attention groups of the stage's first execution",
        };
        root.draw_text(note, &f(14), (MARGIN as i32, (HEADER + panel + 34) as i32))
            .map_err(|e| err(e.to_string()))?;
        root.present().map_err(|e| err(e.to_string()))?;
    }
    RgbImage::from_raw(cw, ch, buf).ok_or_else(|| Error::Write {
        path: "(visualisation)".into(),
        why: "bitmap size".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_of_stage0() {
        let g = group_labels(28, 8);
        assert_eq!(g.len(), 784);
        assert_eq!(g[97], 0);
        assert_eq!(g[98], 1);
        // Row 3 is split half way: columns 0..14 in group 0, 14..28 in group 1.
        assert_eq!(g[3 * 28 + 13], 0);
        assert_eq!(g[3 * 28 + 14], 1);
        assert_eq!(*g.last().unwrap(), 7);
        assert!(group_labels(7, 1).iter().all(|&x| x == 0));
    }

    #[test]
    fn colours_differ() {
        let c: std::collections::HashSet<[u8; 3]> = (0..50).map(token_colour).collect();
        assert_eq!(c.len(), 50);
    }
}
