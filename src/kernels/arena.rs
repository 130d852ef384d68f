//! Packing a program's activations into as few device buffers as their lifetimes allow: each
//! tensor has a live range in dispatch steps, and tensors whose ranges do not overlap may share
//! bytes. Hand-written (a few greedy orders, the smallest total kept) because the sizes are
//! static per plan and the packer must run without a device, for `plan`'s memory figures.

/// An activation's size and live range (steps, inclusive).
#[derive(Clone, Copy, Debug)]
pub struct Interval {
    /// Size in bytes.
    pub bytes: u64,
    /// First step that uses it.
    pub first: usize,
    /// Last step that uses it.
    pub last: usize,
}

/// Where the activations go.
#[derive(Clone, Debug)]
pub struct ArenaLayout {
    /// Per tensor: `(buffer, byte offset)`, `None` for tensors outside the arena.
    pub placement: Vec<Option<(usize, u64)>>,
    /// Size in bytes of each arena buffer.
    pub buffer_sizes: Vec<u64>,
    /// Most bytes live at any one step: a lower bound of any arena's size.
    pub peak_live_bytes: u64,
}

/// Offset planning: tensors are placed one by one, each at the lowest aligned offset where it
/// overlaps no already placed tensor that is live at the same time, in the buffer it makes grow
/// least (or a new one). Tensors in `conflicts` (written and read by one dispatch) go to
/// different buffers; a tensor that would push a buffer past `max_buffer` goes elsewhere.
/// The placement order matters, so several classic orders are tried (largest first, earliest
/// first, longest-lived first, largest area first: the greedy heuristics of mobile inference
/// runtimes) and the smallest total kept.
pub fn pack_arena(
    tensors: &[Option<Interval>],
    conflicts: &[(usize, usize)],
    align: u64,
    max_buffer: u64,
) -> ArenaLayout {
    let mut conflict_with: Vec<Vec<usize>> = vec![Vec::new(); tensors.len()];
    for &(a, b) in conflicts {
        if a < tensors.len() && b < tensors.len() {
            conflict_with[a].push(b);
            conflict_with[b].push(a);
        }
    }
    let align = align.max(4);
    let present: Vec<(usize, Interval)> = tensors
        .iter()
        .enumerate()
        .filter_map(|(i, t)| t.map(|t| (i, t)))
        .collect();
    type Key = fn(&Interval) -> (u64, u64);
    let keys: [Key; 4] = [
        |t| (u64::MAX - t.bytes, t.first as u64),
        |t| (t.first as u64, u64::MAX - t.bytes),
        |t| {
            (
                usize::MAX as u64 - (t.last - t.first) as u64,
                u64::MAX - t.bytes,
            )
        },
        |t| {
            let area = t.bytes.saturating_mul((t.last - t.first + 1) as u64);
            (u64::MAX - area, t.first as u64)
        },
    ];
    let (placement, buffer_sizes) = keys
        .iter()
        .map(|key| {
            let mut order = present.clone();
            order.sort_by_key(|(i, t)| (key(t), *i));
            place(tensors.len(), &order, &conflict_with, align, max_buffer)
        })
        .min_by_key(|(_, sizes)| sizes.iter().sum::<u64>())
        .unwrap_or_default();
    let steps = present.iter().map(|(_, t)| t.last + 1).max().unwrap_or(0);
    let mut live = vec![0u64; steps];
    for (_, t) in &present {
        for l in &mut live[t.first..=t.last] {
            *l += t.bytes;
        }
    }
    ArenaLayout {
        placement,
        buffer_sizes,
        peak_live_bytes: live.into_iter().max().unwrap_or(0),
    }
}

