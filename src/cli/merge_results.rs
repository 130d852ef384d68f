//! `sret-tome merge-results`: join the shards of an `eval` or `sweep` run (`--shard K/N`), check
//! that they belong together and are complete, recompute the metrics and the Pareto frontier,
//! and write the joined JSON/CSV (and, for a sweep, the figures).

use std::path::PathBuf;

use clap::Args;

use super::eval::print_problems;
use super::sweep::write_figures;
use crate::error::{Error, Result};
use crate::eval::results::{merge_files, Kind, QualityMetric, ResultsFile};
use crate::model::ModelConfig;

/// Arguments of `sret-tome merge-results`.
#[derive(Args, Debug)]
pub struct MergeArgs {
    /// The shards' JSON results (from eval --json or sweep --out-dir).
    #[arg(required = true, num_args = 1..)]
    pub files: Vec<PathBuf>,
    /// Where to write eval.json/eval.csv or sweep.json/sweep.csv and the sweep's figures.
    #[arg(long, default_value = "merged-results")]
    pub out_dir: PathBuf,
    /// Merge even if some shards are missing (they are listed in the notes).
    #[arg(long)]
    pub allow_partial: bool,
    /// Schedules drawn in the trajectory figure (as for sweep).
    #[arg(long)]
    pub trajectory: Vec<String>,
    /// Recompute the frontier and figures on another quality axis: top1, top5, agreement, kl
    /// (the counts are all in the results).
    #[arg(long, value_enum)]
    pub quality: Option<QualityMetric>,
}

/// Join the shards, write the merged JSON, CSV (and a sweep's figures) and return the result.
pub fn run_merge(a: MergeArgs) -> Result<ResultsFile> {
    let inputs: Vec<&std::path::Path> = a.files.iter().map(|p| p.as_path()).collect();
    for name in ["eval.json", "eval.csv", "sweep.json", "sweep.csv"] {
        crate::io::files::check_output_creating(&a.out_dir.join(name), &inputs)?;
    }
    let earlier = super::sweep::earlier_files(&a.out_dir);
    let files = a
        .files
        .iter()
        .map(|p| Ok((p.clone(), ResultsFile::read_json(p)?)))
        .collect::<Result<Vec<_>>>()?;
    let mut res = merge_files(files, a.allow_partial)?;
    if let Some(q) = a.quality {
        if q.needs_labels() && !res.data.labelled {
            return Err(Error::arg(
                "quality",
                format!("{q:?}").to_lowercase(),
                "needs labelled data; these results have none (use agreement or kl)",
            ));
        }
        res.quality_metric = q;
        res.finalize();
    }
    let stem = match res.kind {
        Kind::Eval => "eval",
        Kind::Sweep => "sweep",
    };
    println!(
        "{} {stem} shards of {} on {} joined: {} images",
        a.files.len(),
        res.model,
        res.data.source,
        res.data.images_selected
    );
    for n in &res.notes {
        println!("note: {n}");
    }
    print!("{}", res.render_table());
    println!("pareto (*): {}", res.pareto_objectives.join("; "));
    print_problems("unreadable images (not counted)", &res.failures);
    print_problems("skipped files (not images)", &res.skipped);
    let json = a.out_dir.join(format!("{stem}.json"));
    let csv = a.out_dir.join(format!("{stem}.csv"));
    res.write_json(&json)?;
    res.write_csv(&csv)?;
    println!("wrote {}\nwrote {}", json.display(), csv.display());
    let mut written = vec![json, csv];
    if res.kind == Kind::Sweep {
        let cfg = ModelConfig::by_name(&res.model)?;
        written.extend(write_figures(&res, &cfg, &a.trajectory, &a.out_dir)?);
    }
    super::sweep::report_earlier(&a.out_dir, &earlier, &written);
    Ok(res)
}

/// Run `sret-tome merge-results`.
pub fn run(a: MergeArgs) -> Result<()> {
    run_merge(a).map(|_| ())
}
