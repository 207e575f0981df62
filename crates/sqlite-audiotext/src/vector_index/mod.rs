//! `audiotext_index`: a vector index with vec0's syntax, stored in the database.
//!
//! ```sql
//! CREATE VIRTUAL TABLE clip_index USING audiotext_index(embedding float[384]);
//! INSERT INTO clip_index(rowid, embedding) SELECT id, embedding FROM clips;
//! SELECT rowid, distance FROM clip_index WHERE embedding MATCH ?query AND k = 10;
//! ```
//!
//! A query is a float32 vector BLOB (or vec0's JSON array text), or any other TEXT, which the
//! index's model embeds. Search: a parallel SIMD scan of every row's quantized code
//! (`audiotext_core::index`), then the best `rescore` candidates ranked exactly by cosine distance on
//! their float32 vectors. Storage and the memory copy of the codes: `store`.

mod filter;
mod metadata;
mod options;
mod store;

use std::borrow::Cow;
use std::cell::RefCell;
use std::os::raw::c_int;
use std::rc::Rc;
use std::sync::Arc;

use rusqlite::types::ValueRef;
use rusqlite::vtab::{
    ConflictMode, Context, Filters, IndexConstraintOp, IndexInfo, Inserts, Module, Updates,
    VTabKind,
};
use rusqlite::Connection;

use super::vtab::{
    set_result, Connecting, CreateTable, Cursor, Declared, Guarded, Table, UpdateTable,
};
use super::vtab_in;
use super::{vector_to_blob, Registry};
use audiotext_core::index::blob::{vector_from_blob, VectorBlobError};
use filter::{Condition, RowidFilter};
use metadata::Filter;
pub use options::IndexOptions;
use rusqlite::types::Value;
use store::{Hit, Store};

const NAME: &str = "audiotext_index";

/// Columns of the declared table: the vector, the declared others (from 1), then `distance` and
/// `k` (`IndexOptions::distance_column`).
const COLUMN_VECTOR: c_int = 0;
const COLUMN_ROWID: c_int = -1;

/// Bits of `idx_num`: which constraints `filter` receives, in this order.
const PLAN_MATCH: c_int = 1;
const PLAN_K: c_int = 2;
const PLAN_LIMIT: c_int = 4;
const PLAN_ROWID: c_int = 8;

/// The `idx_str` letters of an `IN (...)` list handed over whole, and of IS [NOT] NULL; the
/// comparisons have `filter::Condition::code`s. Each is followed by its column: `r` for rowid,
/// else the metadata column's number among the filterable ones.
const IN_LIST: char = 'i';
const IS_NULL: char = 'n';
const IS_NOT_NULL: char = 'N';

/// An operator's SQL, for messages.
fn operator_name(op: &IndexConstraintOp) -> String {
    use IndexConstraintOp::*;
    match op {
        SQLITE_INDEX_CONSTRAINT_LIKE => "LIKE".into(),
        SQLITE_INDEX_CONSTRAINT_GLOB => "GLOB".into(),
        SQLITE_INDEX_CONSTRAINT_REGEXP => "REGEXP".into(),
        SQLITE_INDEX_CONSTRAINT_MATCH => "MATCH".into(),
        other => format!("{other:?}")
            .trim_start_matches("SQLITE_INDEX_CONSTRAINT_")
            .to_string(),
    }
}

/// Most rows one query may ask for (vec0's limit too).
const MAX_K: i64 = 4096;

pub fn register_module(db: &Connection, registry: Arc<Registry>) -> rusqlite::Result<()> {
    const MODULE: Module<Guarded<IndexTable>> = Module::update_module();
    db.create_module(NAME, &MODULE, Some(registry))
}

struct IndexTable {
    state: Rc<RefCell<IndexState>>,
}

struct IndexState {
    store: Store,
    options: IndexOptions,
    registry: Arc<Registry>,
    /// The table's name, for messages.
    table: String,
}

