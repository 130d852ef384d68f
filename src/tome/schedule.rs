//! Token-reduction schedules: how many tokens each `Transformer_Block` execution is *asked* to
//! merge. The merging constraint ([`super::safe_r`]) then decides how many it actually merges.
//!
//! Spec syntax (as accepted by `--schedule`):
//!
//! | spec | meaning |
//! |---|---|
//! | `none` | no merging |
//! | `constant:R` | target `R` at every execution (ToMe's constant schedule) |
//! | `tome:R,INFLECT` | ToMe's `(r, inflection)` form over all `L` executions: `m = trunc(R (1 - INFLECT))`, `M = 2R - m`, then `trunc(m + (M - m) / (L - 1) * d)` at global execution `d`; `INFLECT` in `[-1, 1]` (0 is constant, -1 ToMe's decreasing schedule, +1 increasing) |
//! | `linear:R` | one ramp over all `L` executions of the network: `floor(max(0, 2R - d * 2R / (L - 1)))` at global execution `d` (ToMe's decreasing schedule) |
//! | `exp:RINIT,ALPHA` | per stage (paper Eq. 4): `r0 = floor(N_stage * RINIT)` with `N_stage` the tokens entering the stage, then `floor(r0 * ALPHA^d)` at the stage's execution `d` (`0^0 = 1`); `RINIT` in `[0, 1)`, `ALPHA` in `[0, 1]` |
//! | `list:r1,r2,...` | explicit targets, one per execution of the whole network |
//!
//! All arithmetic on fractional values is done in `f64` in the same order as the reference, so
//! the targets are bit-for-bit those of the paper's runs.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};
use crate::model::ModelConfig;

const WHAT: &str = "schedule";
const SYNTAX: &str =
    "expected one of none, constant:R, tome:R,INFLECT, linear:R, exp:RINIT,ALPHA or list:R1,R2,... (R non-negative integers)";

/// How many tokens each `Transformer_Block` execution is asked to merge; parse one from the
/// spec syntax in the module docs (`"constant:10".parse()`). The targets are requests:
/// [`safe_r`](super::safe_r) caps each to what the execution can merge.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Schedule {
    /// No merging (`none`).
    #[default]
    None,
    /// The same target `R` at every execution (`constant:R`).
    Constant(usize),
    /// One decreasing ramp from `2R` to 0 over all executions of the network (`linear:R`).
    Linear(usize),
    /// ToMe's `(r, inflection)` schedule (`tome.utils.parse_r`).
    Tome {
        /// The average target `R` per execution.
        r: usize,
        /// Slope of the ramp, in `[-1, 1]`: 0 is constant, -1 decreasing, +1 increasing.
        inflect: f64,
    },
    /// The paper's per-stage exponential decay, Eq. 4 (`exp:RINIT,ALPHA`).
    Exp {
        /// The first execution of a stage targets this fraction of the stage's tokens, in `[0, 1)`.
        r_init: f64,
        /// Decay factor per execution within a stage, in `[0, 1]`.
        alpha: f64,
    },
    /// Explicit targets, one per execution of the whole network (`list:r1,r2,...`).
    List(Vec<usize>),
}

impl Schedule {
    /// Checks the parameters of a schedule built in code rather than parsed (parsing already
    /// checks them).
    pub fn validate(&self) -> Result<()> {
        match *self {
            Schedule::Exp { r_init, alpha } => {
                check_exp(r_init, alpha).map_err(|why| Error::arg(WHAT, self, why))
            }
            Schedule::Tome { inflect, .. } => {
                check_inflect(inflect).map_err(|why| Error::arg(WHAT, self, why))
            }
            _ => Ok(()),
        }
    }

