//! The rows a nearest-neighbour query may return, from its conditions on rowid:
//! `rowid IN (...)`, `rowid = ?`, `<`, `<=`, `>`, `>=`, `BETWEEN`, `!=`. The search applies them
//! while it scans (a row that fails is never a candidate), so `k` rows come back whenever `k`
//! rows pass, and they are the `k` nearest of those.
//!
//! Values compare as they would with a table's rowid: numbers by value, TEXT that reads as a
//! number as that number, any other TEXT or BLOB above every number, NULL matching nothing.

use std::collections::HashSet;

use rusqlite::types::{Value, ValueRef};
use rusqlite::vtab::IndexConstraintOp;

/// A condition on rowid the index applies itself.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Condition {
    /// `=` or `IS`, or one `IN (...)` list.
    Equals,
    NotEquals,
    Above,
    AtLeast,
    Below,
    AtMost,
}

impl Condition {
    /// The condition of an operator on rowid, if the index can apply it.
    pub fn of(op: &IndexConstraintOp) -> Option<Condition> {
        use IndexConstraintOp::*;
        Some(match op {
            SQLITE_INDEX_CONSTRAINT_EQ | SQLITE_INDEX_CONSTRAINT_IS => Condition::Equals,
            SQLITE_INDEX_CONSTRAINT_NE | SQLITE_INDEX_CONSTRAINT_ISNOT => Condition::NotEquals,
            SQLITE_INDEX_CONSTRAINT_GT => Condition::Above,
            SQLITE_INDEX_CONSTRAINT_GE => Condition::AtLeast,
            SQLITE_INDEX_CONSTRAINT_LT => Condition::Below,
            SQLITE_INDEX_CONSTRAINT_LE => Condition::AtMost,
            _ => return None,
        })
    }

    /// Its letter in the plan's `idx_str`, which carries the conditions to `filter`.
    pub fn code(self) -> char {
        match self {
            Condition::Equals => '=',
            Condition::NotEquals => '!',
            Condition::Above => '>',
            Condition::AtLeast => ']',
            Condition::Below => '<',
            Condition::AtMost => '[',
        }
    }

    pub fn from_code(code: char) -> Option<Condition> {
        [
            Condition::Equals,
            Condition::NotEquals,
            Condition::Above,
            Condition::AtLeast,
            Condition::Below,
            Condition::AtMost,
        ]
        .into_iter()
        .find(|c| c.code() == code)
    }
}

/// A rowid condition's right-hand side, as a rowid compares with it.
enum Operand {
    Integer(i64),
    Real(f64),
    /// TEXT that is not a number, or a BLOB: above every rowid.
    AboveNumbers,
    Null,
}

impl Operand {
    fn of(value: ValueRef<'_>) -> Operand {
        match value {
            ValueRef::Null => Operand::Null,
            ValueRef::Integer(i) => Operand::Integer(i),
            ValueRef::Real(r) => Operand::Real(r),
            ValueRef::Text(bytes) => {
                let text = String::from_utf8_lossy(bytes);
                let text = text.trim();
                if let Ok(i) = text.parse::<i64>() {
                    Operand::Integer(i)
                } else {
                    match text.parse::<f64>() {
                        Ok(r) if r.is_finite() => Operand::Real(r),
                        _ => Operand::AboveNumbers,
                    }
                }
            }
            ValueRef::Blob(_) => Operand::AboveNumbers,
        }
    }

    /// The rowid equal to it, if any.
    fn exact(&self) -> Option<i64> {
        match *self {
            Operand::Integer(i) => Some(i),
            Operand::Real(r) if r.fract() == 0.0 && r >= -(2f64.powi(63)) && r < 2f64.powi(63) => {
                Some(r as i64)
            }
            _ => None,
        }
    }
}

/// The rows that pass every condition.
#[derive(Debug)]
pub struct RowidFilter {
    /// Only these rowids (from `=` and `IN`), when given.
    listed: Option<HashSet<i64>>,
    lowest: i64,
    highest: i64,
    excluded: HashSet<i64>,
    /// Some condition no rowid meets (a NULL, an empty list...).
    nothing: bool,
}

