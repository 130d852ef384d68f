//! The paper's figures for a sweep, drawn with `plotters` as PNG and SVG:
//!
//! * [`FrontierFigure`] (Fig. 7): quality against throughput and against peak activation memory;
//!   every grid point coloured by its `r_init`, the Pareto-optimal points (quality, throughput,
//!   PAM) ringed and labelled `(r_init, alpha)`, and the frontier of each 2-D projection drawn as
//!   a line;
//! * [`AlphaFigure`] (Fig. 6 at the large batch, Fig. 8 at batch 1): quality, throughput and PAM
//!   against alpha, one line per `r_init`, the uncompressed model dashed;
//! * [`TrajectoryFigure`] (Fig. 5): per schedule, the merge count each block execution asks for
//!   (`r_target`) and gets under the constraint of Eq. 3 (`r_safe`).
//!
//! Text uses DejaVu Sans, embedded in the binary (`assets/fonts/`, Bitstream Vera licence) and
//! rasterised by `ab_glyph`: no system fonts, no C libraries. SVG files name the `sans-serif`
//! family and are laid out with the same font metrics.

use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;

use super::pareto::{pareto_front, Sense};
use super::results::{ResultsFile, Role};
use crate::error::{Error, Result};
use crate::tome::Trajectory;

static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
const SANS: &str = "sans-serif";

/// Register the embedded font as plotters' `sans-serif` (once per process).
pub fn ensure_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font(SANS, FontStyle::Normal, FONT);
    });
}

/// Matplotlib's "tab10" colours.
pub const TAB10: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

const GREY: RGBColor = RGBColor(120, 120, 120);
const RED: RGBColor = RGBColor(200, 0, 0);

/// A legend entry's symbol.
enum Mark {
    Dot(RGBColor),
    Line(RGBColor),
    Dashed(RGBColor),
    Triangle,
    Cross,
    Ring(RGBColor),
}

/// One row of legend entries, centred in `area` (drawn above the panels, never over data).
fn legend_row<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    items: &[(Mark, String)],
) -> DResult {
    let f = font(14);
    let widths: Vec<i32> = items
        .iter()
        .map(|(_, t)| area.estimate_text_size(t, &f).map(|(w, _)| w as i32 + 46))
        .collect::<std::result::Result<_, _>>()
        .ctx()?;
    let (w, h) = area.dim_in_pixel();
    let mut x = ((w as i32 - widths.iter().sum::<i32>()) / 2).max(4);
    let y = h as i32 / 2;
    for ((mark, text), dx) in items.iter().zip(&widths) {
        let c = (x + 12, y);
        match mark {
            Mark::Dot(col) => area.draw(&Circle::new(c, 5, col.filled())),
            Mark::Line(col) => area.draw(&PathElement::new(
                vec![(x + 1, y), (x + 23, y)],
                col.stroke_width(3),
            )),
            Mark::Dashed(col) => area
                .draw(&PathElement::new(
                    vec![(x, y), (x + 8, y)],
                    col.stroke_width(3),
                ))
                .and_then(|_| {
                    area.draw(&PathElement::new(
                        vec![(x + 15, y), (x + 23, y)],
                        col.stroke_width(3),
                    ))
                }),
            Mark::Triangle => area.draw(&TriangleMarker::new(c, 7, BLACK.filled())),
            Mark::Cross => area.draw(&Cross::new(c, 6, BLACK.stroke_width(3))),
            Mark::Ring(col) => area.draw(&Circle::new(c, 8, col.stroke_width(2))),
        }
        .ctx()?;
        area.draw(&Text::new(
            text.clone(),
            (x + 30, y),
            f.pos(plotters::style::text_anchor::Pos::new(
                plotters::style::text_anchor::HPos::Left,
                plotters::style::text_anchor::VPos::Center,
            )),
        ))
        .ctx()?;
        x += dx;
    }
    Ok(())
}

fn colour(i: usize) -> RGBColor {
    TAB10[i % TAB10.len()]
}

type DResult = std::result::Result<(), String>;

trait Ctx<T> {
    fn ctx(self) -> std::result::Result<T, String>;
}
impl<T, E: Display> Ctx<T> for std::result::Result<T, E> {
    fn ctx(self) -> std::result::Result<T, String> {
        self.map_err(|e| e.to_string())
    }
}

/// Something drawable on any plotters backend.
pub trait Figure {
    /// Width and height of the figure, pixels.
    fn size(&self) -> (u32, u32);
    /// Draw the figure onto `root`.
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DResult;
}

