//! `--shard K/N`: run slice `K` of `N` (numbered from 1, as GNU `split -n K/N`), so that a
//! cluster's job array can split a data set or a sweep's grid; `merge-results` joins the slices.
//!
//! Items are dealt round-robin (item `i` goes to shard `i mod N + 1`): slices differ in size by
//! at most one, and each sees every part of a class-sorted data set or of a grid.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Slice `index` of `count` of the work (`--shard K/N`), so that runs on several machines can
/// split a data set or a grid and be merged afterwards.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawShard")]
pub struct Shard {
    /// 1-based slice number.
    pub index: usize,
    /// Number of slices.
    pub count: usize,
}

/// The most slices a run may be split into: one per image of the largest data set
/// ([`crate::eval::dataset::MAX_SAMPLES`]).
pub const MAX_SHARDS: usize = crate::eval::dataset::MAX_SAMPLES;

/// A shard as a results file spells it, checked by [`Shard::new`] when read.
#[derive(Deserialize)]
struct RawShard {
    index: usize,
    count: usize,
}

impl TryFrom<RawShard> for Shard {
    type Error = Error;
    fn try_from(r: RawShard) -> Result<Shard> {
        Shard::new(r.index, r.count)
    }
}

impl Default for Shard {
    fn default() -> Self {
        Shard::WHOLE
    }
}

impl Shard {
    /// The whole: one slice of one.
    pub const WHOLE: Shard = Shard { index: 1, count: 1 };

    /// Slice `index` (1-based) of `count`; errors unless `1 <= index <= count <= MAX_SHARDS`.
    pub fn new(index: usize, count: usize) -> Result<Shard> {
        if count == 0 {
            return Err(Error::arg(
                "shard",
                format!("{index}/{count}"),
                "N must be at least 1",
            ));
        }
        if index == 0 {
            return Err(Error::arg(
                "shard",
                format!("{index}/{count}"),
                "shards are numbered from 1 to N (with a 0-based job array, pass $((SLURM_ARRAY_TASK_ID+1))/N)",
            ));
        }
        if count > MAX_SHARDS {
            return Err(Error::arg(
                "shard",
                format!("{index}/{count}"),
                format!("N is at most {MAX_SHARDS} (one slice per image of the largest data set)"),
            ));
        }
        if index > count {
            return Err(Error::arg(
                "shard",
                format!("{index}/{count}"),
                format!("K must be between 1 and N = {count}"),
            ));
        }
        Ok(Shard { index, count })
    }

    /// Whether this is the only slice.
    pub fn is_whole(&self) -> bool {
        self.count == 1
    }

    /// Whether item `i` (0-based position among all items) belongs to this slice.
    pub fn owns(&self, i: usize) -> bool {
        i % self.count == self.index - 1
    }

    /// This slice of `items`.
    pub fn select<T>(&self, items: Vec<T>) -> Vec<T> {
        items
            .into_iter()
            .enumerate()
            .filter(|(i, _)| self.owns(*i))
            .map(|(_, t)| t)
            .collect()
    }

    /// How many of `items` this slice holds: `items / N`, plus one for the first
    /// `items mod N` slices.
    pub fn len_of(&self, items: usize) -> usize {
        items / self.count + usize::from(self.index - 1 < items % self.count)
    }