    /// The target reduction of every `Transformer_Block` execution, grouped by stage
    /// (`targets[stage][exec]`). An error for a configuration that
    /// [`ModelConfig::validate`] refuses.
    pub fn targets(&self, cfg: &ModelConfig) -> Result<Vec<Vec<usize>>> {
        self.validate()?;
        // Bounded depths and token counts before anything is sized from them.
        cfg.validate()?;
        let depths: Vec<usize> = cfg.stages.iter().map(|s| s.depth).collect();
        let total: usize = depths.iter().sum();
        let global: Vec<usize> = match self {
            Schedule::None => vec![0; total],
            Schedule::Constant(r) => vec![*r; total],
            Schedule::Linear(r) => linear_ramp(*r, total),
            Schedule::Tome { r, inflect } => tome_ramp(*r, *inflect, total),
            Schedule::List(list) => {
                if list.len() != total {
                    return Err(Error::arg(
                        WHAT,
                        self,
                        format!(
                            "model {} runs {} Transformer_Block executions ({}), but the list has {} entr{}",
                            cfg.name,
                            total,
                            depths
                                .iter()
                                .enumerate()
                                .map(|(s, d)| format!("stage {s}: {d}"))
                                .collect::<Vec<_>>()
                                .join(", "),
                            list.len(),
                            if list.len() == 1 { "y" } else { "ies" }
                        ),
                    ));
                }
                list.clone()
            }
            Schedule::Exp { r_init, alpha } => {
                return Ok(cfg
                    .stages
                    .iter()
                    .enumerate()
                    .map(|(s, st)| exp_stage(cfg.tokens(s), st.depth, *r_init, *alpha))
                    .collect());
            }
        };
        let mut out = Vec::with_capacity(depths.len());
        let mut start = 0;
        for d in depths {
            out.push(global[start..start + d].to_vec());
            start += d;
        }
        Ok(out)
    }
}

/// ToMe's decreasing schedule over `total` executions, computed as the reference does:
/// `step = 2R / (L - 1)` then `floor(max(0, 2R - step * d))`, in `f64`.
fn linear_ramp(r: usize, total: usize) -> Vec<usize> {
    let start = 2.0 * r as f64;
    let step = if total > 1 {
        start / (total - 1) as f64
    } else {
        0.0
    };
    (0..total)
        .map(|d| (start - step * d as f64).max(0.0).floor() as usize)
        .collect()
}

/// ToMe's `parse_r(L, (r, inflect))`, in `f64` as Python computes it (`int()` truncates; every
/// value is non-negative for `inflect` in `[-1, 1]`). One layer gets `m`.
fn tome_ramp(r: usize, inflect: f64, total: usize) -> Vec<usize> {
    let min = (r as f64 * (1.0 - inflect)).trunc();
    let max = 2.0 * r as f64 - min;
    let step = if total > 1 {
        (max - min) / (total - 1) as f64
    } else {
        0.0
    };
    (0..total)
        .map(|d| (min + step * d as f64).trunc().max(0.0) as usize)
        .collect()
}

fn check_inflect(inflect: f64) -> std::result::Result<(), String> {
    if inflect.is_finite() && (-1.0..=1.0).contains(&inflect) {
        Ok(())
    } else {
        Err(format!(
            "INFLECT must be in [-1, 1] (0 constant, -1 decreasing, +1 increasing), got {inflect}"
        ))
    }
}

/// The paper's Eq. 4 for one stage (0-based `d`, so `alpha^d` starts at `alpha^0 = 1`).
fn exp_stage(tokens: usize, depth: usize, r_init: f64, alpha: f64) -> Vec<usize> {
    let r0 = (tokens as f64 * r_init).trunc();
    (0..depth)
        .map(|d| {
            let v = r0 * alpha.powf(d as f64);
            if v.is_finite() && v > 0.0 {
                v.floor() as usize
            } else {
                0
            }
        })
        .collect()
}

fn check_exp(r_init: f64, alpha: f64) -> std::result::Result<(), String> {
    if !(r_init.is_finite() && (0.0..1.0).contains(&r_init)) {
        return Err(format!(
            "RINIT must be a fraction of the stage's tokens in [0, 1), got {r_init}"
        ));
    }
    if !(alpha.is_finite() && (0.0..=1.0).contains(&alpha)) {
        return Err(format!(
            "ALPHA must be a decay factor in [0, 1], got {alpha}"
        ));
    }
    Ok(())
}

fn parse_count(s: &str, name: &str) -> std::result::Result<usize, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err(format!("{name} is missing; {SYNTAX}"));
    }
    if !t.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{name} must be a non-negative integer, got '{t}'"));
    }
    t.parse::<usize>()
        .map_err(|_| format!("{name} '{t}' is too large"))
}

