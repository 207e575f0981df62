//! Metadata columns: the values a KNN query filters on inside the search.
//!
//! Each chunk's values are kept in memory by column, in slot order, beside its codes: numbers
//! as `f64` (NaN for NULL), text as ids into one dictionary per column. A query's conditions
//! become one bit per slot (`allowed_slots`); a column whose values are the same in the whole
//! chunk (always so for a partition key, whose rows are chunked by partition) is decided once for
//! the chunk, so a filter on it skips whole chunks.
//!
//! Values compare as SQLite compares them with a column of that type: a numeric column takes
//! TEXT that reads as a number as that number, a TEXT column takes a number as its text, and
//! otherwise NULL < numbers < TEXT < BLOB; a comparison with NULL is never true.

use std::cmp::Ordering;
use std::collections::HashMap;

use rusqlite::types::{Value, ValueRef};

use super::filter::Condition;
use super::options::{Column, ColumnKind};

/// Bits of one chunk's slots.
pub type SlotBits = Vec<u64>;

pub fn bit(bits: &[u64], slot: usize) -> bool {
    bits[slot / 64] >> (slot % 64) & 1 == 1
}

/// Clears the bit of each slot whose value fails `keep`.
fn and_each<T: Copy>(bits: &mut [u64], values: &[T], keep: impl Fn(T) -> bool) {
    for (word, values) in bits.iter_mut().zip(values.chunks(64)) {
        if *word == 0 {
            continue;
        }
        let mut kept = 0u64;
        for (i, &value) in values.iter().enumerate() {
            kept |= (keep(value) as u64) << i;
        }
        *word &= kept;
    }
}

/// All bits of `slots` slots set.
pub fn all_slots(slots: usize) -> SlotBits {
    let mut bits = vec![u64::MAX; slots.div_ceil(64)];
    if slots % 64 != 0 {
        if let Some(last) = bits.last_mut() {
            *last = (1u64 << (slots % 64)) - 1;
        }
    }
    bits
}

/// A metadata value checked against its column's type, as stored.
pub fn checked_value(column: &Column, value: ValueRef<'_>) -> Result<Value, String> {
    let name = &column.name;
    let wrong = |got: &str| {
        Err(format!(
            "column {name} is declared {}, got {got}; pass a{} {} or NULL",
            column.kind.name(),
            if column.kind == ColumnKind::Integer {
                "n"
            } else {
                ""
            },
            column.kind.name()
        ))
    };
    Ok(match (column.kind, value) {
        (_, ValueRef::Null) => Value::Null,
        (ColumnKind::Integer, ValueRef::Integer(i)) => Value::Integer(i),
        (ColumnKind::Float, ValueRef::Integer(i)) => Value::Real(i as f64),
        (ColumnKind::Float, ValueRef::Real(r)) if r.is_finite() => Value::Real(r),
        (ColumnKind::Float, ValueRef::Real(r)) => {
            return Err(format!(
                "column {name} got {r}: metadata values must be finite"
            ))
        }
        (ColumnKind::Boolean, ValueRef::Integer(b @ (0 | 1))) => Value::Integer(b),
        (ColumnKind::Boolean, ValueRef::Integer(other)) => {
            return Err(format!(
                "column {name} is declared boolean, got {other}; pass 1 or 0 (TRUE or FALSE)"
            ))
        }
        (ColumnKind::Text, ValueRef::Text(bytes)) => Value::Text(
            std::str::from_utf8(bytes)
                .map_err(|_| format!("column {name} got TEXT that is not valid UTF-8"))?
                .to_string(),
        ),
        (ColumnKind::Blob, ValueRef::Blob(bytes)) => Value::Blob(bytes.to_vec()),
        (_, other) => return wrong(super::super::args::type_name(other)),
    })
}

/// One column of a chunk, by slot.
#[derive(Debug)]
enum ColumnData {
    /// NaN is NULL.
    Numbers(Vec<f64>),
    /// Ids into the column's dictionary; `NULL_TEXT` is NULL.
    Text(Vec<u32>),
}

const NULL_TEXT: u32 = u32::MAX;

/// The filterable columns of one chunk (or of the pending rows).
#[derive(Debug)]
pub struct ChunkMetadata {
    columns: Vec<ColumnData>,
    /// Per column: the one value every slot holds, if so.
    uniform: Vec<bool>,
}

/// Every distinct text of each column, shared by the chunks of one index.
#[derive(Default, Debug)]
pub struct Dictionaries {
    ids: Vec<HashMap<String, u32>>,
    texts: Vec<Vec<String>>,
}

impl Dictionaries {
    fn id(&mut self, column: usize, text: &str) -> u32 {
        if self.ids.len() <= column {
            self.ids.resize_with(column + 1, HashMap::new);
            self.texts.resize_with(column + 1, Vec::new);
        }
        if let Some(&id) = self.ids[column].get(text) {
            return id;
        }
        let id = self.texts[column].len() as u32;
        self.texts[column].push(text.to_string());
        self.ids[column].insert(text.to_string(), id);
        id
    }