fn figure_error(why: String) -> Error {
    Error::Write {
        path: PathBuf::from("(figure)"),
        why: format!("drawing failed: {why}"),
    }
}

/// Render `fig` into an RGB image.
pub fn render_rgb<F: Figure>(fig: &F) -> Result<image::RgbImage> {
    ensure_font();
    let (w, h) = fig.size();
    let mut buf = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        fig.draw(&root)
            .and_then(|_| root.present().ctx())
            .map_err(figure_error)?;
    }
    image::RgbImage::from_raw(w, h, buf).ok_or_else(|| figure_error("bitmap size".into()))
}

/// Render `fig` as SVG text.
pub fn render_svg<F: Figure>(fig: &F) -> Result<String> {
    ensure_font();
    let mut s = String::new();
    {
        let root = SVGBackend::with_string(&mut s, fig.size()).into_drawing_area();
        fig.draw(&root)
            .and_then(|_| root.present().ctx())
            .map_err(figure_error)?;
    }
    Ok(s)
}

/// Write `stem.png` and `stem.svg`; returns both paths.
pub fn save<F: Figure>(fig: &F, stem: &Path) -> Result<Vec<PathBuf>> {
    let png = stem.with_extension("png");
    let svg = stem.with_extension("svg");
    if let Some(dir) = stem.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::Write {
            path: dir.to_path_buf(),
            why: e.to_string(),
        })?;
    }
    crate::io::files::write_png(&png, &render_rgb(fig)?)?;
    super::results::write_text(&svg, &render_svg(fig)?)?;
    Ok(vec![png, svg])
}

/// `[lo, hi]` of finite values, padded by `pad` of the span (at least a small absolute margin).
fn span(vals: impl IntoIterator<Item = f64>, pad: f64) -> (f64, f64) {
    let v: Vec<f64> = vals.into_iter().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return (0.0, 1.0);
    }
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let d = if hi > lo {
        (hi - lo) * pad
    } else {
        (hi.abs() * 0.05).max(0.5)
    };
    (lo - d, hi + d)
}

/// [`span`] for percentages: the top stops just above 100 when no value exceeds it.
fn percent_span(vals: impl IntoIterator<Item = f64>) -> (f64, f64) {
    let v: Vec<f64> = vals.into_iter().filter(|x| x.is_finite()).collect();
    let (lo, hi) = span(v.iter().copied(), 0.1);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if hi > 100.0 && max <= 100.0 {
        (lo, 100.0 + 0.04 * (100.0 - lo).max(1.0))
    } else {
        (lo, hi)
    }
}

fn font(size: u32) -> TextStyle<'static> {
    (SANS, size).into_font().color(&BLACK)
}

fn num(v: f64) -> String {
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s.is_empty() || s == "-0" {
        "0".into()
    } else {
        s.to_string()
    }
}

/// One point of a results file as plotted.
#[derive(Clone, Debug)]
struct Pt {
    label: String,
    role: Role,
    r_init: Option<f64>,
    quality: Option<f64>,
    throughput: Option<f64>,
    pam_mib: Option<f64>,
    flops_g: f64,
    pareto: bool,
}

fn points(res: &ResultsFile, batch: Option<usize>) -> Vec<Pt> {
    res.results
        .iter()
        .map(|r| {
            let b = batch.and_then(|b| r.bench_at(b));
            Pt {
                label: match (r.r_init, r.alpha) {
                    (Some(ri), Some(a)) if r.role == Role::Grid => {
                        format!("({}, {})", num(ri), num(a))
                    }
                    _ if r.role == Role::Baseline => "uncompressed".into(),
                    _ => r.schedule.clone(),
                },
                role: r.role,
                r_init: r.r_init,
                quality: r.quality_value(res.quality_metric),
                throughput: b.map(|p| p.throughput_img_s),
                pam_mib: b.map(|p| p.pam_bytes as f64 / (1024.0 * 1024.0)),
                flops_g: r.flops_thop as f64 / 1e9,
                pareto: r.pareto,
            }
        })
        .collect()
}

/// Distinct `r_init` values of the grid rows, ascending.
fn r_inits(res: &ResultsFile) -> Vec<f64> {
    let mut v: Vec<f64> = res
        .results
        .iter()
        .filter(|r| r.role == Role::Grid)
        .filter_map(|r| r.r_init)
        .collect();
    v.sort_by(f64::total_cmp);
    v.dedup();
    v
}