fn parse_fraction(s: &str, name: &str) -> std::result::Result<f64, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err(format!(
            "{name} is missing; expected exp:RINIT,ALPHA such as exp:0.25,0"
        ));
    }
    // Plain decimal numbers only (`0.25`, `.1`, `1`, `1e-1`): no signs, `inf` or `NaN`.
    let plain = t.bytes().all(|b| {
        b.is_ascii_digit() || b == b'.' || b == b'e' || b == b'E' || b == b'-' || b == b'+'
    });
    let value = if plain { t.parse::<f64>().ok() } else { None };
    match value {
        // `+ 0.0` turns a parsed `-0` into `0`, so the canonical spec never shows a sign.
        Some(v) if v.is_finite() => Ok(v + 0.0),
        _ => Err(format!("{name} must be a decimal number, got '{t}'")),
    }
}

impl FromStr for Schedule {
    type Err = Error;

    fn from_str(spec: &str) -> Result<Self> {
        let err = |why: String| Error::arg(WHAT, spec, why);
        let trimmed = spec.trim();
        let (kind, args) = match trimmed.split_once(':') {
            Some((k, a)) => (k.trim().to_ascii_lowercase(), Some(a)),
            None => (trimmed.to_ascii_lowercase(), None),
        };
        match (kind.as_str(), args) {
            ("none", None) => Ok(Schedule::None),
            ("none", Some(_)) => Err(err("'none' takes no parameters".into())),
            ("constant", Some(a)) => Ok(Schedule::Constant(
                parse_count(a, "R").map_err(|w| err(format!("constant:R: {w}")))?,
            )),
            ("linear", Some(a)) => Ok(Schedule::Linear(
                parse_count(a, "R").map_err(|w| err(format!("linear:R: {w}")))?,
            )),
            ("exp" | "exponential", Some(a)) => {
                let parts: Vec<&str> = a.split(',').collect();
                if parts.len() != 2 {
                    return Err(err(format!(
                        "expected exp:RINIT,ALPHA with exactly two numbers (such as exp:0.25,0), got {} value{}",
                        parts.len(),
                        if parts.len() == 1 { "" } else { "s" }
                    )));
                }
                let r_init = parse_fraction(parts[0], "RINIT").map_err(err)?;
                let alpha = parse_fraction(parts[1], "ALPHA").map_err(err)?;
                check_exp(r_init, alpha).map_err(err)?;
                Ok(Schedule::Exp { r_init, alpha })
            }
            ("tome", Some(a)) => {
                let parts: Vec<&str> = a.split(',').collect();
                let [r, inflect] = parts.as_slice() else {
                    return Err(err(format!(
                        "expected tome:R,INFLECT (such as tome:8,-1), got {} value{}",
                        parts.len(),
                        if parts.len() == 1 { "" } else { "s" }
                    )));
                };
                let r = parse_count(r, "R").map_err(|w| err(format!("tome:R,INFLECT: {w}")))?;
                let inflect = parse_fraction(inflect, "INFLECT").map_err(err)?;
                check_inflect(inflect).map_err(err)?;
                Ok(Schedule::Tome { r, inflect })
            }
            ("list", Some(a)) => {
                if a.trim().is_empty() {
                    return Err(err(
                        "expected list:R1,R2,... with one target per Transformer_Block execution"
                            .into(),
                    ));
                }
                let list = a
                    .split(',')
                    .enumerate()
                    .map(|(i, s)| parse_count(s, &format!("entry {}", i + 1)))
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(|w| err(format!("list: {w}")))?;
                Ok(Schedule::List(list))
            }
            ("constant" | "linear" | "tome" | "exp" | "exponential" | "list", None) => Err(err(
                format!("'{kind}' needs parameters after a colon; {SYNTAX}"),
            )),
            _ => Err(err(format!("unknown schedule kind '{kind}'; {SYNTAX}"))),
        }
    }
}

