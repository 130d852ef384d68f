//! Value lists of `sweep`: `START:STOP:STEP` (inclusive of STOP, as the paper's grids
//! `r_init = 0.05, 0.10, ..., 0.50` and `alpha = 0.0, 0.1, ..., 1.0`), or `V1,V2,...`.
//!
//! Range values are `START + i * STEP` rounded to 10 decimals, so that `0.1:0.3:0.1` gives the
//! literals `0.1, 0.2, 0.3` (not `0.30000000000000004`): the schedule's `floor` arithmetic then
//! sees the same numbers as a Python grid written as literals.

use crate::error::{Error, Result};

fn number(s: &str, spec: &str) -> Result<f64> {
    let t = s.trim();
    t.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite())
        .ok_or_else(|| Error::arg("grid", spec, format!("'{t}' is not a number")))
}

/// Round to 10 decimals (and turn `-0` into `0`).
pub fn clean(v: f64) -> f64 {
    format!("{v:.10}").parse::<f64>().unwrap_or(v) + 0.0
}

/// Parse `START:STOP:STEP` or a comma-separated list.
pub fn parse_values(spec: &str) -> Result<Vec<f64>> {
    let parts: Vec<&str> = spec.split(':').collect();
    let values = match parts.len() {
        1 => spec
            .split(',')
            .map(|p| number(p, spec).map(clean))
            .collect::<Result<Vec<f64>>>()?,
        3 => {
            let (start, stop, step) = (
                number(parts[0], spec)?,
                number(parts[1], spec)?,
                number(parts[2], spec)?,
            );
            if step <= 0.0 {
                return Err(Error::arg("grid", spec, "STEP must be positive"));
            }
            if stop < start {
                return Err(Error::arg("grid", spec, "STOP is below START"));
            }
            let n = ((stop - start) / step + 1e-9).floor() as usize + 1;
            if n > 10_000 {
                return Err(Error::arg("grid", spec, format!("{n} values is too many")));
            }
            (0..n).map(|i| clean(start + i as f64 * step)).collect()
        }
        _ => {
            return Err(Error::arg(
                "grid",
                spec,
                "expected START:STOP:STEP (such as 0.05:0.5:0.05) or V1,V2,...",
            ))
        }
    };
    let mut out: Vec<f64> = Vec::with_capacity(values.len());
    for v in values {
        if !out.contains(&v) {
            out.push(v);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paper_grid() {
        let r = parse_values("0.05:0.5:0.05").unwrap();
        assert_eq!(r.len(), 10);
        assert_eq!(r[0], 0.05);
        assert_eq!(r[5], 0.3);
        assert_eq!(r[9], 0.5);
        let a = parse_values("0:1:0.1").unwrap();
        assert_eq!(a.len(), 11);
        assert_eq!(a[3], 0.3);
        assert_eq!(a[10], 1.0);
        assert_eq!(parse_values("0.1:0.3:0.1").unwrap(), [0.1, 0.2, 0.3]);
    }

    #[test]
    fn lists_and_errors() {
        assert_eq!(parse_values("0.25, 0.1,0.25").unwrap(), [0.25, 0.1]);
        assert_eq!(parse_values("0.5").unwrap(), [0.5]);
        assert_eq!(parse_values("0:0.25:0.1").unwrap(), [0.0, 0.1, 0.2]);
        for bad in [
            "", "a", "0:1", "0:1:0", "1:0:0.1", "0:1:-1", "0:1:1:1", "nan",
        ] {
            assert!(parse_values(bad).is_err(), "{bad}");
        }
    }
}
