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
//! (`crate::index`), then the best `rescore` candidates ranked exactly by cosine distance on
//! their float32 vectors. Storage and the memory copy of the codes: `store`.

mod filter;
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

use super::blob::{vector_from_blob, VectorBlobError};
use super::vtab::{
    set_result, Connecting, CreateTable, Cursor, Declared, Guarded, Table, UpdateTable,
};
use super::vtab_in;
use super::{vector_to_blob, Registry};
use filter::{Condition, RowidFilter};
pub use options::IndexOptions;
use store::{Hit, Store};

const NAME: &str = "audiotext_index";

const COLUMN_VECTOR: c_int = 0;
const COLUMN_DISTANCE: c_int = 1;
const COLUMN_K: c_int = 2;
const COLUMN_ROWID: c_int = -1;

/// Bits of `idx_num`: which constraints `filter` receives, in this order.
const PLAN_MATCH: c_int = 1;
const PLAN_K: c_int = 2;
const PLAN_LIMIT: c_int = 4;
const PLAN_ROWID: c_int = 8;

/// The `idx_str` letter of a `rowid IN (...)` list handed over whole.
const IN_LIST: char = 'i';

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
        let store = if creating {
            Store::create(connection, &at.schema, &table, dimensions, quantizer)
                .map_err(|e| format!("{table}: {e}"))?
        } else {
            Store::open(connection, &at.schema, &table, dimensions, quantizer)
        };
        let declaration = format!(
            "CREATE TABLE x({} BLOB, distance HIDDEN REAL, k HIDDEN INTEGER)",
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

    fn best_index(&self, info: &mut IndexInfo) -> Result<bool, String> {
        let mut found: [Option<usize>; 4] = [None; 4];
        let mut unusable_match = false;
        // Conditions on rowid a nearest-neighbour query applies while it searches.
        let mut on_rowid: Vec<(usize, Condition)> = Vec::new();
        for (i, constraint) in info.constraints().enumerate() {
            if !constraint.is_usable() {
                unusable_match |= constraint.column() == COLUMN_VECTOR
                    && constraint.operator() == IndexConstraintOp::SQLITE_INDEX_CONSTRAINT_MATCH;
                continue;
            }
            if constraint.column() == COLUMN_ROWID {
                if let Some(condition) = Condition::of(constraint.operator()) {
                    on_rowid.push((i, condition));
                }
            }
            let slot = match (constraint.column(), constraint.operator()) {
                (COLUMN_VECTOR, IndexConstraintOp::SQLITE_INDEX_CONSTRAINT_MATCH) => 0,
                (COLUMN_K, IndexConstraintOp::SQLITE_INDEX_CONSTRAINT_EQ) => 1,
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
            // Every condition on rowid filters the search itself, so that the k nearest rows
            // *that pass* come back: applied after the search, they would leave fewer.
            let mut codes = String::new();
            let mut joined = false;
            for (i, condition) in on_rowid {
                let code = if condition == Condition::Equals && vtab_in::is_in_list(info, i, false)
                {
                    if !vtab_in::is_in_list(info, i, true) {
                        return Ok(false);
                    }
                    IN_LIST
                } else if condition == Condition::Equals && !vtab_in::available() {
                    // An older SQLite cannot hand over an IN list whole: it would run one search
                    // per value. Such a plan is refused (another order may not need it).
                    return Ok(false);
                } else {
                    // `rowid = x` may be a join's: searching once per row of the other table
                    // among that one row is another query than the join means. Priced so that
                    // SQLite prefers to search once and join after, wherever it can.
                    joined = true;
                    condition.code()
                };
                argv += 1;
                let mut usage = info.constraint_usage(i);
                usage.set_argv_index(argv);
                usage.set_omit(true);
                codes.push(code);
            }
            info.set_idx_str(&codes);
            // Rows come out nearest first: ORDER BY distance (ascending) needs no sort.
            let by_distance = info
                .order_bys()
                .all(|o| o.column() == COLUMN_DISTANCE && !o.is_order_by_desc());
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
            .insert(rowid, &vector, conflict == ConflictMode::Replace)
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
        // argv: [NULL, new rowid, embedding, distance, k]
        // SAFETY: the handle of the connection running this statement.
        let conflict = unsafe { args.on_conflict(self.connection()) };
        let mut values = args.iter().skip(1);
        let (rowid, vector) = (values.next(), values.next());
        let mut state = self.state.borrow_mut();
        let table = state.table.clone();
        state
            .insert(
                rowid.unwrap_or(ValueRef::Null),
                vector.unwrap_or(ValueRef::Null),
                conflict,
            )
            .map_err(|e| format!("{table}: {e}"))
    }

    fn update(&mut self, args: &Updates<'_>) -> Result<(), String> {
        // argv: [old rowid, new rowid, embedding, distance, k]
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
        state.store.delete(old)?;
        state
            .insert(values[1], vector, ConflictMode::Abort)
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
            let filter = rowid_filter(idx_str.unwrap_or_default(), args, used)?;
            let query = state.query_vector(query).map_err(in_table)?;
            let rescore = state.options.rescore;
            let hits = state
                .store
                .search(&query, k, rescore, &filter)
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

/// The conditions on rowid of a nearest-neighbour query: `codes` (the plan's `idx_str`) names
/// each, and their values are `args` from `first` on.
fn rowid_filter(codes: &str, args: &Filters<'_>, first: usize) -> Result<RowidFilter, String> {
    let mut filter = RowidFilter::default();
    for (n, code) in codes.chars().enumerate() {
        let argv = first + n;
        if code == IN_LIST {
            filter.add_list(&vtab_in::in_values(args, argv)?);
            continue;
        }
        let condition = Condition::from_code(code).ok_or_else(|| {
            format!("the query plan holds an unknown condition '{code}'; please report this")
        })?;
        let value = args
            .iter()
            .nth(argv)
            .ok_or("the query plan lost a condition's value; please report this")?;
        filter.add(condition, value);
    }
    Ok(filter)
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
            COLUMN_DISTANCE => set_result(ctx, &row.distance.map(f64::from)),
            COLUMN_K => set_result(ctx, &self.k),
            _ => set_result(ctx, &rusqlite::types::Null),
        }
    }

    fn rowid(&self) -> Result<i64, String> {
        Ok(self.rows[self.position].rowid)
    }
}
