//! The static token trajectory: for every `Transformer_Block` execution, how many tokens enter,
//! how many the schedule asks to merge, how many the merging constraint lets it merge, and how
//! many leave. Token counts depend only on the model and the schedule, never on the image, so
//! the whole run can be planned (buffers sized, dispatches recorded) before any input is seen.
//!
//! Within a stage, execution `e` receives the previous execution's output; at the end of the
//! stage the unmerge stack restores the stage's full grid for the convolutional pooling, so each
//! stage starts again from `cfg.tokens(stage)` tokens (784, 196, 49 at 224 pixels).

use std::fmt::Write as _;

use serde::Serialize;

use super::constraints::safe_r;
use super::schedule::Schedule;
use crate::error::{Error, Result};
use crate::model::ModelConfig;

/// One run of a (possibly shared) `Transformer_Block`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Execution {
    /// Stage index, 0-based.
    pub stage: usize,
    /// Execution index within the stage, 0-based (`StageConfig::block_of` gives the shared block).
    pub exec: usize,
    /// Tokens entering the block: attention (qkv, proj) runs on these.
    pub tokens_in: usize,
    /// What the schedule asked to merge.
    pub target_r: usize,
    /// What the merging constraint (Eq. 3) allows: the number actually merged.
    pub safe_r: usize,
    /// `tokens_in - safe_r`: the block's MLP and the following `Non_proj` run on these.
    pub tokens_out: usize,
    /// Groups of the sliced attention in this execution; divides `tokens_in`.
    pub groups: usize,
    /// Whether this execution randomly permutes the tokens before grouped attention.
    pub permuted: bool,
}

impl Execution {
    /// Whether this execution merges any token (`safe_r > 0`).
    pub fn merges(&self) -> bool {
        self.safe_r > 0
    }
}

/// The planned token counts of a whole forward, one [`Execution`] per `Transformer_Block`
/// run; built by [`Trajectory::new`] before any image is seen.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Trajectory {
    /// All executions in run order, stage by stage.
    pub executions: Vec<Execution>,
}

impl Trajectory {
    /// Plans the token counts of every execution of `cfg` under `schedule`.
    ///
    /// Errors when the schedule's parameters are invalid, when a `list:` schedule does not have one
    /// entry per execution, or when a stage's grid is not a multiple of its group counts (no
    /// published variant has that problem).
    pub fn new(cfg: &ModelConfig, schedule: &Schedule) -> Result<Trajectory> {
        let targets = schedule.targets(cfg)?;
        let mut executions = Vec::with_capacity(cfg.total_executions());
        for (s, (stage, stage_targets)) in cfg.stages.iter().zip(&targets).enumerate() {
            let g = stage.group_lcm();
            let mut n = cfg.tokens(s);
            if g == 0 || !n.is_multiple_of(g) {
                return Err(Error::arg(
                    "model",
                    cfg.name,
                    format!(
                        "stage {s} starts with {n} tokens, not a multiple of its group counts' lcm {g} ({} and {})",
                        stage.groups1, stage.groups2
                    ),
                ));
            }
            for (e, &target_r) in stage_targets.iter().enumerate() {
                let r = safe_r(n, target_r, g);
                let out = n - r;
                executions.push(Execution {
                    stage: s,
                    exec: e,
                    tokens_in: n,
                    target_r,
                    safe_r: r,
                    tokens_out: out,
                    groups: stage.groups_of(e),
                    permuted: stage.permutes(e),
                });
                n = out;
            }
        }
        Ok(Trajectory { executions })
    }

