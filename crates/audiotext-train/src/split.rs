//! Deterministic train/validation splits that never cut a recording in two, and the small
//! seeded random generator the trainer uses wherever a run must be reproducible.
//!
//! Clips cut from the same recording sound alike (same microphone, room, source); when one lands
//! in training and its sibling in validation, validation measures memory instead of
//! generalisation. [`split_by_group`] keeps every group (recording) on one side.

use std::collections::{BTreeMap, HashSet};

/// SplitMix64 (Steele, Lea, Flood 2014, "Fast splittable pseudorandom number generators"):
/// tiny, fast and fully determined by its seed, so a run and its resume see the same numbers.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64 { state: seed }
    }

    /// A generator for one purpose of one run, e.g. `derive(seed, &[epoch, 1])`: streams with
    /// different tags are independent, and no state has to be saved to resume at an epoch.
    pub fn derive(seed: u64, tags: &[u64]) -> SplitMix64 {
        let mut g = SplitMix64::new(seed);
        for &tag in tags {
            let mixed = g.next_u64() ^ tag.wrapping_mul(0xD1B5_4A32_D192_ED03);
            g = SplitMix64::new(mixed);
        }
        g
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)` with 53 bits of precision.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `0..n` (`n > 0`); the modulo bias is below 2^-40 for any n a trainer uses.
    pub fn below(&mut self, n: usize) -> usize {
        assert!(n > 0, "below(0)");
        (self.next_u64() % n as u64) as usize
    }

    /// Fisher-Yates shuffle.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }
}

/// Which items go to training and which to validation (indices into the input, ascending).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    pub train: Vec<usize>,
    pub validation: Vec<usize>,
}

/// Splits items by group so that each group lies entirely on one side.
///
/// - `groups[i]` is the group (recording) of item `i`; `strata[i]`, when given, its class: groups
///   are then drawn per class, so each class with at least two groups has at least one in
///   validation and one in training, and validation mirrors the class balance.
/// - About `validation_fraction` of the groups (rounded, per class when stratified) go to
///   validation. A group's class is the class of its first item.
/// - The result depends only on the inputs and `seed`, not on the order of the items.
pub fn split_by_group(
    groups: &[String],
    strata: Option<&[String]>,
    validation_fraction: f64,
    seed: u64,
) -> Split {
    assert!(
        (0.0..1.0).contains(&validation_fraction),
        "validation fraction must be in [0, 1)"
    );
    if let Some(strata) = strata {
        assert_eq!(strata.len(), groups.len(), "one class per item");
    }
    let by_class = groups_by_class(groups, strata);
    let mut validation_groups: HashSet<&str> = HashSet::new();
    for (class, mut class_groups) in by_class {
        let mut rng = SplitMix64::derive(seed, &[fnv1a(class.as_bytes())]);
        rng.shuffle(&mut class_groups);
        let n = class_groups.len();
        let mut take = (n as f64 * validation_fraction).round() as usize;
        if validation_fraction > 0.0 && n >= 2 {
            take = take.clamp(1, n - 1);
        }
        validation_groups.extend(class_groups.into_iter().take(take));
    }
    split_items(groups, &validation_groups)
}

/// Fold `fold` of `folds` as validation, the other folds as training, for cross-validation by
/// group: each class's groups are shuffled (seeded per class, as in [`split_by_group`]) and
/// dealt round-robin to the folds, so every group lies in exactly one fold, folds are balanced
/// per class, and the `folds` validation sets partition the items.
pub fn fold_by_group(
    groups: &[String],
    strata: Option<&[String]>,
    folds: usize,
    fold: usize,
    seed: u64,
) -> Split {
    assert!(folds >= 2 && fold < folds, "fold {fold} of {folds}");
    let by_class = groups_by_class(groups, strata);
    let mut validation_groups: HashSet<&str> = HashSet::new();
    // The deal continues across classes so small classes do not all start at fold 0.
    let mut dealt = 0usize;
    for (class, mut class_groups) in by_class {
        let mut rng = SplitMix64::derive(seed, &[fnv1a(class.as_bytes()), 0xf01d]);
        rng.shuffle(&mut class_groups);
        for group in class_groups {
            if dealt % folds == fold {
                validation_groups.insert(group);
            }
            dealt += 1;
        }
    }
    split_items(groups, &validation_groups)
}

/// Each class's groups (a group's class is the class of its first item), sorted; BTreeMaps
/// keep the result independent of the order of the items.
fn groups_by_class<'a>(
    groups: &'a [String],
    strata: Option<&'a [String]>,
) -> BTreeMap<&'a str, Vec<&'a str>> {
    let mut group_class: BTreeMap<&str, &str> = BTreeMap::new();
    let mut sorted: Vec<usize> = (0..groups.len()).collect();
    sorted.sort_by(|&a, &b| groups[a].cmp(&groups[b]).then(a.cmp(&b)));
    for &i in &sorted {
        let class = strata.map(|s| s[i].as_str()).unwrap_or("");
        group_class.entry(groups[i].as_str()).or_insert(class);
    }
    let mut by_class: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (group, class) in &group_class {
        by_class.entry(class).or_default().push(group);
    }
    by_class
}

/// Items whose group is in `validation_groups` go to validation, the others to training.
fn split_items(groups: &[String], validation_groups: &HashSet<&str>) -> Split {
    let mut split = Split {
        train: Vec::new(),
        validation: Vec::new(),
    };
    for (i, group) in groups.iter().enumerate() {
        if validation_groups.contains(group.as_str()) {
            split.validation.push(i);
        } else {
            split.train.push(i);
        }
    }
    split
}

/// FNV-1a, 64-bit: a stable hash of a short key (the standard library's hasher may change).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_matches_the_reference_sequence() {
        // First outputs for seed 1234567 from the reference C implementation (Vigna).
        let mut g = SplitMix64::new(1234567);
        assert_eq!(g.next_u64(), 6457827717110365317);
        assert_eq!(g.next_u64(), 3203168211198807973);
        let mut a = SplitMix64::derive(7, &[1, 2]);
        let mut b = SplitMix64::derive(7, &[1, 2]);
        let mut c = SplitMix64::derive(7, &[2, 1]);
        let (x, y, z) = (a.next_u64(), b.next_u64(), c.next_u64());
        assert_eq!(x, y);
        assert_ne!(x, z);
        for _ in 0..1000 {
            let f = g.next_f64();
            assert!((0.0..1.0).contains(&f));
            assert!(g.below(3) < 3);
        }
    }

    fn esc_like() -> (Vec<String>, Vec<String>) {
        // 5 classes x 4 recordings, recordings 0 and 1 of each class have two takes.
        let mut groups = Vec::new();
        let mut classes = Vec::new();
        for class in 0..5 {
            for rec in 0..4 {
                let takes = if rec < 2 { 2 } else { 1 };
                for _ in 0..takes {
                    groups.push(format!("{class}{rec}"));
                    classes.push(format!("c{class}"));
                }
            }
        }
        (groups, classes)
    }

    #[test]
    fn recordings_stay_on_one_side_and_classes_are_balanced() {
        let (groups, classes) = esc_like();
        let split = split_by_group(&groups, Some(&classes), 0.25, 42);
        assert_eq!(split.train.len() + split.validation.len(), groups.len());
        for &v in &split.validation {
            assert!(
                split.train.iter().all(|&t| groups[t] != groups[v]),
                "group {} on both sides",
                groups[v]
            );
        }
        for class in 0..5 {
            let c = format!("c{class}");
            let val_groups: std::collections::HashSet<_> = split
                .validation
                .iter()
                .filter(|&&i| classes[i] == c)
                .map(|&i| &groups[i])
                .collect();
            assert_eq!(
                val_groups.len(),
                1,
                "one of four recordings of class {c} in validation"
            );
        }
        // Deterministic, and independent of the order of the items.
        assert_eq!(split, split_by_group(&groups, Some(&classes), 0.25, 42));
        let mut order: Vec<usize> = (0..groups.len()).collect();
        order.reverse();
        let rg: Vec<String> = order.iter().map(|&i| groups[i].clone()).collect();
        let rc: Vec<String> = order.iter().map(|&i| classes[i].clone()).collect();
        let reversed = split_by_group(&rg, Some(&rc), 0.25, 42);
        let mut back: Vec<usize> = reversed.validation.iter().map(|&i| order[i]).collect();
        back.sort();
        assert_eq!(back, split.validation);
        // Another seed gives another split.
        assert_ne!(split, split_by_group(&groups, Some(&classes), 0.25, 43));
    }

    #[test]
    fn unstratified_and_empty_validation() {
        let groups: Vec<String> = (0..10).map(|i| format!("g{}", i / 2)).collect();
        let split = split_by_group(&groups, None, 0.4, 1);
        assert_eq!(split.validation.len(), 4, "2 of 5 groups of two");
        let none = split_by_group(&groups, None, 0.0, 1);
        assert!(none.validation.is_empty());
        assert_eq!(none.train.len(), 10);
    }

    #[test]
    fn folds_partition_the_items_by_group_and_balance_classes() {
        // 4 classes x 6 recordings x 2 clips.
        let mut groups = Vec::new();
        let mut classes = Vec::new();
        for c in 0..4 {
            for r in 0..6 {
                for _ in 0..2 {
                    groups.push(format!("rec{c}-{r}"));
                    classes.push(format!("class{c}"));
                }
            }
        }
        let mut seen = vec![0usize; groups.len()];
        for fold in 0..3 {
            let s = fold_by_group(&groups, Some(&classes), 3, fold, 5);
            assert_eq!(s.train.len() + s.validation.len(), groups.len());
            for &i in &s.validation {
                seen[i] += 1;
                // Both clips of a recording are on the same side.
                assert!(
                    s.validation
                        .iter()
                        .filter(|&&j| groups[j] == groups[i])
                        .count()
                        == 2
                );
            }
            for c in 0..4 {
                let n = s
                    .validation
                    .iter()
                    .filter(|&&i| classes[i] == format!("class{c}"))
                    .count();
                assert_eq!(n, 4, "fold {fold}, class {c}: 2 of 6 recordings");
            }
            assert_eq!(s, fold_by_group(&groups, Some(&classes), 3, fold, 5));
        }
        assert!(
            seen.iter().all(|&n| n == 1),
            "each item validates exactly once"
        );
        assert_ne!(
            fold_by_group(&groups, Some(&classes), 3, 0, 5).validation,
            fold_by_group(&groups, Some(&classes), 3, 0, 6).validation
        );
    }
}