/// The Pareto frontier (paper Fig. 7).
pub struct FrontierFigure<'a> {
    /// The sweep results to plot.
    pub results: &'a ResultsFile,
}

impl FrontierFigure<'_> {
    #[allow(clippy::too_many_arguments)]
    fn panel<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
        pts: &[Pt],
        x_of: &dyn Fn(&Pt) -> Option<f64>,
        x_sense: Sense,
        x_desc: &str,
        caption: &str,
    ) -> DResult {
        let res = self.results;
        let inits = r_inits(res);
        let usable: Vec<&Pt> = pts
            .iter()
            .filter(|p| x_of(p).is_some() && p.quality.is_some())
            .collect();
        let (x0, x1) = span(usable.iter().filter_map(|p| x_of(p)), 0.12);
        let metric = res.quality_metric;
        let (y0, y1) = if metric.is_percent() {
            percent_span(usable.iter().filter_map(|p| p.quality))
        } else {
            span(usable.iter().filter_map(|p| p.quality), 0.1)
        };
        let mut chart = ChartBuilder::on(area)
            .caption(caption, font(18))
            .margin(12)
            .x_label_area_size(48)
            .y_label_area_size(64)
            .build_cartesian_2d(x0..x1, y0..y1)
            .ctx()?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc(res.quality_metric.label())
            .label_style(font(13))
            .axis_desc_style(font(15))
            .light_line_style(TRANSPARENT)
            .bold_line_style(RGBColor(215, 215, 215))
            .draw()
            .ctx()?;
        // The frontier of this 2-D projection.
        let cands: Vec<&Pt> = usable
            .iter()
            .copied()
            .filter(|p| p.role != Role::Baseline)
            .collect();
        let coords: Vec<Vec<f64>> = cands
            .iter()
            .map(|p| vec![x_of(p).unwrap_or(f64::NAN), p.quality.unwrap_or(f64::NAN)])
            .collect();
        let front = pareto_front(&coords, &[x_sense, metric.sense()]);
        let mut line: Vec<(f64, f64)> = coords
            .iter()
            .zip(&front)
            .filter(|(_, &f)| f)
            .map(|(c, _)| (c[0], c[1]))
            .collect();
        line.sort_by(|a, b| a.0.total_cmp(&b.0));
        chart
            .draw_series(LineSeries::new(line, GREY.stroke_width(2)))
            .ctx()?;
        // Grid points by r_init.
        for (k, ri) in inits.iter().enumerate() {
            let c = colour(k);
            chart
                .draw_series(
                    usable
                        .iter()
                        .filter(|p| p.role == Role::Grid && p.r_init == Some(*ri))
                        .map(|p| {
                            Circle::new(
                                (x_of(p).unwrap_or(0.0), p.quality.unwrap_or(0.0)),
                                4,
                                c.filled(),
                            )
                        }),
                )
                .ctx()?;
        }
        // Schedules given by name.
        chart
            .draw_series(usable.iter().filter(|p| p.role == Role::Extra).map(|p| {
                EmptyElement::at((x_of(p).unwrap_or(0.0), p.quality.unwrap_or(0.0)))
                    + TriangleMarker::new((0, 0), 6, BLACK.filled())
                    + Text::new(p.label.clone(), (8, 2), font(12))
            }))
            .ctx()?;
        // The uncompressed model.
        chart
            .draw_series(usable.iter().filter(|p| p.role == Role::Baseline).map(|p| {
                EmptyElement::at((x_of(p).unwrap_or(0.0), p.quality.unwrap_or(0.0)))
                    + Cross::new((0, 0), 7, BLACK.stroke_width(3))
                    + Text::new("uncompressed", (9, 2), font(12))
            }))
            .ctx()?;
        // The Pareto-optimal points (all three objectives).
        chart
            .draw_series(usable.iter().filter(|p| p.pareto).map(|p| {
                EmptyElement::at((x_of(p).unwrap_or(0.0), p.quality.unwrap_or(0.0)))
                    + Circle::new((0, 0), 9, RED.stroke_width(2))
                    + Text::new(p.label.clone(), (10, -16), font(12).color(&RED))
            }))
            .ctx()?;
        Ok(())
    }
}