    /// The executions of one stage, in order.
    pub fn stage(&self, stage: usize) -> impl Iterator<Item = &Execution> + '_ {
        self.executions.iter().filter(move |e| e.stage == stage)
    }

    /// Number of stages covered (one more than the largest stage index).
    pub fn num_stages(&self) -> usize {
        self.executions
            .iter()
            .map(|e| e.stage + 1)
            .max()
            .unwrap_or(0)
    }

    /// Tokens merged over the whole network (the paper's "tokens removed").
    pub fn removed_total(&self) -> usize {
        self.executions.iter().map(|e| e.safe_r).sum()
    }

    /// The merged count of every execution, grouped by stage.
    pub fn per_stage_safe_r(&self) -> Vec<Vec<usize>> {
        let mut out = vec![Vec::new(); self.num_stages()];
        for e in &self.executions {
            out[e.stage].push(e.safe_r);
        }
        out
    }

    /// The target of every execution, grouped by stage.
    pub fn per_stage_target_r(&self) -> Vec<Vec<usize>> {
        let mut out = vec![Vec::new(); self.num_stages()];
        for e in &self.executions {
            out[e.stage].push(e.target_r);
        }
        out
    }

    /// Tokens merged in each stage.
    pub fn removed_per_stage(&self) -> Vec<usize> {
        self.per_stage_safe_r()
            .iter()
            .map(|v| v.iter().sum())
            .collect()
    }

    /// Largest token count any execution of `stage` sees (the stage's grid), 0 if none.
    pub fn max_tokens(&self, stage: usize) -> usize {
        self.stage(stage).map(|e| e.tokens_in).max().unwrap_or(0)
    }

    /// Tokens leaving the last execution of `stage` (before the unmerge stack restores the
    /// grid), `None` for a stage without executions.
    pub fn final_tokens(&self, stage: usize) -> Option<usize> {
        self.stage(stage).last().map(|e| e.tokens_out)
    }

    /// Whether any execution merges tokens.
    pub fn merges(&self) -> bool {
        self.executions.iter().any(Execution::merges)
    }
}