    /// File-name friendly tag, `shard-K-of-N`.
    pub fn tag(&self) -> String {
        format!("shard-{}-of-{}", self.index, self.count)
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl Shard {
    /// The slice a job scheduler gives this process, from its environment (`lookup` reads a
    /// variable): a Slurm job array (`SLURM_ARRAY_TASK_ID`, numbered from
    /// `SLURM_ARRAY_TASK_MIN`, `SLURM_ARRAY_TASK_COUNT` tasks: `--array=0-7` and `--array=1-8`
    /// alike give slices 1..8 of 8), or a Kubernetes Indexed Job (`JOB_COMPLETION_INDEX` from 0,
    /// with the job's `completions` in `SRET_SHARD_COUNT`, which the manifest sets).
    pub fn from_scheduler(lookup: impl Fn(&str) -> Option<String>) -> Result<Shard> {
        let num = |var: &str| -> Result<Option<usize>> {
            match lookup(var) {
                None => Ok(None),
                Some(v) => v.trim().parse().map(Some).map_err(|_| {
                    Error::arg(
                        "shard",
                        format!("auto ({var}={v})"),
                        "not a non-negative integer",
                    )
                }),
            }
        };
        if let Some(id) = num("SLURM_ARRAY_TASK_ID")? {
            let min = num("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
            let count = num("SLURM_ARRAY_TASK_COUNT")?.ok_or_else(|| {
                Error::arg(
                    "shard",
                    "auto",
                    "SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not (Slurm sets both for job arrays)",
                )
            })?;
            let index = id.checked_sub(min).ok_or_else(|| {
                Error::arg(
                    "shard",
                    format!("auto (task {id}, array from {min})"),
                    "SLURM_ARRAY_TASK_ID is below SLURM_ARRAY_TASK_MIN",
                )
            })?;
            // Arrays with a step (--array=0-15:2) number their tasks sparsely; refuse them
            // rather than leave slices out.
            return Shard::new(index + 1, count).map_err(|_| {
                Error::arg(
                    "shard",
                    format!("auto (task {id} of {count} from {min})"),
                    "the array's tasks must be consecutive (--array=A-B without a step)",
                )
            });
        }
        if let Some(index) = num("JOB_COMPLETION_INDEX")? {
            let count = num("SRET_SHARD_COUNT")?.ok_or_else(|| {
                Error::arg(
                    "shard",
                    "auto",
                    "JOB_COMPLETION_INDEX is set but SRET_SHARD_COUNT is not: set it to the Job's completions (deploy/k8s/eval-indexed-job.yaml does)",
                )
            })?;
            return Shard::new(index + 1, count);
        }
        Err(Error::arg(
            "shard",
            "auto",
            "no scheduler variables (SLURM_ARRAY_TASK_ID or JOB_COMPLETION_INDEX): run it as a Slurm array task or a Kubernetes Indexed Job pod, or pass K/N",
        ))
    }
}

impl FromStr for Shard {
    type Err = Error;
    /// `K/N`, or `auto`: [`Shard::from_scheduler`] from the process environment.
    fn from_str(s: &str) -> Result<Shard> {
        if s.trim() == "auto" {
            return Shard::from_scheduler(|k| std::env::var(k).ok());
        }
        let bad = |why: &str| Error::arg("shard", s, why);
        let (k, n) = s
            .trim()
            .split_once('/')
            .ok_or_else(|| bad("expected K/N, such as 3/8"))?;
        let num = |t: &str| -> Result<usize> {
            let t = t.trim();
            if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad("K and N must be non-negative integers, as in 3/8"));
            }
            t.parse().map_err(|_| bad("number too large"))
        };
        Shard::new(num(k)?, num(n)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_split() {
        let s: Shard = "2/3".parse().unwrap();
        assert_eq!(s, Shard { index: 2, count: 3 });
        assert_eq!(s.select((0..8).collect()), vec![1, 4, 7]);
        assert_eq!(s.to_string(), "2/3");
        for bad in ["0/3", "4/3", "1/0", "3", "a/b", "-1/2", "1/2/3", ""] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
        assert!("0/3"
            .parse::<Shard>()
            .unwrap_err()
            .to_string()
            .contains("numbered from 1"));
    }

    #[test]
    fn scheduler_variables_give_the_slice() {
        fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
            move |k: &str| {
                vars.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        }
        let slurm0 = [
            ("SLURM_ARRAY_TASK_ID", "0"),
            ("SLURM_ARRAY_TASK_MIN", "0"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
        ];
        assert_eq!(
            Shard::from_scheduler(env(&slurm0)).unwrap(),
            Shard::new(1, 4).unwrap()
        );
        let slurm1 = [
            ("SLURM_ARRAY_TASK_ID", "4"),
            ("SLURM_ARRAY_TASK_MIN", "1"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
        ];
        assert_eq!(
            Shard::from_scheduler(env(&slurm1)).unwrap(),
            Shard::new(4, 4).unwrap()
        );
        let k8s = [("JOB_COMPLETION_INDEX", "2"), ("SRET_SHARD_COUNT", "3")];
        assert_eq!(
            Shard::from_scheduler(env(&k8s)).unwrap(),
            Shard::new(3, 3).unwrap()
        );
        for (vars, needle) in [
            (&[][..], "no scheduler variables"),
            (
                &[("SLURM_ARRAY_TASK_ID", "1")][..],
                "SLURM_ARRAY_TASK_COUNT",
            ),
            (&[("JOB_COMPLETION_INDEX", "0")][..], "SRET_SHARD_COUNT"),
            (&[("JOB_COMPLETION_INDEX", "x")][..], "non-negative integer"),
            (
                &[
                    ("SLURM_ARRAY_TASK_ID", "8"),
                    ("SLURM_ARRAY_TASK_MIN", "0"),
                    ("SLURM_ARRAY_TASK_COUNT", "4"),
                ][..],
                "consecutive",
            ),
        ] {
            let e = Shard::from_scheduler(env(vars)).unwrap_err().to_string();
            assert!(e.contains(needle), "{vars:?}: {e}");
        }
    }

    #[test]
    fn slices_partition() {
        for n in 1..6 {
            let mut all: Vec<usize> = (1..=n)
                .flat_map(|k| Shard::new(k, n).unwrap().select((0..17).collect()))
                .collect();
            let sizes: Vec<usize> = (1..=n)
                .map(|k| {
                    Shard::new(k, n)
                        .unwrap()
                        .select((0..17).collect::<Vec<_>>())
                        .len()
                })
                .collect();
            assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1);
            for (k, &len) in sizes.iter().enumerate() {
                assert_eq!(Shard::new(k + 1, n).unwrap().len_of(17), len);
            }
            all.sort();
            assert_eq!(all, (0..17).collect::<Vec<_>>());
        }
    }

    #[test]
    fn shards_are_checked_when_read() {
        let ok: Shard = serde_json::from_str(r#"{"index":2,"count":3}"#).unwrap();
        assert_eq!(ok, Shard { index: 2, count: 3 });
        for bad in [
            r#"{"index":1,"count":0}"#,
            r#"{"index":0,"count":2}"#,
            r#"{"index":3,"count":2}"#,
            r#"{"index":1,"count":18446744073709551615}"#,
        ] {
            let e = serde_json::from_str::<Shard>(bad).unwrap_err().to_string();
            assert!(e.contains("shard"), "{bad}: {e}");
        }
        assert!(Shard::new(1, MAX_SHARDS + 1).is_err());
    }
}