impl IndexTable {
    fn make(at: Connecting<'_>, creating: bool) -> Result<Declared<IndexTable>, String> {
        let table = at.table;
        let args: Vec<&str> = at.args.iter().map(String::as_str).collect();
        let options = IndexOptions::parse(&args).map_err(|e| format!("{table}: {e}"))?;
        // SAFETY: the connection creating this table outlives it; `from_handle` never closes it.
        let connection =
            unsafe { Connection::from_handle(at.db.handle()) }.map_err(|e| e.to_string())?;
        let (dimensions, quantizer) = (options.dimensions, options.quantizer);
        let columns = &options.columns;
        let store = if creating {
            Store::create(
                connection, &at.schema, &table, dimensions, quantizer, columns,
            )
            .map_err(|e| format!("{table}: {e}"))?
        } else {
            Store::open(
                connection, &at.schema, &table, dimensions, quantizer, columns,
            )
        };
        let others: String = columns
            .iter()
            .map(|c| format!(", {} {}", store::quote(&c.name), c.kind.sql()))
            .collect();
        let declaration = format!(
            "CREATE TABLE x({} BLOB{others}, distance HIDDEN REAL, k HIDDEN INTEGER)",
            store::quote(&options.column)
        );
        let declaration = std::ffi::CString::new(declaration).map_err(|e| e.to_string())?;
        let state = IndexState {
            store,
            options,
            registry: at.registry,
            table,
        };
        Ok((
            Cow::Owned(declaration),
            IndexTable {
                state: Rc::new(RefCell::new(state)),
            },
        ))
    }
}

impl Table for IndexTable {
    const NAME: &'static str = NAME;
    type Cursor = IndexCursor;

    fn connect(at: Connecting<'_>) -> Result<Declared<Self>, String> {
        IndexTable::make(at, false)
    }