    fn texts(&self, column: usize) -> &[String] {
        self.texts.get(column).map_or(&[], Vec::as_slice)
    }
}

impl ChunkMetadata {
    /// From each slot's values of the filterable columns (`kinds`, in order).
    pub fn new(
        kinds: &[ColumnKind],
        rows: &[Vec<Value>],
        dictionaries: &mut Dictionaries,
    ) -> ChunkMetadata {
        let mut columns = Vec::with_capacity(kinds.len());
        let mut uniform = Vec::with_capacity(kinds.len());
        for (c, kind) in kinds.iter().enumerate() {
            let data = match kind {
                ColumnKind::Text | ColumnKind::Blob => ColumnData::Text(
                    rows.iter()
                        .map(|row| match &row[c] {
                            Value::Text(text) => dictionaries.id(c, text),
                            _ => NULL_TEXT,
                        })
                        .collect(),
                ),
                _ => ColumnData::Numbers(
                    rows.iter()
                        .map(|row| match row[c] {
                            Value::Integer(i) => i as f64,
                            Value::Real(r) => r,
                            _ => f64::NAN,
                        })
                        .collect(),
                ),
            };
            uniform.push(match &data {
                ColumnData::Numbers(v) => v.windows(2).all(|w| w[0].to_bits() == w[1].to_bits()),
                ColumnData::Text(v) => v.windows(2).all(|w| w[0] == w[1]),
            });
            columns.push(data);
        }
        ChunkMetadata { columns, uniform }
    }

    /// The slots (of `slots`) whose values pass every condition, ANDed into `bits` (a
    /// condition at a time, each a tight loop over its column).
    pub fn allowed_slots(&self, slots: usize, conditions: &[Prepared], bits: &mut SlotBits) {
        for condition in conditions {
            // A column that is uniform here decides the whole chunk at once.
            if self.uniform[condition.column] && slots > 0 {
                if !self.passes(condition, 0) {
                    bits.iter_mut().for_each(|w| *w = 0);
                    return;
                }
                continue;
            }
            match (&self.columns[condition.column], &condition.test) {
                (ColumnData::Numbers(v), Test::Number(test)) => match test.range() {
                    Some((lo, hi, nulls)) => and_each(bits, &v[..slots], |x| {
                        (x >= lo && x <= hi) || (nulls && x.is_nan())
                    }),
                    None => and_each(bits, &v[..slots], |x| test.passes(x)),
                },
                (ColumnData::Text(v), Test::Text(by_id)) => and_each(bits, &v[..slots], |id| {
                    if id == NULL_TEXT {
                        by_id.null
                    } else {
                        by_id.ids.get(id as usize).copied().unwrap_or(false)
                    }
                }),
                _ => bits.iter_mut().for_each(|w| *w = 0),
            }
        }
    }

    fn passes(&self, condition: &Prepared, slot: usize) -> bool {
        match (&self.columns[condition.column], &condition.test) {
            (ColumnData::Numbers(v), Test::Number(test)) => test.passes(v[slot]),
            (ColumnData::Text(v), Test::Text(by_id)) => {
                let id = v[slot];
                if id == NULL_TEXT {
                    by_id.null
                } else {
                    by_id.ids.get(id as usize).copied().unwrap_or(false)
                }
            }
            _ => false,
        }
    }
}

/// A condition on a metadata column, as the plan gave it.
#[derive(Clone, Debug)]
pub enum Filter {
    Compare(Condition, Value),
    In(Vec<Value>),
    IsNull(bool),
}

/// Where a value sorts for a numeric column: SQLite's order of types.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Rank {
    Number(f64),
    Text,
    Blob,
}

/// A condition made ready for a chunk's column.
#[derive(Debug)]
pub struct Prepared {
    column: usize,
    test: Test,
}

#[derive(Debug)]
enum Test {
    Number(NumberTest),
    Text(TextTest),
}

/// For a numeric column: whether NULL passes, and which numbers do.
#[derive(Debug)]
struct NumberTest {
    nulls: bool,
    /// Whether any number can pass at all.
    values: bool,
    /// Each `(bound, inclusive)`: x above it.
    lower: Vec<(f64, bool)>,
    /// Each `(bound, inclusive)`: x below it.
    upper: Vec<(f64, bool)>,
    excluded: Vec<f64>,
    /// From `=` and `IN`: only these.
    points: Option<Vec<f64>>,
}

