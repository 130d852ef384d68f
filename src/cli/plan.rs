//! `sret-tome plan`: the static token trajectory of a schedule, its FLOPs and parameters,
//! computed without touching a GPU.

use clap::Args;

use crate::error::Result;
use crate::model::{cost, ModelConfig};
use crate::tome::{self, Schedule};

#[derive(Args, Debug)]
pub struct PlanArgs {
    #[arg(long, default_value = crate::model::DEFAULT_MODEL)]
    pub model: String,
    /// Token merging schedule: none, constant:R, linear:R, exp:RINIT,ALPHA, list:r1,...
    #[arg(long, default_value = "none")]
    pub schedule: String,
    /// Print JSON instead of the table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: PlanArgs) -> Result<()> {
    let cfg = ModelConfig::by_name(&a.model)?;
    let schedule: Schedule = a.schedule.parse()?;
    let traj = tome::plan(&cfg, &schedule)?;
    let flops_thop = cost::flops_thop(&cfg, &traj);
    let flops_total = cost::flops_total(&cfg, &traj);
    let params = cost::params(&cfg);
    if a.json {
        let v = serde_json::json!({
            "model": cfg.name,
            "schedule": schedule.to_string(),
            "executions": traj.executions,
            "removed_total": traj.removed_total(),
            "removed_per_stage": traj.removed_per_stage(),
            "flops_thop": flops_thop,
            "flops_total": flops_total,
            "params": params,
        });
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        println!("{} under {}", cfg.name, schedule);
        print!("{}", tome::render_table(&traj));
        println!(
            "FLOPs per image: {:.2} G (thop convention), {:.2} G (all ops); parameters {:.2} M",
            flops_thop as f64 / 1e9,
            flops_total as f64 / 1e9,
            params as f64 / 1e6
        );
    }
    Ok(())
}