impl Default for RowidFilter {
    fn default() -> RowidFilter {
        RowidFilter {
            listed: None,
            lowest: i64::MIN,
            highest: i64::MAX,
            excluded: HashSet::new(),
            nothing: false,
        }
    }
}

impl RowidFilter {
    /// Adds `rowid <condition> value`.
    pub fn add(&mut self, condition: Condition, value: ValueRef<'_>) {
        let operand = Operand::of(value);
        if let Operand::Null = operand {
            self.nothing = true; // a comparison with NULL is never true
            return;
        }
        match condition {
            Condition::Equals => self.keep_only(operand.exact().into_iter().collect()),
            Condition::NotEquals => {
                if let Some(rowid) = operand.exact() {
                    self.excluded.insert(rowid);
                }
            }
            Condition::Above | Condition::AtLeast => {
                let lowest = match operand {
                    Operand::Integer(i) if condition == Condition::Above => i.checked_add(1),
                    Operand::Integer(i) => Some(i),
                    Operand::Real(r) if r < -(2f64.powi(63)) => Some(i64::MIN),
                    Operand::Real(r) if r >= 2f64.powi(63) => None,
                    Operand::Real(r) if condition == Condition::Above => {
                        (r.floor() as i64).checked_add(1)
                    }
                    Operand::Real(r) => Some(r.ceil() as i64),
                    Operand::AboveNumbers | Operand::Null => None,
                };
                match lowest {
                    Some(lowest) => self.lowest = self.lowest.max(lowest),
                    None => self.nothing = true,
                }
            }
            Condition::Below | Condition::AtMost => {
                let highest = match operand {
                    Operand::Integer(i) if condition == Condition::Below => i.checked_sub(1),
                    Operand::Integer(i) => Some(i),
                    Operand::Real(r) if r >= 2f64.powi(63) => Some(i64::MAX),
                    Operand::Real(r) if r < -(2f64.powi(63)) => None,
                    Operand::Real(r) if condition == Condition::Below => {
                        (r.ceil() as i64).checked_sub(1)
                    }
                    Operand::Real(r) => Some(r.floor() as i64),
                    Operand::AboveNumbers => Some(i64::MAX),
                    Operand::Null => None,
                };
                match highest {
                    Some(highest) => self.highest = self.highest.min(highest),
                    None => self.nothing = true,
                }
            }
        }
    }

    /// Adds `rowid IN (values)`.
    pub fn add_list(&mut self, values: &[Value]) {
        let listed = values
            .iter()
            .filter_map(|v| Operand::of(ValueRef::from(v)).exact())
            .collect();
        self.keep_only(listed);
    }

    fn keep_only(&mut self, rowids: HashSet<i64>) {
        self.listed = Some(match self.listed.take() {
            Some(listed) => listed.intersection(&rowids).copied().collect(),
            None => rowids,
        });
    }

    pub fn allows(&self, rowid: i64) -> bool {
        !self.nothing
            && (self.lowest..=self.highest).contains(&rowid)
            && !self.excluded.contains(&rowid)
            && self
                .listed
                .as_ref()
                .is_none_or(|listed| listed.contains(&rowid))
    }

    /// Whether every row passes (no condition was given).
    pub fn allows_all(&self) -> bool {
        !self.nothing
            && self.listed.is_none()
            && self.excluded.is_empty()
            && self.lowest == i64::MIN
            && self.highest == i64::MAX
    }

    /// The slots of `rowids` (a chunk's, in slot order) that pass, one bit each. `named` is
    /// `named_rowids()`. A chunk's rowids are ascending (chunks are folded in rowid order), so
    /// ranges and named rows are found by binary search; otherwise each rowid is checked.
    pub fn slots(&self, rowids: &[i64], named: Option<&[i64]>) -> Vec<u64> {
        let mut bits = vec![0u64; rowids.len().div_ceil(64)];
        let mut set = |slot: usize| bits[slot / 64] |= 1 << (slot % 64);
        if self.allows_all() {
            (0..rowids.len()).for_each(&mut set);
        } else if !rowids.is_sorted() {
            (0..rowids.len())
                .filter(|&s| self.allows(rowids[s]))
                .for_each(&mut set);
        } else if let Some(named) = named {
            let (Some(&first), Some(&last)) = (rowids.first(), rowids.last()) else {
                return bits;
            };
            let from = named.partition_point(|&r| r < first);
            for &rowid in named[from..].iter().take_while(|&&r| r <= last) {
                if let Ok(slot) = rowids.binary_search(&rowid) {
                    set(slot);
                }
            }
        } else if !self.nothing {
            let from = rowids.partition_point(|&r| r < self.lowest);
            let to = rowids.partition_point(|&r| r <= self.highest);
            for slot in from..to.max(from) {
                if !self.excluded.contains(&rowids[slot]) {
                    set(slot);
                }
            }
        }
        bits
    }