impl NumberTest {
    /// The test as `lo <= x <= hi` (or NULL, where NULL passes), when it is that simple: no
    /// `!=` and no list.
    fn range(&self) -> Option<(f64, f64, bool)> {
        if !self.excluded.is_empty() || self.points.is_some() {
            return None;
        }
        if !self.values {
            return Some((f64::INFINITY, f64::NEG_INFINITY, self.nulls));
        }
        let lo = self
            .lower
            .iter()
            .fold(f64::NEG_INFINITY, |lo, &(b, inclusive)| {
                lo.max(if inclusive { b } else { b.next_up() })
            });
        let hi = self
            .upper
            .iter()
            .fold(f64::INFINITY, |hi, &(b, inclusive)| {
                hi.min(if inclusive { b } else { b.next_down() })
            });
        Some((lo, hi, self.nulls))
    }

    fn passes(&self, x: f64) -> bool {
        if x.is_nan() {
            return self.nulls;
        }
        self.values
            && self
                .lower
                .iter()
                .all(|&(b, inclusive)| x > b || (inclusive && x == b))
            && self
                .upper
                .iter()
                .all(|&(b, inclusive)| x < b || (inclusive && x == b))
            && !self.excluded.contains(&x)
            && self.points.as_ref().is_none_or(|p| p.contains(&x))
    }

    fn keep_points(&mut self, points: Vec<f64>) {
        self.points = Some(match self.points.take() {
            Some(old) => old.into_iter().filter(|x| points.contains(x)).collect(),
            None => points,
        });
    }

    fn add(&mut self, filter: &Filter) {
        match filter {
            Filter::IsNull(true) => self.values = false,
            Filter::IsNull(false) => self.nulls = false,
            Filter::In(values) => {
                self.nulls = false;
                let numbers = values
                    .iter()
                    .filter_map(|v| match numeric_rank(v) {
                        Some(Rank::Number(x)) => Some(x),
                        _ => None,
                    })
                    .collect();
                self.keep_points(numbers);
            }
            Filter::Compare(condition, value) => {
                self.nulls = false;
                match numeric_rank(value) {
                    None => self.values = false,
                    Some(Rank::Number(n)) => match condition {
                        Condition::Equals => self.keep_points(vec![n]),
                        Condition::NotEquals => self.excluded.push(n),
                        Condition::Above => self.lower.push((n, false)),
                        Condition::AtLeast => self.lower.push((n, true)),
                        Condition::Below => self.upper.push((n, false)),
                        Condition::AtMost => self.upper.push((n, true)),
                    },
                    // TEXT and BLOB sort above every number.
                    Some(_) => match condition {
                        Condition::Equals | Condition::Above | Condition::AtLeast => {
                            self.values = false
                        }
                        Condition::NotEquals | Condition::Below | Condition::AtMost => {}
                    },
                }
            }
        }
    }
}

/// For a text column: the answer for each dictionary id, and for NULL.
#[derive(Debug)]
struct TextTest {
    ids: Vec<bool>,
    null: bool,
}

/// How a numeric column sees an operand.
fn numeric_rank(value: &Value) -> Option<Rank> {
    match value {
        Value::Null => None,
        Value::Integer(i) => Some(Rank::Number(*i as f64)),
        Value::Real(r) => Some(Rank::Number(*r)),
        Value::Text(text) => Some(match text.trim().parse::<f64>() {
            Ok(r) if r.is_finite() => Rank::Number(r),
            _ => Rank::Text,
        }),
        Value::Blob(_) => Some(Rank::Blob),
    }
}

/// How a text column sees an operand: a number as its text; `Err` for a BLOB (above all text).
fn text_operand(value: &Value) -> Option<Result<String, ()>> {
    match value {
        Value::Null => None,
        Value::Integer(i) => Some(Ok(i.to_string())),
        Value::Real(r) => Some(Ok(format!("{r:?}"))),
        Value::Text(text) => Some(Ok(text.clone())),
        Value::Blob(_) => Some(Err(())),
    }
}

/// Whether a (non-NULL) `text` passes a condition other than IS [NOT] NULL.
fn text_passes(filter: &Filter, text: &str) -> bool {
    let compare = |value: &Value| -> Option<Ordering> {
        match text_operand(value)? {
            Ok(operand) => Some(text.as_bytes().cmp(operand.as_bytes())),
            Err(()) => Some(Ordering::Less),
        }
    };
    match filter {
        Filter::IsNull(want_null) => !want_null,
        Filter::In(values) => values.iter().any(|v| compare(v) == Some(Ordering::Equal)),
        Filter::Compare(condition, value) => match compare(value) {
            None => false,
            Some(order) => match condition {
                Condition::Equals => order == Ordering::Equal,
                Condition::NotEquals => order != Ordering::Equal,
                Condition::Above => order == Ordering::Greater,
                Condition::AtLeast => order != Ordering::Less,
                Condition::Below => order == Ordering::Less,
                Condition::AtMost => order != Ordering::Greater,
            },
        },
    }
}