    /// One pass over the constraints: which plan (MATCH + k or LIMIT, rowid lookups, a full
    /// scan) SQLite may use, and the error for a filter the index cannot honour. Long because
    /// every constraint kind is decided here, in one place, against all the others.
    fn best_index(&self, info: &mut IndexInfo) -> Result<bool, String> {
        let state = self.state.borrow();
        let options = &state.options;
        let (column_distance, column_k) =
            (options.distance_column(), options.distance_column() + 1);
        let mut found: [Option<usize>; 4] = [None; 4];
        let mut unusable_match = false;
        // Conditions a nearest-neighbour query applies while it searches, on rowid (`None`) or
        // a declared column.
        let mut filters: Vec<(usize, Option<usize>, IndexConstraintOp)> = Vec::new();
        for (i, constraint) in info.constraints().enumerate() {
            let (column, op) = (constraint.column(), constraint.operator());
            if !constraint.is_usable() {
                unusable_match |= column == COLUMN_VECTOR
                    && op == IndexConstraintOp::SQLITE_INDEX_CONSTRAINT_MATCH;
                continue;
            }
            if column == COLUMN_ROWID && Condition::of(&op).is_some() {
                filters.push((i, None, constraint.operator()));
            }
            if let Some(declared) = options.declared_column(column) {
                filters.push((i, Some(declared), constraint.operator()));
            }
            let slot = match (column, op) {
                (COLUMN_VECTOR, IndexConstraintOp::SQLITE_INDEX_CONSTRAINT_MATCH) => 0,
                (c, IndexConstraintOp::SQLITE_INDEX_CONSTRAINT_EQ) if c == column_k => 1,
                (_, IndexConstraintOp::SQLITE_INDEX_CONSTRAINT_LIMIT) => 2,
                (COLUMN_ROWID, IndexConstraintOp::SQLITE_INDEX_CONSTRAINT_EQ) => 3,
                _ => continue,
            };
            found[slot].get_or_insert(i);
        }
        let knn = found[0].is_some();
        // A MATCH whose query comes from another table (a join) must wait for that table's
        // row: refuse plans that would scan the index without it, as vec0 does, rather than
        // return nothing.
        if unusable_match && !knn {
            return Ok(false);
        }
        // LIMIT matters only to a nearest-neighbour query; rowid = ? only to a plain one.
        let used: Vec<(usize, c_int)> = [
            (found[0], PLAN_MATCH),
            (found[1], PLAN_K),
            (found[2], PLAN_LIMIT),
            (found[3], PLAN_ROWID),
        ]
        .into_iter()
        .filter(|(_, bit)| {
            if knn {
                *bit != PLAN_ROWID
            } else {
                *bit == PLAN_ROWID
            }
        })
        .filter_map(|(i, bit)| i.map(|i| (i, bit)))
        .collect();
        let mut idx_num = 0;
        let mut argv = 0;
        for (i, bit) in &used {
            argv += 1;
            let mut usage = info.constraint_usage(*i);
            usage.set_argv_index(argv);
            // SQLite still applies LIMIT itself; the others are fully handled here.
            usage.set_omit(*bit != PLAN_LIMIT);
            idx_num |= bit;
        }
        info.set_idx_num(idx_num);
        if knn {
            // Every condition on rowid or a metadata column filters the search itself, so that
            // the k nearest rows *that pass* come back: applied after it, they would leave fewer.
            let mut plan = Vec::new();
            let mut joined = false;
            for (i, column, op) in filters {
                let target = match column {
                    None => "r".to_string(),
                    Some(c) => {
                        let declared = &options.columns[c];
                        if !declared.filters() {
                            return Err(format!("{}: +{} is an auxiliary column: it is returned, never filtered, and a condition on it would be applied after the {} nearest rows are chosen, leaving fewer; declare it without + to filter on it inside the search, or filter first with rowid IN (SELECT rowid FROM {} WHERE ...)", state.table, declared.name, "k", state.table));
                        }
                        options.filterable_index(c).to_string()
                    }
                };
                let code = if op == IndexConstraintOp::SQLITE_INDEX_CONSTRAINT_EQ
                    && vtab_in::is_in_list(info, i, false)
                {
                    if !vtab_in::is_in_list(info, i, true) {
                        return Ok(false);
                    }
                    IN_LIST
                } else if let Some(condition) = Condition::of(&op) {
                    if condition == Condition::Equals && !vtab_in::available() {
                        // An older SQLite cannot hand over an IN list whole: it would run one
                        // search per value. Such a plan is refused (another may not need it).
                        return Ok(false);
                    }
                    // `column = x` may be a join's: searching once per row of the other table
                    // is another query than the join means. Priced so that SQLite prefers to
                    // search once and join after, wherever it can.
                    joined = true;
                    condition.code()
                } else if op == IndexConstraintOp::SQLITE_INDEX_CONSTRAINT_ISNULL {
                    IS_NULL
                } else if op == IndexConstraintOp::SQLITE_INDEX_CONSTRAINT_ISNOTNULL {
                    IS_NOT_NULL
                } else {
                    let name = column.map_or("rowid", |c| options.columns[c].name.as_str());
                    return Err(format!("{}: a nearest-neighbour query applies conditions on {name} inside the search only with =, !=, <, <=, >, >=, BETWEEN, IN (...) and IS [NOT] NULL; this one ({}) would be applied after the k nearest rows are chosen, leaving fewer. Filter first: rowid IN (SELECT rowid FROM {} WHERE ...)", state.table, operator_name(&op), state.table));
                };
                argv += 1;
                let mut usage = info.constraint_usage(i);
                usage.set_argv_index(argv);
                usage.set_omit(true);
                plan.push(format!("{code}{target}"));
            }
            info.set_idx_str(&plan.join(","));
            // Rows come out nearest first: ORDER BY distance (ascending) needs no sort.
            let by_distance = info
                .order_bys()
                .all(|o| o.column() == column_distance && !o.is_order_by_desc());
            if info.num_of_order_by() > 0 && by_distance {
                info.set_order_by_consumed(true);
            }
            info.set_estimated_cost(if joined { 1e12 } else { 1e3 });
            info.set_estimated_rows(10);
        } else if idx_num & PLAN_ROWID != 0 {
            info.set_estimated_cost(1.0);
            info.set_estimated_rows(1);
        } else {
            info.set_estimated_cost(1e7);
        }
        Ok(true)
    }

