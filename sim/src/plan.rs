//! What a sweep runs: one [`Job`] per seed, configuration and repeat, and
//! the order in which they start.

use engine::{LayoutKind, LockPolicy};

/// One planned run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Job {
    pub seed: u64,
    pub layout: LayoutKind,
    pub policy: LockPolicy,
}

/// Which of a seed's runs is expected to take the longest in wall time.
/// A run lasts a fixed virtual time, so its wall time follows the number
/// of operations it completes: the more a policy lets run side by side,
/// the more it does (that is what the lab measures), so `striped` runs
/// longest and `global` shortest. A wrong guess costs only wall time.
fn expected_length(job: &Job) -> u8 {
    match job.policy {
        LockPolicy::Striped => 2,
        LockPolicy::Split => 1,
        LockPolicy::Global => 0,
    }
}

/// Indices into `plan` in the order runs start: seed by seed (so results
/// keep coming while a long sweep goes on), the longest of a seed first.
pub fn start_order(plan: &[Job]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..plan.len()).collect();
    // Stable: a seed's runs of equal expected length keep plan order.
    order.sort_by_key(|&i| (plan[i].seed, std::cmp::Reverse(expected_length(&plan[i]))));
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(seed: u64, policy: LockPolicy) -> Job {
        Job {
            seed,
            layout: LayoutKind::Blobstore,
            policy,
        }
    }

    #[test]
    fn a_seeds_longest_run_starts_first_and_seeds_stay_in_order() {
        use LockPolicy::*;
        let plan = vec![
            job(1, Global),
            job(1, Split),
            job(1, Striped),
            job(2, Global),
            job(2, Global), // a determinism repeat
            job(2, Striped),
        ];
        assert_eq!(start_order(&plan), vec![2, 1, 0, 5, 3, 4]);
    }
}