/// Prepares the `filters` on filterable column `column` (of `kind`) against its dictionary.
pub fn prepare(
    column: usize,
    kind: ColumnKind,
    filters: &[Filter],
    dictionaries: &Dictionaries,
) -> Prepared {
    let test = match kind {
        ColumnKind::Text | ColumnKind::Blob => {
            let texts = dictionaries.texts(column);
            let null = filters.iter().all(|f| matches!(f, Filter::IsNull(true)));
            let ids = texts
                .iter()
                .map(|text| filters.iter().all(|f| text_passes(f, text)))
                .collect();
            Test::Text(TextTest { ids, null })
        }
        _ => {
            let mut test = NumberTest {
                nulls: true,
                values: true,
                lower: Vec::new(),
                upper: Vec::new(),
                excluded: Vec::new(),
                points: None,
            };
            for filter in filters {
                test.add(filter);
            }
            Test::Number(test)
        }
    };
    Prepared { column, test }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passing(kind: ColumnKind, values: &[Value], filters: &[Filter]) -> Vec<usize> {
        let mut dictionaries = Dictionaries::default();
        let rows: Vec<Vec<Value>> = values.iter().map(|v| vec![v.clone()]).collect();
        let chunk = ChunkMetadata::new(&[kind], &rows, &mut dictionaries);
        let prepared = prepare(0, kind, filters, &dictionaries);
        let mut bits = all_slots(values.len());
        chunk.allowed_slots(values.len(), &[prepared], &mut bits);
        (0..values.len()).filter(|s| bit(&bits, *s)).collect()
    }

    #[test]
    fn numbers_compare_as_sqlite_compares_them() {
        use Condition::*;
        let values = [
            Value::Integer(1),
            Value::Real(2.5),
            Value::Null,
            Value::Integer(4),
            Value::Integer(7),
        ];
        let f = ColumnKind::Float;
        let cmp = |c, v| Filter::Compare(c, v);
        assert_eq!(
            passing(
                f,
                &values,
                &[cmp(Above, Value::Integer(1)), cmp(AtMost, Value::Real(4.0))]
            ),
            vec![1, 3]
        );
        assert_eq!(
            passing(f, &values, &[cmp(Below, Value::Text("4".into()))]),
            vec![0, 1]
        );
        assert_eq!(
            passing(f, &values, &[cmp(Below, Value::Text("many".into()))]),
            vec![0, 1, 3, 4]
        );
        assert_eq!(
            passing(f, &values, &[cmp(NotEquals, Value::Integer(4))]),
            vec![0, 1, 4]
        );
        assert_eq!(
            passing(f, &values, &[cmp(Equals, Value::Null)]),
            Vec::<usize>::new()
        );
        assert_eq!(passing(f, &values, &[Filter::IsNull(true)]), vec![2]);
        assert_eq!(
            passing(f, &values, &[Filter::IsNull(false)]),
            vec![0, 1, 3, 4]
        );
        let list = Filter::In(vec![
            Value::Integer(7),
            Value::Real(2.5),
            Value::Null,
            Value::Integer(9),
        ]);
        assert_eq!(passing(f, &values, &[list.clone()]), vec![1, 4]);
        assert_eq!(
            passing(f, &values, &[list, cmp(Above, Value::Integer(3))]),
            vec![4]
        );
    }

    #[test]
    fn text_compares_bytewise_and_numbers_as_their_text() {
        use Condition::*;
        let text = |t: &str| Value::Text(t.into());
        let values = [
            text("foley"),
            text("music"),
            Value::Null,
            text("5"),
            text("Foley"),
        ];
        let t = ColumnKind::Text;
        assert_eq!(
            passing(t, &values, &[Filter::Compare(Equals, text("foley"))]),
            vec![0]
        );
        assert_eq!(
            passing(t, &values, &[Filter::Compare(Equals, Value::Integer(5))]),
            vec![3]
        );
        assert_eq!(
            passing(t, &values, &[Filter::Compare(NotEquals, text("foley"))]),
            vec![1, 3, 4]
        );
        assert_eq!(
            passing(t, &values, &[Filter::Compare(Above, text("f"))]),
            vec![0, 1]
        );
        assert_eq!(
            passing(
                t,
                &values,
                &[Filter::In(vec![text("music"), text("Foley")])]
            ),
            vec![1, 4]
        );
        assert_eq!(passing(t, &values, &[Filter::IsNull(true)]), vec![2]);
        // A chunk whose values are all one text is decided once.
        let same = [text("a"), text("a"), text("a")];
        assert_eq!(
            passing(t, &same, &[Filter::Compare(Equals, text("b"))]),
            Vec::<usize>::new()
        );
        assert_eq!(
            passing(t, &same, &[Filter::Compare(Equals, text("a"))]),
            vec![0, 1, 2]
        );
    }
}