    fn open(&mut self) -> Result<IndexCursor, String> {
        Ok(IndexCursor {
            state: self.state.clone(),
            rows: Vec::new(),
            position: 0,
            k: None,
        })
    }
}

impl CreateTable for IndexTable {
    const KIND: VTabKind = VTabKind::Default;

    fn create(at: Connecting<'_>) -> Result<Declared<Self>, String> {
        IndexTable::make(at, true)
    }

    fn destroy(&self) -> Result<(), String> {
        self.state.borrow().store.destroy()
    }
}

impl IndexState {
    /// A vector given to INSERT or MATCH: a float32 BLOB, or vec0's JSON array text.
    fn vector_argument(&self, value: ValueRef<'_>, role: &str) -> Result<Option<Vec<f32>>, String> {
        let vector = match value {
            ValueRef::Blob(bytes) => vector_from_blob(bytes).map_err(|e| match e {
                VectorBlobError::Length(len) => format!("{role} is a BLOB of {len} bytes, which is not a float32 vector; pass a BLOB from audio_embed or text_embed"),
                VectorBlobError::NonFinite { dimension, value } => format!("{role} holds {value} at element {dimension}: vectors must be finite; recompute it"),
            })?,
            ValueRef::Text(text) => match serde_json::from_slice::<Vec<f32>>(text) {
                Ok(vector) if text.first() == Some(&b'[') => {
                    if let Some(i) = vector.iter().position(|x| !x.is_finite()) {
                        return Err(format!("{role} holds {} at element {i}: vectors must be finite", vector[i]));
                    }
                    vector
                }
                _ => return Ok(None),
            },
            other => return Err(format!("{role} must be a float32 vector BLOB, got {}", super::args::type_name(other))),
        };
        if vector.len() != self.options.dimensions {
            return Err(format!(
                "{role} has {} dimensions, while {} holds float[{}]; pass a vector from the model the index was built with",
                vector.len(), self.table, self.options.dimensions
            ));
        }
        if vector.iter().all(|x| *x == 0.0) {
            return Err(format!(
                "{role} is all zeros, so it has no cosine distance to anything; pass an embedding"
            ));
        }
        Ok(Some(vector))
    }

    /// The query of `MATCH`: a vector, or TEXT embedded with the index's model.
    fn query_vector(&self, value: ValueRef<'_>) -> Result<Vec<f32>, String> {
        let role = "the MATCH query";
        if let Some(vector) = self.vector_argument(value, role)? {
            return Ok(vector);
        }
        let ValueRef::Text(bytes) = value else {
            unreachable!("vector_argument returns None only for TEXT")
        };
        let text = std::str::from_utf8(bytes)
            .map_err(|_| format!("{role} is TEXT that is not valid UTF-8; pass UTF-8 text"))?;
        let model = &self.options.model;
        let encoder = self
            .registry
            .get(model)
            .and_then(|bundle| bundle.text_encoder().map_err(|e| e.to_string()))
            .map_err(|e| format!("{role} is text, to be embedded with model '{model}' (the index's model= option): {e}"))?;
        let vector = encoder
            .embed(&[text])
            .map_err(|e| e.to_string())?
            .pop()
            .unwrap_or_default();
        if vector.len() != self.options.dimensions {
            return Err(format!(
                "model '{model}' embeds text in {} dimensions while {} holds float[{}]; name the model that made the vectors with model= when creating the index",
                vector.len(), self.table, self.options.dimensions
            ));
        }
        if !vector.iter().all(|x| x.is_finite()) {
            return Err(super::NON_FINITE_RESULT.into());
        }
        Ok(vector)
    }