impl fmt::Display for Schedule {
    /// The canonical spec, which parses back to the same schedule.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Schedule::None => write!(f, "none"),
            Schedule::Constant(r) => write!(f, "constant:{r}"),
            Schedule::Linear(r) => write!(f, "linear:{r}"),
            Schedule::Tome { r, inflect } => write!(f, "tome:{r},{inflect}"),
            // `{}` on f64 prints the shortest text that parses back to the same value.
            Schedule::Exp { r_init, alpha } => write!(f, "exp:{r_init},{alpha}"),
            Schedule::List(list) => {
                write!(f, "list:")?;
                for (i, r) in list.iter().enumerate() {
                    if i > 0 {
                        write!(f, ",")?;
                    }
                    write!(f, "{r}")?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sret_t() -> ModelConfig {
        ModelConfig::by_name("sret_t_distill").unwrap()
    }

    fn parse(s: &str) -> Schedule {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn tome_form_matches_parse_r() {
        // parse_r(12, (16, -1)), parse_r(12, (13, -0.5)), parse_r(12, (8, 0)) in Python.
        assert_eq!(
            tome_ramp(16, -1.0, 12),
            [32, 29, 26, 23, 20, 17, 14, 11, 8, 5, 2, 0]
        );
        assert_eq!(
            tome_ramp(13, -0.5, 12),
            [19, 17, 16, 15, 14, 13, 12, 11, 10, 9, 8, 7]
        );
        assert_eq!(tome_ramp(8, 0.0, 12), [8; 12]);
        assert_eq!(
            parse("tome:16,-1"),
            Schedule::Tome {
                r: 16,
                inflect: -1.0
            }
        );
        assert_eq!(parse("tome:16,-1").to_string(), "tome:16,-1");
        for bad in ["tome:16", "tome:16,-2", "tome:-1,0", "tome:4,nan"] {
            assert!(bad.parse::<Schedule>().is_err(), "{bad}");
        }
    }

    #[test]
    fn parses_every_kind() {
        assert_eq!(parse("none"), Schedule::None);
        assert_eq!(parse(" NONE "), Schedule::None);
        assert_eq!(parse("constant:10"), Schedule::Constant(10));
        assert_eq!(parse("linear: 20"), Schedule::Linear(20));
        assert_eq!(
            parse("exp:0.25,0"),
            Schedule::Exp {
                r_init: 0.25,
                alpha: 0.0
            }
        );
        assert_eq!(
            parse("exp:.1,.6"),
            Schedule::Exp {
                r_init: 0.1,
                alpha: 0.6
            }
        );
        assert_eq!(
            parse("exponential:0.4, 0.2"),
            Schedule::Exp {
                r_init: 0.4,
                alpha: 0.2
            }
        );
        assert_eq!(
            parse("exp:0,1"),
            Schedule::Exp {
                r_init: 0.0,
                alpha: 1.0
            }
        );
        assert_eq!(parse("list:1,2,3"), Schedule::List(vec![1, 2, 3]));
    }

    #[test]
    fn display_is_canonical_and_round_trips() {
        for (spec, canon) in [
            ("none", "none"),
            ("constant:10", "constant:10"),
            ("linear:10", "linear:10"),
            ("exp:0.25,0", "exp:0.25,0"),
            ("exp:.10,0.60", "exp:0.1,0.6"),
            ("exp:0.4,0.2", "exp:0.4,0.2"),
            ("list: 1, 2 ,3", "list:1,2,3"),
        ] {
            let s = parse(spec);
            assert_eq!(s.to_string(), canon);
            assert_eq!(parse(canon), s);
        }
    }

    #[test]
    fn malformed_specs_are_clear_errors() {
        for spec in [
            "",
            " ",
            "foo:3",
            "foo",
            "none:1",
            "constant",
            "constant:",
            "constant:-1",
            "constant:1.5",
            "constant:abc",
            "constant:99999999999999999999999",
            "linear:",
            "linear:x",
            "exp",
            "exp:",
            "exp:0.25",
            "exp:0.25,",
            "exp:,0",
            "exp:a,b",
            "exp:1.5,0",
            "exp:1,0",
            "exp:-0.1,0",
            "exp:0.2,NaN",
            "exp:0.2,inf",
            "exp:0.2,1.01",
            "exp:0.1,0.2,0.3",
            "list:",
            "list:1,,2",
            "list:1,-2",
            "list:a",
            ":",
            "::",
            "exp:0x1,0",
            "\u{0}",
            "constant:١٢",
        ] {
            let e = spec.parse::<Schedule>().expect_err(spec);
            let msg = e.to_string();
            assert!(matches!(e, Error::InvalidArgument { .. }), "{spec}: {msg}");
            assert!(msg.contains(&format!("'{spec}'")), "{spec}: {msg}");
        }
        let msg = "exp:0.25".parse::<Schedule>().unwrap_err().to_string();
        assert!(msg.contains("RINIT,ALPHA"), "{msg}");
        let msg = "exp:1.5,0".parse::<Schedule>().unwrap_err().to_string();
        assert!(msg.contains("[0, 1)"), "{msg}");
        let msg = "foo:3".parse::<Schedule>().unwrap_err().to_string();
        assert!(msg.contains("foo") && msg.contains("constant:R"), "{msg}");
    }

    #[test]
    fn never_panics_on_arbitrary_input() {
        let pieces = [
            "exp", "constant", "list", "linear", "none", ":", ",", "0", ".", "1e9", "-", "é", " ",
            "NaN",
        ];
        // Every string of up to four pieces.
        let mut specs = vec![String::new()];
        for _ in 0..4 {
            let mut next = Vec::new();
            for s in &specs {
                for p in pieces {
                    next.push(format!("{s}{p}"));
                }
            }
            specs.extend(next);
        }
        let cfg = sret_t();
        for s in specs {
            if let Ok(sched) = s.parse::<Schedule>() {
                let _ = sched.targets(&cfg);
                assert_eq!(sched.to_string().parse::<Schedule>().unwrap(), sched);
            }
        }
    }

    #[test]
    fn constant_targets() {
        let t = parse("constant:10").targets(&sret_t()).unwrap();
        assert_eq!(t, vec![vec![10; 4], vec![10; 10], vec![10; 6]]);
    }

    #[test]
    fn linear_is_one_global_ramp() {
        let t = parse("linear:10").targets(&sret_t()).unwrap();
        let flat: Vec<usize> = t.concat();
        // 20 - d * 20/19, floored, as Python computes it.
        assert_eq!(
            flat,
            [20, 18, 17, 16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0]
        );
        assert_eq!(t.iter().map(Vec::len).collect::<Vec<_>>(), [4, 10, 6]);
        assert_eq!(linear_ramp(5, 1), [10]);
        assert_eq!(linear_ramp(3, 0), Vec::<usize>::new());
    }

    #[test]
    fn exp_is_per_stage() {
        let cfg = sret_t();
        let t = parse("exp:0.10,0.6").targets(&cfg).unwrap();
        // r0 = int(784 * 0.1) = 78, int(196 * 0.1) = 19, int(49 * 0.1) = 4.
        assert_eq!(t[0], [78, 46, 28, 16]);
        assert_eq!(t[1], [19, 11, 6, 4, 2, 1, 0, 0, 0, 0]);
        assert_eq!(t[2], [4, 2, 1, 0, 0, 0]);
        let t = parse("exp:0.25,0").targets(&cfg).unwrap();
        assert_eq!(
            t,
            vec![
                vec![196, 0, 0, 0],
                [49].into_iter().chain([0; 9]).collect(),
                vec![12, 0, 0, 0, 0, 0]
            ]
        );
        let t = parse("exp:0.4,1").targets(&cfg).unwrap();
        assert_eq!(t[2], [19; 6]);
    }

    #[test]
    fn list_length_is_checked_against_the_model() {
        let cfg = sret_t();
        let ok = Schedule::List((0..20).collect());
        assert_eq!(ok.targets(&cfg).unwrap()[2], [14, 15, 16, 17, 18, 19]);
        let e = parse("list:1,2,3").targets(&cfg).unwrap_err().to_string();
        assert!(
            e.contains("20") && e.contains("3 entries") && e.contains("list:1,2,3"),
            "{e}"
        );
    }

    #[test]
    fn programmatic_exp_is_validated() {
        let bad = Schedule::Exp {
            r_init: f64::NAN,
            alpha: 0.5,
        };
        assert!(bad.targets(&sret_t()).is_err());
        let bad = Schedule::Exp {
            r_init: 0.5,
            alpha: 2.0,
        };
        assert!(bad.targets(&sret_t()).is_err());
    }
}