/// One greedy pass of [`pack_arena`] in `order`: placements and buffer sizes.
fn place(
    count: usize,
    order: &[(usize, Interval)],
    conflict_with: &[Vec<usize>],
    align: u64,
    max_buffer: u64,
) -> (Vec<Option<(usize, u64)>>, Vec<u64>) {
    let round = |b: u64| b.div_ceil(align) * align;
    let mut placement = vec![None; count];
    // Per buffer: placed (offset, size, first, last), and the buffer's size so far.
    let mut buffers: Vec<Vec<(u64, u64, usize, usize)>> = Vec::new();
    let mut sizes: Vec<u64> = Vec::new();
    let mut buffer_of = vec![usize::MAX; count];
    for &(i, t) in order {
        let size = round(t.bytes);
        // (growth, buffer, offset) of the best existing buffer.
        let mut chosen: Option<(u64, usize, u64)> = None;
        for (bi, placed) in buffers.iter().enumerate() {
            if conflict_with[i].iter().any(|&c| buffer_of[c] == bi) {
                continue;
            }
            let mut busy: Vec<(u64, u64)> = placed
                .iter()
                .filter(|p| !(p.3 < t.first || t.last < p.2))
                .map(|p| (p.0, p.0 + p.1))
                .collect();
            busy.sort_unstable();
            let mut offset = 0u64;
            for (start, stop) in busy {
                if offset + size <= start {
                    break;
                }
                offset = offset.max(round(stop));
            }
            if offset + size > max_buffer.max(size) {
                continue;
            }
            let growth = (offset + size).saturating_sub(sizes[bi]);
            if chosen.is_none_or(|c| growth < c.0) {
                chosen = Some((growth, bi, offset));
            }
        }
        // A new buffer grows the total by the whole tensor.
        let (bi, offset) = match chosen {
            Some((growth, bi, offset)) if growth < size || buffers.is_empty() => (bi, offset),
            _ => {
                buffers.push(Vec::new());
                sizes.push(0);
                (buffers.len() - 1, 0)
            }
        };
        buffers[bi].push((offset, size, t.first, t.last));
        sizes[bi] = sizes[bi].max(offset + size);
        buffer_of[i] = bi;
        placement[i] = Some((bi, offset));
    }
    (placement, sizes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iv(bytes: u64, first: usize, last: usize) -> Option<Interval> {
        Some(Interval { bytes, first, last })
    }

    #[test]
    fn packing_reuses_dead_space_and_never_overlaps_live_tensors() {
        // A chain a -> b -> c -> d where each tensor dies after the next is made.
        let t = [
            iv(1000, 0, 1),
            iv(600, 1, 2),
            iv(1000, 2, 3),
            iv(300, 3, 4),
            None,
        ];
        let p = pack_arena(&t, &[], 256, u64::MAX);
        assert_eq!(p.peak_live_bytes, 1600);
        let total: u64 = p.buffer_sizes.iter().sum();
        assert!(total >= p.peak_live_bytes && total <= 2048, "arena {total}");
        for i in 0..t.len() {
            for j in 0..i {
                let (Some(a), Some(b)) = (t[i], t[j]) else {
                    continue;
                };
                let (Some((ba, oa)), Some((bb, ob))) = (p.placement[i], p.placement[j]) else {
                    panic!()
                };
                let live_together = !(a.last < b.first || b.last < a.first);
                let overlap = ba == bb && oa < ob + b.bytes && ob < oa + a.bytes;
                assert!(
                    !(live_together && overlap),
                    "tensors {i} and {j} overlap while both live"
                );
                assert_eq!(oa % 256, 0);
            }
        }
        assert!(p.placement[4].is_none());
    }

    #[test]
    fn conflicting_tensors_get_different_buffers() {
        let t = [iv(100, 0, 0), iv(100, 0, 0), iv(100, 1, 1)];
        let p = pack_arena(&t, &[(0, 1)], 4, u64::MAX);
        assert_ne!(p.placement[0].unwrap().0, p.placement[1].unwrap().0);
        // And a buffer never grows past the device's maximum.
        let q = pack_arena(&[iv(100, 0, 0), iv(100, 0, 0)], &[], 4, 150);
        assert_eq!(q.buffer_sizes, vec![100, 100]);
    }
}