    /// Inserts a row; `INSERT OR REPLACE` replaces a row with the same rowid, `INSERT OR
    /// IGNORE` keeps it and skips the new one.
    fn insert(
        &mut self,
        rowid: ValueRef<'_>,
        vector: ValueRef<'_>,
        values: &[Value],
        conflict: ConflictMode,
    ) -> Result<i64, String> {
        let rowid = match rowid {
            ValueRef::Null => None,
            ValueRef::Integer(rowid) => Some(rowid),
            other => {
                return Err(format!(
                    "rowid must be an INTEGER, got {}",
                    super::args::type_name(other)
                ))
            }
        };
        let role = format!("the {} value", self.options.column);
        let vector = match vector {
            ValueRef::Null => return Err(format!("{role} is NULL; every row of {} needs a vector", self.table)),
            v => self.vector_argument(v, &role)?.ok_or_else(|| format!("{role} is TEXT that is not a JSON array of numbers; pass a float32 vector BLOB"))?,
        };
        if let (Some(rowid), ConflictMode::Ignore) = (rowid, &conflict) {
            if self.store.location(rowid)?.is_some() {
                return Ok(rowid);
            }
        }
        self.store
            .insert(rowid, &vector, values, conflict == ConflictMode::Replace)
    }

    /// The declared columns' values of an INSERT or UPDATE (argv from 3 on), checked against
    /// their types; `kept` gives the old value of a column the UPDATE does not set.
    fn column_values(
        &self,
        argv: &[ValueRef<'_>],
        unchanged: impl Fn(usize) -> bool,
        kept: &[Value],
    ) -> Result<Vec<Value>, String> {
        self.options
            .columns
            .iter()
            .enumerate()
            .map(|(i, column)| {
                if unchanged(3 + i) {
                    return Ok(kept.get(i).cloned().unwrap_or(Value::Null));
                }
                let value = argv.get(3 + i).copied().unwrap_or(ValueRef::Null);
                metadata::checked_value(column, value)
            })
            .collect()
    }
}

impl UpdateTable for IndexTable {
    fn delete(&mut self, rowid: ValueRef<'_>) -> Result<(), String> {
        match rowid {
            ValueRef::Integer(rowid) => self.state.borrow_mut().store.delete(rowid),
            _ => Ok(()),
        }
    }

    fn insert(&mut self, args: &Inserts<'_>) -> Result<i64, String> {
        // argv: [NULL, new rowid, embedding, declared columns..., distance, k]
        // SAFETY: the handle of the connection running this statement.
        let conflict = unsafe { args.on_conflict(self.connection()) };
        let argv: Vec<ValueRef<'_>> = args.iter().collect();
        let mut state = self.state.borrow_mut();
        let table = state.table.clone();
        let values = state
            .column_values(&argv, |_| false, &[])
            .map_err(|e| format!("{table}: {e}"))?;
        state
            .insert(
                argv.get(1).copied().unwrap_or(ValueRef::Null),
                argv.get(2).copied().unwrap_or(ValueRef::Null),
                &values,
                conflict,
            )
            .map_err(|e| format!("{table}: {e}"))
    }