    /// The rowids that can pass when the conditions name them (`=`, `IN`), in order; `None`
    /// when they do not (ranges, `!=` alone).
    pub fn named_rowids(&self) -> Option<Vec<i64>> {
        let listed = self.listed.as_ref()?;
        let mut rowids: Vec<i64> = listed.iter().copied().filter(|r| self.allows(*r)).collect();
        rowids.sort_unstable();
        Some(rowids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(conditions: &[(Condition, ValueRef<'_>)]) -> RowidFilter {
        let mut filter = RowidFilter::default();
        for (condition, value) in conditions {
            filter.add(*condition, *value);
        }
        filter
    }

    fn passing(filter: &RowidFilter) -> Vec<i64> {
        (-5..=15).filter(|r| filter.allows(*r)).collect()
    }

    #[test]
    fn ranges_compare_like_a_rowid() {
        use Condition::*;
        let f = filter(&[(Above, ValueRef::Integer(3)), (AtMost, ValueRef::Real(6.5))]);
        assert_eq!(passing(&f), vec![4, 5, 6]);
        let f = filter(&[
            (AtLeast, ValueRef::Real(2.5)),
            (Below, ValueRef::Text(b"5")),
        ]);
        assert_eq!(passing(&f), vec![3, 4]);
        // TEXT that is no number sorts above every number.
        assert_eq!(
            passing(&filter(&[(Below, ValueRef::Text(b"abc"))])).len(),
            21
        );
        assert!(passing(&filter(&[(Above, ValueRef::Text(b"abc"))])).is_empty());
        assert!(passing(&filter(&[(Above, ValueRef::Integer(i64::MAX))])).is_empty());
        assert!(passing(&filter(&[(AtLeast, ValueRef::Null)])).is_empty());
    }

    #[test]
    fn lists_equalities_and_exclusions_intersect() {
        use Condition::*;
        let mut f = filter(&[
            (NotEquals, ValueRef::Integer(2)),
            (Below, ValueRef::Integer(9)),
        ]);
        f.add_list(&[1, 2, 3, 9, 12].map(Value::Integer));
        f.add_list(&[
            Value::Integer(3),
            Value::Integer(1),
            Value::Null,
            Value::Integer(12),
        ]);
        assert_eq!(passing(&f), vec![1, 3]);
        assert_eq!(f.named_rowids(), Some(vec![1, 3]));
        assert_eq!(passing(&filter(&[(Equals, ValueRef::Real(4.0))])), vec![4]);
        assert!(passing(&filter(&[(Equals, ValueRef::Real(4.5))])).is_empty());
        assert!(RowidFilter::default().allows_all());
        // Slots: by binary search in a chunk's ascending rowids, else one by one.
        let chunk = [2, 3, 5, 8, 13];
        let bits =
            |f: &RowidFilter, rowids: &[i64]| f.slots(rowids, f.named_rowids().as_deref())[0];
        assert_eq!(bits(&f, &chunk), 0b00010);
        assert_eq!(bits(&f, &[13, 3, 1, 2]), 0b0110);
        let range = filter(&[
            (AtLeast, ValueRef::Integer(3)),
            (Below, ValueRef::Integer(13)),
            (NotEquals, ValueRef::Integer(5)),
        ]);
        assert_eq!(bits(&range, &chunk), 0b01010);
        assert_eq!(bits(&RowidFilter::default(), &chunk), 0b11111);
        assert_eq!(RowidFilter::default().named_rowids(), None);
    }
}