impl Figure for FrontierFigure<'_> {
    fn size(&self) -> (u32, u32) {
        (1500, 640)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DResult {
        let res = self.results;
        root.fill(&WHITE).ctx()?;
        let b = res.pareto_batch;
        let title = match b {
            Some(b) => format!(
                "Pareto analysis of the exponential schedule, {} ({} images), batch {b}{}",
                res.model,
                res.baseline()
                    .and_then(|r| r.quality.as_ref())
                    .map_or(0, |q| q.images),
                res.adapter
                    .as_ref()
                    .map(|a| format!(", {}", a.name))
                    .unwrap_or_default()
            ),
            None => format!(
                "Pareto analysis of the exponential schedule, {} (no throughput measured: FLOPs)",
                res.model
            ),
        };
        let root = root.titled(&title, font(20)).ctx()?;
        let (top, rest) = root.split_vertically(34);
        let mut items: Vec<(Mark, String)> = r_inits(res)
            .iter()
            .enumerate()
            .map(|(k, r)| (Mark::Dot(colour(k)), format!("r_init = {}", num(*r))))
            .collect();
        if res.results.iter().any(|r| r.role == Role::Extra) {
            items.push((Mark::Triangle, "other schedules".into()));
        }
        items.push((Mark::Cross, "uncompressed".into()));
        items.push((Mark::Ring(RED), "Pareto-optimal (r_init, alpha)".into()));
        items.push((Mark::Line(GREY), "frontier of each projection".into()));
        legend_row(&top, &items)?;
        let pts = points(res, b);
        match b {
            Some(b) => {
                let panels = rest.split_evenly((1, 2));
                self.panel(
                    &panels[0],
                    &pts,
                    &|p| p.throughput,
                    Sense::Maximize,
                    &format!("throughput at batch {b} (img/s)"),
                    "(a) quality vs throughput",
                )?;
                self.panel(
                    &panels[1],
                    &pts,
                    &|p| p.pam_mib,
                    Sense::Minimize,
                    &format!("peak activation memory at batch {b} (MiB)"),
                    "(b) quality vs peak activation memory",
                )?;
            }
            None => {
                self.panel(
                    &rest,
                    &pts,
                    &|p| Some(p.flops_g),
                    Sense::Minimize,
                    "FLOPs (G)",
                    "quality vs FLOPs",
                )?;
            }
        }
        Ok(())
    }
}

/// The effect of alpha at fixed `r_init` (paper Fig. 6 at batch 128, Fig. 8 at batch 1).
pub struct AlphaFigure<'a> {
    /// The sweep results to plot.
    pub results: &'a ResultsFile,
    /// Batch size whose throughput is plotted.
    pub batch: usize,
}

impl AlphaFigure<'_> {
    fn panel<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
        y_of: &dyn Fn(&super::results::ScheduleResult) -> Option<f64>,
        y_desc: &str,
        caption: &str,
        percent: bool,
    ) -> DResult {
        let res = self.results;
        let inits = r_inits(res);
        let grid: Vec<&super::results::ScheduleResult> = res
            .results
            .iter()
            .filter(|r| r.role == Role::Grid)
            .collect();
        let base = res.baseline().and_then(y_of);
        let values = grid.iter().filter_map(|r| y_of(r)).chain(base);
        let (y0, y1) = if percent {
            percent_span(values)
        } else {
            span(values, 0.1)
        };
        let (x0, x1) = span(grid.iter().filter_map(|r| r.alpha), 0.04);
        let mut chart = ChartBuilder::on(area)
            .caption(caption, font(17))
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(64)
            .build_cartesian_2d(x0..x1, y0..y1)
            .ctx()?;
        chart
            .configure_mesh()
            .x_desc("decay alpha")
            .y_desc(y_desc)
            .label_style(font(13))
            .axis_desc_style(font(15))
            .light_line_style(TRANSPARENT)
            .bold_line_style(RGBColor(215, 215, 215))
            .draw()
            .ctx()?;
        if let Some(b) = base {
            chart
                .draw_series(DashedLineSeries::new(
                    vec![(x0, b), (x1, b)],
                    8,
                    5,
                    BLACK.stroke_width(2),
                ))
                .ctx()?;
        }
        for (k, ri) in inits.iter().enumerate() {
            let c = colour(k);
            let mut line: Vec<(f64, f64)> = grid
                .iter()
                .filter(|r| r.r_init == Some(*ri))
                .filter_map(|r| Some((r.alpha?, y_of(r)?)))
                .collect();
            line.sort_by(|a, b| a.0.total_cmp(&b.0));
            chart
                .draw_series(LineSeries::new(line.clone(), c.stroke_width(2)))
                .ctx()?;
            chart
                .draw_series(line.iter().map(|&p| Circle::new(p, 4, c.filled())))
                .ctx()?;
        }
        Ok(())
    }
}