    fn update(&mut self, args: &Updates<'_>) -> Result<(), String> {
        // argv: [old rowid, new rowid, embedding, declared columns..., distance, k]
        let unchanged_vector = args.no_change(2);
        let values: Vec<ValueRef<'_>> = args.iter().collect();
        let mut state = self.state.borrow_mut();
        let table = state.table.clone();
        let ValueRef::Integer(old) = values[0] else {
            return Ok(());
        };
        let kept;
        let vector = if unchanged_vector {
            let location = state
                .store
                .location(old)?
                .ok_or_else(|| format!("{table}: row {old} vanished during the UPDATE"))?;
            kept = vector_to_blob(&state.store.vector(old, location)?);
            ValueRef::Blob(&kept)
        } else {
            values[2]
        };
        // Check the new row before removing the old one, so a bad UPDATE changes nothing.
        let role = format!("the {} value", state.options.column);
        if vector == ValueRef::Null {
            return Err(format!("{table}: {role} is NULL; every row needs a vector"));
        }
        state
            .vector_argument(vector, &role)
            .map_err(|e| format!("{table}: {e}"))?;
        let old_values = if state.options.columns.is_empty() {
            Vec::new()
        } else {
            state.store.values(old)?
        };
        let columns = state
            .column_values(&values, |i| args.no_change(i), &old_values)
            .map_err(|e| format!("{table}: {e}"))?;
        state.store.delete(old)?;
        state
            .insert(values[1], vector, &columns, ConflictMode::Abort)
            .map_err(|e| format!("{table}: {e}"))
            .map(|_| ())
    }
}

impl IndexTable {
    fn connection(&self) -> *mut rusqlite::ffi::sqlite3 {
        // SAFETY: the store's connection wraps the handle of the connection owning this table.
        unsafe { self.state.borrow().store.handle() }
    }
}

/// One row of a cursor.
struct Row {
    rowid: i64,
    distance: Option<f32>,
}

struct IndexCursor {
    state: Rc<RefCell<IndexState>>,
    rows: Vec<Row>,
    position: usize,
    k: Option<i64>,
}

impl IndexCursor {
    fn run(
        &mut self,
        idx_num: c_int,
        idx_str: Option<&str>,
        args: &Filters<'_>,
    ) -> Result<(), String> {
        let mut values = args.iter();
        let mut next = |bit: c_int| {
            if idx_num & bit != 0 {
                values.next()
            } else {
                None
            }
        };
        let query = next(PLAN_MATCH);
        let k = next(PLAN_K);
        let limit = next(PLAN_LIMIT);
        let rowid = next(PLAN_ROWID);
        let used = [query, k, limit, rowid].iter().flatten().count();
        let mut state = self.state.borrow_mut();
        let table = state.table.clone();
        let in_table = |e: String| format!("{table}: {e}");
        self.rows.clear();
        self.position = 0;
        self.k = None;
        if let Some(query) = query {
            if query == ValueRef::Null {
                return Ok(());
            }
            let k = match (k, limit) {
                (Some(k), _) => k_value(k, "k").map_err(in_table)?,
                (None, Some(limit)) => k_value(limit, "LIMIT").map_err(in_table)?,
                (None, None) => return Err(format!("{table}: a MATCH query needs how many rows to return: add `AND k = 10` (or, on SQLite 3.41 and newer, `ORDER BY distance LIMIT 10`)")),
            };
            self.k = Some(k as i64);
            let (rowids, metadata) = query_filters(idx_str.unwrap_or_default(), args, used)?;
            let query = state.query_vector(query).map_err(in_table)?;
            let rescore = state.options.rescore;
            let hits = state
                .store
                .search(&query, k, rescore, &rowids, &metadata)
                .map_err(in_table)?;
            self.rows = hits
                .into_iter()
                .map(
                    |Hit {
                         rowid, distance, ..
                     }| Row {
                        rowid,
                        distance: Some(distance),
                    },
                )
                .collect();
            return Ok(());
        }
        let rowids = match rowid {
            Some(ValueRef::Integer(rowid)) => {
                match state.store.location(rowid).map_err(in_table)? {
                    Some(_) => vec![rowid],
                    None => Vec::new(),
                }
            }
            Some(_) => Vec::new(),
            None => state.store.rowids().map_err(in_table)?,
        };
        self.rows = rowids
            .into_iter()
            .map(|rowid| Row {
                rowid,
                distance: None,
            })
            .collect();
        Ok(())
    }
}

/// The conditions of a nearest-neighbour query: `plan` (the plan's `idx_str`) names each, and
/// their values are `args` from `first` on.
fn query_filters(
    plan: &str,
    args: &Filters<'_>,
    first: usize,
) -> Result<(RowidFilter, Vec<(usize, Vec<Filter>)>), String> {
    let mut rowids = RowidFilter::default();
    let mut metadata: Vec<(usize, Vec<Filter>)> = Vec::new();
    let broken = |what: &str| format!("the query plan holds {what}; please report this");
    for (n, token) in plan.split(',').filter(|t| !t.is_empty()).enumerate() {
        let argv = first + n;
        let mut chars = token.chars();
        let code = chars.next().ok_or_else(|| broken("an empty condition"))?;
        let target = chars.as_str();
        let value = || {
            args.iter()
                .nth(argv)
                .ok_or_else(|| broken("a condition without its value"))
        };
        if target == "r" {
            match code {
                IN_LIST => rowids.add_list(&vtab_in::in_values(args, argv)?),
                _ => {
                    let condition =
                        Condition::from_code(code).ok_or_else(|| broken("an unknown condition"))?;
                    rowids.add(condition, value()?);
                }
            }
            continue;
        }
        let column: usize = target.parse().map_err(|_| broken("an unknown column"))?;
        let filter = match code {
            IN_LIST => Filter::In(vtab_in::in_values(args, argv)?),
            IS_NULL => Filter::IsNull(true),
            IS_NOT_NULL => Filter::IsNull(false),
            _ => {
                let condition =
                    Condition::from_code(code).ok_or_else(|| broken("an unknown condition"))?;
                Filter::Compare(condition, owned(value()?))
            }
        };
        match metadata.iter_mut().find(|(c, _)| *c == column) {
            Some((_, filters)) => filters.push(filter),
            None => metadata.push((column, vec![filter])),
        }
    }
    Ok((rowids, metadata))
}

fn owned(value: ValueRef<'_>) -> Value {
    match value {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Integer(i),
        ValueRef::Real(r) => Value::Real(r),
        ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => Value::Blob(b.to_vec()),
    }
}

/// `k = N` or `LIMIT N`: 1 to `MAX_K`.
fn k_value(value: ValueRef<'_>, role: &str) -> Result<usize, String> {
    match value {
        ValueRef::Integer(k) if (1..=MAX_K).contains(&k) => Ok(k as usize),
        ValueRef::Integer(k) => Err(format!(
            "{role} = {k} is out of range: ask for 1 to {MAX_K} nearest rows"
        )),
        other => Err(format!(
            "{role} must be an INTEGER from 1 to {MAX_K}, got {}",
            super::args::type_name(other)
        )),
    }
}

impl Cursor for IndexCursor {
    fn filter(
        &mut self,
        idx_num: c_int,
        idx_str: Option<&str>,
        args: &Filters<'_>,
    ) -> Result<(), String> {
        self.run(idx_num, idx_str, args)
    }

