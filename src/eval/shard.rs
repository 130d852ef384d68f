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
pub struct Shard {
    /// 1-based slice number.
    pub index: usize,
    /// Number of slices.
    pub count: usize,
}

impl Default for Shard {
    fn default() -> Self {
        Shard::WHOLE
    }
}

impl Shard {
    /// The whole: one slice of one.
    pub const WHOLE: Shard = Shard { index: 1, count: 1 };

    /// Slice `index` (1-based) of `count`; errors unless `1 <= index <= count`.
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

impl FromStr for Shard {
    type Err = Error;
    fn from_str(s: &str) -> Result<Shard> {
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
            all.sort();
            assert_eq!(all, (0..17).collect::<Vec<_>>());
        }
    }
}