impl Figure for AlphaFigure<'_> {
    fn size(&self) -> (u32, u32) {
        (1650, 580)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DResult {
        let res = self.results;
        let b = self.batch;
        root.fill(&WHITE).ctx()?;
        let root = root
            .titled(
                &format!(
                    "Effect of the decay alpha at fixed r_init{}, {}{}",
                    if b == 0 {
                        String::new()
                    } else {
                        format!(", batch {b}")
                    },
                    res.model,
                    res.adapter
                        .as_ref()
                        .map(|a| format!(", {}", a.name))
                        .unwrap_or_default()
                ),
                font(20),
            )
            .ctx()?;
        let (top, rest) = root.split_vertically(34);
        let mut items: Vec<(Mark, String)> = r_inits(res)
            .iter()
            .enumerate()
            .map(|(k, r)| (Mark::Line(colour(k)), format!("r_init = {}", num(*r))))
            .collect();
        items.push((Mark::Dashed(BLACK), "uncompressed".into()));
        legend_row(&top, &items)?;
        let panels = rest.split_evenly((1, if b == 0 { 1 } else { 3 }));
        let metric = res.quality_metric;
        self.panel(
            &panels[0],
            &|r| r.quality_value(metric),
            metric.label(),
            "(a) quality",
            metric.is_percent(),
        )?;
        if b == 0 {
            return Ok(());
        }
        self.panel(
            &panels[1],
            &|r| r.bench_at(b).map(|p| p.throughput_img_s),
            &format!("throughput at batch {b} (img/s)"),
            "(b) throughput",
            false,
        )?;
        self.panel(
            &panels[2],
            &|r| {
                r.bench_at(b)
                    .map(|p| p.pam_bytes as f64 / (1024.0 * 1024.0))
            },
            &format!("peak activation memory at batch {b} (MiB)"),
            "(c) peak activation memory",
            false,
        )?;
        Ok(())
    }
}

/// Token trajectories: `r_target` vs `r_safe` per block execution (paper Fig. 5).
pub struct TrajectoryFigure {
    /// `(title, trajectory)` per panel.
    pub schedules: Vec<(String, Trajectory)>,
}