/// The human-readable plan printed by `sret-tome plan`: one line per execution, then the tokens
/// removed per stage and in total. Stages and executions are numbered from 0, as in the JSON
/// form. A `*` after the merged count marks an execution where the merging constraint changed
/// the schedule's target.
pub fn render_table(traj: &Trajectory) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:>5}  {:>4}  {:>9}  {:>8}  {:>7}  {:>10}",
        "stage", "exec", "tokens in", "target r", "safe r", "tokens out"
    );
    let mut adjusted = false;
    for e in &traj.executions {
        let mark = if e.safe_r != e.target_r { "*" } else { " " };
        adjusted |= e.safe_r != e.target_r;
        let _ = writeln!(
            s,
            "{:>5}  {:>4}  {:>9}  {:>8}  {:>6}{}  {:>10}",
            e.stage, e.exec, e.tokens_in, e.target_r, e.safe_r, mark, e.tokens_out
        );
    }
    for (stage, removed) in traj.removed_per_stage().iter().enumerate() {
        let first = traj.max_tokens(stage);
        let last = traj.final_tokens(stage).unwrap_or(first);
        let _ = writeln!(
            s,
            "stage {stage}: removed {removed} ({first} -> {last} tokens)"
        );
    }
    let _ = writeln!(s, "total removed: {}", traj.removed_total());
    if adjusted {
        let _ = writeln!(
            s,
            "* safe r differs from the target (merging constraint, Eq. 3)"
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::MODEL_NAMES;

    fn sret_t() -> ModelConfig {
        ModelConfig::by_name("sret_t_distill").unwrap()
    }

    fn plan_spec(spec: &str) -> Trajectory {
        Trajectory::new(&sret_t(), &spec.parse().unwrap()).unwrap()
    }

    #[test]
    fn paper_totals() {
        for (spec, removed) in [
            ("none", 0),
            ("constant:10", 230),
            ("linear:10", 223),
            ("exp:0.10,0.6", 235),
            ("exp:0.25,0", 264),
            ("exp:0.40,0.2", 530),
        ] {
            assert_eq!(plan_spec(spec).removed_total(), removed, "{spec}");
        }
    }

    #[test]
    fn constant_10_in_full() {
        let t = plan_spec("constant:10");
        assert_eq!(t.executions.len(), 20);
        assert_eq!(
            t.per_stage_safe_r(),
            vec![vec![16; 4], vec![12; 10], vec![10, 10, 10, 9, 5, 2]]
        );
        assert_eq!(t.removed_per_stage(), [64, 120, 46]);
        let s0: Vec<_> = t.stage(0).map(|e| (e.tokens_in, e.tokens_out)).collect();
        assert_eq!(s0, [(784, 768), (768, 752), (752, 736), (736, 720)]);
        assert_eq!(t.final_tokens(1), Some(76));
        let s2: Vec<_> = t.stage(2).map(|e| (e.tokens_in, e.tokens_out)).collect();
        assert_eq!(
            s2,
            [(49, 39), (39, 29), (29, 19), (19, 10), (10, 5), (5, 3)]
        );
        assert!(t.executions.iter().all(|e| e.target_r == 10));
        // Groups and permutation follow the stage configuration.
        let g0: Vec<_> = t.stage(0).map(|e| (e.groups, e.permuted)).collect();
        assert_eq!(g0, [(8, false), (2, true), (8, false), (2, true)]);
        assert!(t
            .stage(1)
            .all(|e| !e.permuted && e.groups == if e.exec % 2 == 0 { 4 } else { 1 }));
    }

    #[test]
    fn other_paper_trajectories() {
        let t = plan_spec("exp:0.25,0");
        assert_eq!(
            t.per_stage_safe_r(),
            vec![
                vec![200, 0, 0, 0],
                [52].into_iter().chain([0; 9]).collect(),
                vec![12, 0, 0, 0, 0, 0]
            ]
        );
        let t = plan_spec("exp:0.10,0.6");
        assert_eq!(t.removed_per_stage().iter().sum::<usize>(), 235);
        assert_eq!(t.per_stage_safe_r()[0], [80, 48, 32, 16]);
        let t = plan_spec("none");
        assert!(!t.merges());
        assert!(t.executions.iter().all(|e| e.tokens_in == e.tokens_out));
        assert_eq!(t.executions.len(), 20);
    }

    #[test]
    fn every_length_fits_its_groups_for_every_schedule() {
        let mut specs: Vec<String> = vec!["none".into()];
        for r in 0..=60 {
            specs.push(format!("constant:{r}"));
            specs.push(format!("linear:{r}"));
        }
        specs.push("constant:100000".into());
        for i in 0..20 {
            for a in 0..=10 {
                specs.push(format!("exp:{},{}", i as f64 * 0.05, a as f64 * 0.1));
            }
        }
        specs.push("exp:0.999,1".into());
        for name in MODEL_NAMES {
            let cfg = ModelConfig::by_name(name).unwrap();
            for spec in &specs {
                let t = Trajectory::new(&cfg, &spec.parse().unwrap()).unwrap();
                assert_eq!(t.executions.len(), cfg.total_executions());
                for e in &t.executions {
                    let st = &cfg.stages[e.stage];
                    assert_eq!(e.groups, st.groups_of(e.exec));
                    assert_eq!(e.tokens_in % e.groups, 0, "{name} {spec} {e:?}");
                    assert_eq!(e.tokens_out % st.group_lcm(), 0, "{name} {spec} {e:?}");
                    assert!(e.tokens_out >= st.group_lcm(), "{name} {spec} {e:?}");
                    assert!(e.safe_r <= e.tokens_in / 2, "{name} {spec} {e:?}");
                    assert_eq!(e.tokens_out, e.tokens_in - e.safe_r);
                }
                // Each stage starts from its full grid and chains.
                for s in 0..cfg.stages.len() {
                    let ex: Vec<_> = t.stage(s).collect();
                    assert_eq!(ex[0].tokens_in, cfg.tokens(s));
                    for w in ex.windows(2) {
                        assert_eq!(w[1].tokens_in, w[0].tokens_out);
                    }
                }
            }
        }
    }

    #[test]
    fn list_schedule() {
        let cfg = sret_t();
        let mut list = vec![0usize; 20];
        list[0] = 10;
        list[19] = 3;
        let t = Trajectory::new(&cfg, &Schedule::List(list)).unwrap();
        assert_eq!(t.executions[0].safe_r, 16);
        assert_eq!(t.executions[19].safe_r, 3);
        assert_eq!(t.removed_total(), 19);
        assert!(Trajectory::new(&cfg, &Schedule::List(vec![1; 19])).is_err());
    }

    #[test]
    fn table() {
        let text = render_table(&plan_spec("constant:10"));
        assert!(
            text.starts_with("stage  exec  tokens in  target r   safe r  tokens out\n"),
            "{text}"
        );
        assert!(
            text.contains("    0     0        784        10      16*         768\n"),
            "{text}"
        );
        assert!(
            text.contains("stage 2: removed 46 (49 -> 3 tokens)"),
            "{text}"
        );
        assert!(text.contains("total removed: 230"), "{text}");
        assert_eq!(text.lines().count(), 1 + 20 + 3 + 1 + 1);
        let none = render_table(&plan_spec("none"));
        assert!(
            none.contains("total removed: 0") && !none.contains('*'),
            "{none}"
        );
    }

    #[test]
    fn serializes() {
        let json = serde_json::to_string(&plan_spec("constant:10")).unwrap();
        assert!(json.starts_with(r#"{"executions":[{"stage":0,"exec":0,"tokens_in":784,"target_r":10,"safe_r":16,"tokens_out":768,"groups":8,"permuted":false}"#), "{json}");
    }
}
