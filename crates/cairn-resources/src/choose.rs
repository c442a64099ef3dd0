//! Which proxy a task that may run on several proxies gets.

use std::cmp::Ordering;

/// Occupancy of one proxy or repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Load {
    /// Tasks running now (may exceed `max_tasks` for a while after the limit was lowered).
    pub running: usize,
    /// Maximum of concurrent tasks.
    pub max_tasks: usize,
}

impl Load {
    /// Whether one more task may start.
    pub fn has_free_slot(&self) -> bool {
        self.running < self.max_tasks
    }

    /// Compares utilisation `running / max_tasks` exactly (no floating point).
    fn cmp_utilisation(&self, other: &Load) -> Ordering {
        let lhs = self.running as u128 * other.max_tasks.max(1) as u128;
        let rhs = other.running as u128 * self.max_tasks.max(1) as u128;
        lhs.cmp(&rhs)
    }
}

/// Picks among candidate proxies, given in the caller's order of preference: only those with a
/// free slot qualify; the lowest utilisation (`running / max_tasks`) wins; on a tie the one with
/// more free slots; then the earliest in the list. Returns the index of the winner, `None` when no
/// candidate has room.
pub fn least_loaded(candidates: &[Load]) -> Option<usize> {
    let mut best: Option<(usize, &Load)> = None;
    for (i, load) in candidates.iter().enumerate() {
        if !load.has_free_slot() {
            continue;
        }
        let better = match best {
            None => true,
            Some((_, current)) => match load.cmp_utilisation(current) {
                Ordering::Less => true,
                Ordering::Greater => false,
                Ordering::Equal => load.max_tasks - load.running > current.max_tasks - current.running,
            },
        };
        if better {
            best = Some((i, load));
        }
    }
    best.map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(running: usize, max_tasks: usize) -> Load {
        Load { running, max_tasks }
    }

    #[test]
    fn full_proxies_never_win() {
        assert_eq!(least_loaded(&[]), None);
        assert_eq!(least_loaded(&[l(2, 2), l(5, 3)]), None);
        assert_eq!(least_loaded(&[l(2, 2), l(2, 3)]), Some(1));
    }

    #[test]
    fn lowest_utilisation_then_most_free_then_first() {
        assert_eq!(least_loaded(&[l(2, 4), l(1, 4)]), Some(1));
        // 1/2 and 2/4 tie on utilisation: 2 free slots beat 1.
        assert_eq!(least_loaded(&[l(1, 2), l(2, 4)]), Some(1));
        // A big proxy at 3/8 beats a small idle-ish one at 1/2.
        assert_eq!(least_loaded(&[l(1, 2), l(3, 8)]), Some(1));
        // Exact tie: the caller's first choice.
        assert_eq!(least_loaded(&[l(0, 4), l(0, 4)]), Some(0));
    }
}