impl TrajectoryFigure {
    fn panel<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
        name: &str,
        t: &Trajectory,
        x_desc: bool,
    ) -> DResult {
        let n = t.executions.len();
        let adjusted = t
            .executions
            .iter()
            .filter(|e| e.target_r != e.safe_r)
            .count();
        let ymax = t
            .executions
            .iter()
            .map(|e| e.target_r.max(e.safe_r))
            .max()
            .unwrap_or(0)
            .max(1) as f64
            * 1.4;
        let caption = format!(
            "{name}: {} tokens removed; Eq. 3 changed {adjusted} of {n} targets",
            t.removed_total()
        );
        let mut chart = ChartBuilder::on(area)
            .caption(caption, font(16))
            .margin(8)
            .x_label_area_size(if x_desc { 44 } else { 28 })
            .y_label_area_size(56)
            .build_cartesian_2d(0.5f64..(n as f64 + 0.5), 0f64..ymax)
            .ctx()?;
        let fmt = |x: &f64| {
            let r = x.round();
            if (x - r).abs() < 1e-6 && r >= 1.0 {
                format!("{r}")
            } else {
                String::new()
            }
        };
        let mut mesh = chart.configure_mesh();
        mesh.x_labels(n.max(2))
            .x_label_formatter(&fmt)
            .y_label_formatter(&|y| format!("{y:.0}"))
            .y_desc("tokens merged")
            .label_style(font(12))
            .axis_desc_style(font(14))
            .disable_x_mesh()
            .light_line_style(TRANSPARENT)
            .bold_line_style(RGBColor(220, 220, 220));
        if x_desc {
            mesh.x_desc("Transformer_Block execution (1-based, network order)");
        }
        mesh.draw().ctx()?;
        let light = RGBColor(158, 202, 225);
        let dark = RGBColor(33, 113, 181);
        chart
            .draw_series(t.executions.iter().enumerate().map(|(i, e)| {
                let x = i as f64 + 1.0;
                Rectangle::new([(x - 0.38, 0.0), (x, e.target_r as f64)], light.filled())
            }))
            .ctx()?
            .label("r_target (schedule)")
            .legend(move |(x, y)| Rectangle::new([(x - 6, y - 5), (x + 6, y + 5)], light.filled()));
        chart
            .draw_series(t.executions.iter().enumerate().map(|(i, e)| {
                let x = i as f64 + 1.0;
                Rectangle::new([(x, 0.0), (x + 0.38, e.safe_r as f64)], dark.filled())
            }))
            .ctx()?
            .label("r_safe (merged, Eq. 3)")
            .legend(move |(x, y)| Rectangle::new([(x - 6, y - 5), (x + 6, y + 5)], dark.filled()));
        // Adjusted executions.
        let red = RGBColor(200, 0, 0);
        chart
            .draw_series(
                t.executions
                    .iter()
                    .enumerate()
                    .filter(|(_, e)| e.target_r != e.safe_r)
                    .map(|(i, e)| {
                        let x = i as f64 + 1.0;
                        let y = e.target_r.max(e.safe_r) as f64;
                        EmptyElement::at((x, y)) + Text::new("*", (-4, -16), font(16).color(&red))
                    }),
            )
            .ctx()?
            .label("* adjusted by Eq. 3")
            .legend(move |(x, y)| Circle::new((x, y), 3, red.filled()));
        // Stage boundaries and names.
        let stages = t.num_stages();
        for s in 0..stages {
            let ex: Vec<usize> = t
                .executions
                .iter()
                .enumerate()
                .filter(|(_, e)| e.stage == s)
                .map(|(i, _)| i)
                .collect();
            let (Some(&a), Some(&b)) = (ex.first(), ex.last()) else {
                continue;
            };
            if s > 0 {
                let x = a as f64 + 0.5;
                chart
                    .draw_series(DashedLineSeries::new(
                        vec![(x, 0.0), (x, ymax)],
                        6,
                        4,
                        BLACK.mix(0.5).stroke_width(1),
                    ))
                    .ctx()?;
            }
            let tokens = t.executions[a].tokens_in;
            let last = t.executions[b].tokens_out;
            chart
                .draw_series(std::iter::once(Text::new(
                    format!("stage {s}: {tokens} -> {last} tokens"),
                    (a as f64 + 0.6, ymax * 0.97),
                    font(13),
                )))
                .ctx()?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .label_font(font(12))
            .draw()
            .ctx()?;
        Ok(())
    }
}

impl Figure for TrajectoryFigure {
    fn size(&self) -> (u32, u32) {
        (1200, 60 + 250 * self.schedules.len().max(1) as u32)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DResult {
        root.fill(&WHITE).ctx()?;
        let root = root
            .titled(
                "Token reduction trajectories: requested (r_target) vs merged (r_safe)",
                font(20),
            )
            .ctx()?;
        let n = self.schedules.len().max(1);
        let panels = root.split_evenly((n, 1));
        for (i, (name, t)) in self.schedules.iter().enumerate() {
            self.panel(&panels[i], name, t, i + 1 == n)?;
        }
        Ok(())
    }
}

/// The figures of a sweep's results into `dir`: `frontier`, `alpha_effect_bs{B}` per measured
/// batch (or one without throughput when nothing was measured) and `trajectories` of
/// `trajectory_schedules`. Returns the files written.
pub fn sweep_figures(
    res: &ResultsFile,
    cfg: &crate::model::ModelConfig,
    trajectory_schedules: &[crate::tome::Schedule],
    dir: &Path,
) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    out.extend(save(
        &FrontierFigure { results: res },
        &dir.join("frontier"),
    )?);
    if res.results.iter().any(|r| r.role == Role::Grid) {
        for &b in &res.bench_batches {
            out.extend(save(
                &AlphaFigure {
                    results: res,
                    batch: b,
                },
                &dir.join(format!("alpha_effect_bs{b}")),
            )?);
        }
        if res.bench_batches.is_empty() {
            out.extend(save(
                &AlphaFigure {
                    results: res,
                    batch: 0,
                },
                &dir.join("alpha_effect"),
            )?);
        }
    }
    if !trajectory_schedules.is_empty() {
        let schedules = trajectory_schedules
            .iter()
            .map(|s| Ok((s.to_string(), crate::tome::Trajectory::new(cfg, s)?)))
            .collect::<Result<Vec<_>>>()?;
        out.extend(save(
            &TrajectoryFigure { schedules },
            &dir.join("trajectories"),
        )?);
    }
    Ok(out)
}
