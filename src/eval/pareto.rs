//! The Pareto frontier of a set of points under mixed objectives (maximise some, minimise
//! others): the points no other point dominates. A point dominates another when it is at least as
//! good in every objective and strictly better in one; equal points do not dominate each other,
//! so duplicates on the frontier are all kept. Points with a non-finite value are never on the
//! frontier and dominate nothing.

/// Direction of one objective.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sense {
    /// Higher is better.
    Maximize,
    /// Lower is better.
    Minimize,
}

/// Whether `a` dominates `b` (both finite, same length as `senses`).
pub fn dominates(a: &[f64], b: &[f64], senses: &[Sense]) -> bool {
    let mut strictly = false;
    for ((&x, &y), s) in a.iter().zip(b).zip(senses) {
        let (x, y) = match s {
            Sense::Maximize => (x, y),
            Sense::Minimize => (-x, -y),
        };
        if x < y {
            return false;
        }
        if x > y {
            strictly = true;
        }
    }
    strictly
}

/// `front[i]`: whether `points[i]` is on the frontier. Each point has one value per sense.
pub fn pareto_front(points: &[Vec<f64>], senses: &[Sense]) -> Vec<bool> {
    let ok: Vec<bool> = points
        .iter()
        .map(|p| p.len() == senses.len() && p.iter().all(|v| v.is_finite()))
        .collect();
    (0..points.len())
        .map(|i| {
            ok[i]
                && !(0..points.len())
                    .any(|j| j != i && ok[j] && dominates(&points[j], &points[i], senses))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use Sense::*;

    #[test]
    fn two_objectives() {
        // (accuracy, throughput), both maximised.
        let pts = vec![
            vec![77.0, 100.0], // best accuracy: on
            vec![76.0, 130.0], // on
            vec![75.0, 120.0], // dominated by the previous
            vec![70.0, 190.0], // best throughput: on
            vec![70.0, 150.0], // dominated (same accuracy, slower)
            vec![76.0, 130.0], // duplicate of an "on" point: also on
        ];
        assert_eq!(
            pareto_front(&pts, &[Maximize, Maximize]),
            [true, true, false, true, false, true]
        );
    }

    #[test]
    fn mixed_three_objectives() {
        // (accuracy max, throughput max, PAM min)
        let pts = vec![
            vec![76.0, 1186.0, 664.0],
            vec![75.9, 1368.0, 489.0], // the paper's single shot
            vec![69.7, 1886.0, 391.0],
            vec![75.0, 1300.0, 500.0],   // dominated by the single shot
            vec![74.0, 1100.0, 300.0],   // least memory: on
            vec![f64::NAN, 9999.0, 1.0], // never on, dominates nothing
        ];
        assert_eq!(
            pareto_front(&pts, &[Maximize, Maximize, Minimize]),
            [true, true, true, false, true, false]
        );
        // Only minimising: the smallest wins.
        let one = vec![vec![3.0], vec![1.0], vec![2.0]];
        assert_eq!(pareto_front(&one, &[Minimize]), [false, true, false]);
        assert!(pareto_front(&[], &[Maximize]).is_empty());
    }
}