    fn next(&mut self) -> Result<(), String> {
        self.position += 1;
        Ok(())
    }

    fn eof(&self) -> bool {
        self.position >= self.rows.len()
    }

    fn column(&self, ctx: &mut Context, column: c_int) -> Result<(), String> {
        let row = &self.rows[self.position];
        match column {
            COLUMN_VECTOR => {
                let mut state = self.state.borrow_mut();
                // Looked up again: a write in the same statement may have moved the row into a
                // chunk since the search.
                let table = state.table.clone();
                let vector = state
                    .store
                    .location(row.rowid)
                    .and_then(|location| {
                        let location = location.ok_or_else(|| {
                            format!("row {} was deleted while the statement read it", row.rowid)
                        })?;
                        state.store.vector(row.rowid, location)
                    })
                    .map_err(|e| format!("{table}: {e}"))?;
                set_result(ctx, &vector_to_blob(&vector))
            }
            _ => {
                let state = self.state.borrow();
                let distance = state.options.distance_column();
                if column == distance {
                    set_result(ctx, &row.distance.map(f64::from))
                } else if column == distance + 1 {
                    set_result(ctx, &self.k)
                } else if let Some(declared) = state.options.declared_column(column) {
                    let value = state
                        .store
                        .value(row.rowid, declared)
                        .map_err(|e| format!("{}: {e}", state.table))?;
                    set_result(ctx, &value)
                } else {
                    set_result(ctx, &rusqlite::types::Null)
                }
            }
        }
    }

    fn rowid(&self) -> Result<i64, String> {
        Ok(self.rows[self.position].rowid)
    }
}
