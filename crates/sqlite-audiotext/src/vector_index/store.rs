//! Where an `audiotext_index` keeps its rows: shadow tables in the same database, so the index
//! is saved, copied, rolled back and vacuumed with it, and a decoded copy of the codes in memory.
//!
//! For a table `t`:
//! - `t_info`: one row: format, dimensions, quantizer, `generation` (a fresh random number on
//!   every write) and the number of pending rows;
//! - `t_pending(rowid, vector)`: rows not yet in a chunk (fewer than `CHUNK_SLOTS`);
//! - `t_chunks(chunk_id, nonce, version, live)` and `t_codes(chunk_id, rowids, codes)`: full
//!   chunks of `CHUNK_SLOTS` rows: their rowids and codes, each one contiguous BLOB written
//!   once. A delete only clears the row's byte in `live` and draws a new `version`; a chunk
//!   with no live row left is dropped;
//! - `t_vectors(block_id, vectors)`: the chunks' float32 vectors, `BLOCK_VECTORS` to a row, for
//!   the exact rescoring: a candidate's vector is a B-tree seek and a read of at most a few
//!   pages away (in one chunk-sized BLOB, SQLite would walk its overflow chain up to the slot);
//! - `t_rowids(rowid, chunk_id, slot)`: where each chunked row lives;
//! - `t_metadata(rowid, <columns>)`, for an index declared with metadata or auxiliary columns:
//!   each row's values. With partition keys, `t_pending` also holds each row's `part` (its keys'
//!   values as JSON), and a chunk is folded from the rows of one partition only, so a filter on a
//!   partition key skips whole chunks.
//!
//! Every write is plain SQL on these tables, inside the caller's transaction: a rollback undoes
//! it like any other write. The memory copy is checked against the database before every
//! search: the same `generation` means nothing changed; otherwise chunks whose `nonce` (drawn
//! when the chunk is written) and `version` match are kept and only the others are read again.
//! Random numbers rather than counters, so that a rolled-back write followed by another cannot
//! reproduce a value the memory copy already saw. Rows written by other connections and
//! processes are seen the same way.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};

use rusqlite::types::Value;
use rusqlite::{params, Connection, OptionalExtension};

use super::filter::RowidFilter;
use super::metadata::{bit, ChunkMetadata, Dictionaries, Prepared, SlotBits};
use super::options::{Column, ColumnKind, ColumnRole};
use audiotext_core::index::kernels::dot_f32;
use audiotext_core::index::quantize::unit;
use audiotext_core::index::{top_candidates, CodeChunk, Quantizer};

/// Rows per chunk: 1024 codes of 388 bytes (384 dimensions, int8) are 388 KB, enough to keep a
/// core busy between scheduling points and few enough chunks to load quickly.
pub const CHUNK_SLOTS: usize = 1024;
/// Vectors per row of `t_vectors`: 12 KB for 384 dimensions, which SQLite stores in three full
/// overflow pages, so the file stays near the raw float32 size and a read touches few pages.
const BLOCK_VECTORS: usize = 8;
const BLOCKS_PER_CHUNK: i64 = (CHUNK_SLOTS / BLOCK_VECTORS) as i64;
/// The shadow tables' layout; a database with another is refused, not misread.
const FORMAT: i64 = 1;
const SUFFIXES: [&str; 7] = [
    "info", "pending", "chunks", "codes", "vectors", "rowids", "metadata",
];

/// Where a row's vector is.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Location {
    Pending,
    Chunk { chunk_id: i64, slot: usize },
}

/// One search result.
#[derive(Clone, Copy, Debug)]
pub struct Hit {
    pub rowid: i64,
    /// Cosine distance, `1 - cos`, from the float32 vectors.
    pub distance: f32,
}

pub struct Store {
    db: Connection,
    schema: String,
    table: String,
    dimensions: usize,
    quantizer: Quantizer,
    code_bytes: usize,
    cache: Cache,
    /// The columns besides the vector, as declared.
    columns: Vec<Column>,
    /// Why the shadow tables cannot be used, found when the table was connected; every use
    /// but DROP TABLE reports it (a damaged index must stay droppable).
    damage: Option<String>,
}

/// The fix for shadow tables that were changed outside the index.
const REBUILD: &str = "the database was changed outside the index: rebuild it (DROP TABLE, CREATE VIRTUAL TABLE, INSERT)";

#[derive(Default)]
struct Cache {
    generation: Option<i64>,
    chunks: Vec<CachedChunk>,
    /// Pending rows' vectors, as stored.
    pending: Vec<(i64, Vec<f32>)>,
    /// The pending rows' filterable values, read when a query first filters on them.
    pending_metadata: Option<ChunkMetadata>,
    dictionaries: Dictionaries,
}

struct CachedChunk {
    id: i64,
    nonce: i64,
    version: i64,
    codes: CodeChunk,
    /// Its rows' filterable values, read when a query first filters on them (a chunk's rows
    /// never change their values: an UPDATE moves the row out of the chunk).
    metadata: Option<ChunkMetadata>,
}

/// A query's conditions on metadata: (filterable column, its conditions).
pub type MetadataConditions = [(usize, Vec<super::metadata::Filter>)];

impl Store {
    /// Creates the shadow tables of a new index.
    pub fn create(
        db: Connection,
        schema: &str,
        table: &str,
        dimensions: usize,
        quantizer: Quantizer,
        columns: &[Column],
    ) -> Result<Store, String> {
        let store = Store::new(db, schema, table, dimensions, quantizer, columns);
        let sql = format!(
            "CREATE TABLE {info}(id INTEGER PRIMARY KEY CHECK (id = 1), format INTEGER NOT NULL, dimensions INTEGER NOT NULL, quantizer TEXT NOT NULL, generation INTEGER NOT NULL, pending INTEGER NOT NULL);
             CREATE TABLE {pending}(rowid INTEGER PRIMARY KEY, vector BLOB NOT NULL{part});
             CREATE TABLE {chunks}(chunk_id INTEGER PRIMARY KEY, nonce INTEGER NOT NULL, version INTEGER NOT NULL, live BLOB NOT NULL);
             CREATE TABLE {codes}(chunk_id INTEGER PRIMARY KEY, rowids BLOB NOT NULL, codes BLOB NOT NULL);
             CREATE TABLE {vectors}(block_id INTEGER PRIMARY KEY, vectors BLOB NOT NULL);
             CREATE TABLE {rowids}(rowid INTEGER PRIMARY KEY, chunk_id INTEGER NOT NULL, slot INTEGER NOT NULL);",
            info = store.shadow("info"),
            pending = store.shadow("pending"),
            part = if store.partitioned() { ", part TEXT" } else { "" },
            chunks = store.shadow("chunks"),
            codes = store.shadow("codes"),
            vectors = store.shadow("vectors"),
            rowids = store.shadow("rowids"),
        );
        store
            .db
            .execute_batch(&(sql + &store.metadata_tables()))
            .map_err(|e| format!("creating its shadow tables: {e}"))?;
        store
            .db
            .execute(
                &format!("INSERT INTO {}(id, format, dimensions, quantizer, generation, pending) VALUES (1, ?1, ?2, ?3, ?4, 0)", store.shadow("info")),
                params![FORMAT, dimensions as i64, quantizer.name(), fresh_nonce()],
            )
            .map_err(|e| store.sql_failed(e))?;
        Ok(store)
    }

    /// Opens an existing index. Shadow tables that are not what its declaration says are
    /// recorded as damage, reported on every use but DROP TABLE.
    pub fn open(
        db: Connection,
        schema: &str,
        table: &str,
        dimensions: usize,
        quantizer: Quantizer,
        columns: &[Column],
    ) -> Store {
        let mut store = Store::new(db, schema, table, dimensions, quantizer, columns);
        store.damage = store
            .check_info()
            .and_then(|_| store.check_metadata_tables())
            .err();
        store
    }

    /// The SQL that creates the metadata shadow table (and the index of the pending rows'
    /// partitions).
    fn metadata_tables(&self) -> String {
        if self.columns.is_empty() {
            return String::new();
        }
        let columns: String = self
            .columns
            .iter()
            .map(|c| format!(", {} {}", quote(&c.name), c.kind.sql()))
            .collect();
        let mut sql = format!(
            "CREATE TABLE {}(rowid INTEGER PRIMARY KEY{columns});",
            self.shadow("metadata")
        );
        if self.partitioned() {
            sql += &format!(
                "CREATE INDEX {index} ON {table}(part, rowid);",
                index = format!(
                    "{}.{}",
                    quote(&self.schema),
                    quote(&format!("{}_pending_part", self.table))
                ),
                table = quote(&format!("{}_pending", self.table)),
            );
        }
        sql
    }

    /// The metadata table has the declared columns (a declaration edited by hand, or shadow
    /// tables of another version, would otherwise be misread).
    fn check_metadata_tables(&self) -> Result<(), String> {
        if self.columns.is_empty() {
            return Ok(());
        }
        let names: Vec<String> = self.columns.iter().map(|c| quote(&c.name)).collect();
        let mut sql = format!(
            "SELECT rowid, {} FROM {} LIMIT 0",
            names.join(", "),
            self.shadow("metadata")
        );
        if self.partitioned() {
            sql += &format!("; SELECT part FROM {} LIMIT 0", self.shadow("pending"));
        }
        for statement in sql.split("; ") {
            self.db.prepare(statement).map_err(|e| {
                format!("its shadow tables do not hold the declared columns ({e}); {REBUILD}")
            })?;
        }
        Ok(())
    }

    fn partitioned(&self) -> bool {
        self.columns
            .iter()
            .any(|c| c.role == ColumnRole::PartitionKey)
    }

    fn check_info(&self) -> Result<(), String> {
        let store = self;
        let row: Option<(i64, i64, String)> = store
            .db
            .query_row(
                &format!(
                    "SELECT format, dimensions, quantizer FROM {} WHERE id = 1",
                    store.shadow("info")
                ),
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(|e| {
                format!(
                    "its shadow table {} cannot be read ({e}); {REBUILD}",
                    store.shadow("info")
                )
            })?;
        let Some((format, stored_dimensions, stored_quantizer)) = row else {
            return Err(format!(
                "its shadow table {} is empty; {REBUILD}",
                store.shadow("info")
            ));
        };
        if format != FORMAT {
            return Err(format!("it was written in storage format {format}, and this version of the extension reads format {FORMAT}; rebuild it with this version (DROP TABLE, CREATE VIRTUAL TABLE, INSERT)"));
        }
        if stored_dimensions != self.dimensions as i64 || stored_quantizer != self.quantizer.name()
        {
            return Err(format!(
                "its shadow tables hold {stored_dimensions}-dimensional {stored_quantizer} codes while its declaration says float[{}] with quantizer={}; {REBUILD}",
                self.dimensions,
                self.quantizer.name()
            ));
        }
        Ok(())
    }

    fn new(
        db: Connection,
        schema: &str,
        table: &str,
        dimensions: usize,
        quantizer: Quantizer,
        columns: &[Column],
    ) -> Store {
        Store {
            db,
            schema: schema.to_string(),
            table: table.to_string(),
            dimensions,
            quantizer,
            code_bytes: quantizer.code_bytes(dimensions),
            cache: Cache::default(),
            columns: columns.to_vec(),
            damage: None,
        }
    }

    /// Drops the shadow tables (DROP TABLE of the index).
    pub fn destroy(&self) -> Result<(), String> {
        let sql: String = SUFFIXES
            .iter()
            .map(|s| format!("DROP TABLE IF EXISTS {};", self.shadow(s)))
            .collect();
        self.db.execute_batch(&sql).map_err(|e| self.sql_failed(e))
    }

    /// `"schema"."table_suffix"`, quoted.
    fn shadow(&self, suffix: &str) -> String {
        format!(
            "{}.{}",
            quote(&self.schema),
            quote(&format!("{}_{suffix}", self.table))
        )
    }

    // ---- writes ----

    /// Adds a row with its `values` (one per declared column, checked); `rowid` None takes one
    /// more than the largest. `replace` (INSERT OR REPLACE) first removes a row with the same
    /// rowid. Returns the rowid.
    pub fn insert(
        &mut self,
        rowid: Option<i64>,
        vector: &[f32],
        values: &[Value],
        replace: bool,
    ) -> Result<i64, String> {
        self.intact()?;
        let rowid = match rowid {
            Some(rowid) => rowid,
            None => self.largest_rowid()?.map_or(Ok(1), |r| {
                r.checked_add(1)
                    .ok_or("the largest rowid is taken; give each row its rowid".to_string())
            })?,
        };
        if self.location(rowid)?.is_some() {
            if !replace {
                return Err(format!("UNIQUE constraint failed: rowid {rowid} is already in {}; delete it first, or use INSERT OR REPLACE", self.table));
            }
            self.delete(rowid)?;
        }
        let blob = crate::vector_to_blob(vector);
        let part = self.partition_of(values);
        match &part {
            None => self
                .prepared(&format!(
                    "INSERT INTO {}(rowid, vector) VALUES (?1, ?2)",
                    self.shadow("pending")
                ))?
                .execute(params![rowid, blob]),
            Some(part) => self
                .prepared(&format!(
                    "INSERT INTO {}(rowid, vector, part) VALUES (?1, ?2, ?3)",
                    self.shadow("pending")
                ))?
                .execute(params![rowid, blob, part]),
        }
        .map_err(|e| self.sql_failed(e))?;
        if !self.columns.is_empty() {
            let marks: String = (0..values.len()).map(|i| format!(", ?{}", i + 2)).collect();
            let names: String = self
                .columns
                .iter()
                .map(|c| format!(", {}", quote(&c.name)))
                .collect();
            let mut statement = self.prepared(&format!(
                "INSERT INTO {}(rowid{names}) VALUES (?1{marks})",
                self.shadow("metadata")
            ))?;
            statement
                .raw_bind_parameter(1, rowid)
                .map_err(|e| e.to_string())?;
            for (i, value) in values.iter().enumerate() {
                statement
                    .raw_bind_parameter(i + 2, value)
                    .map_err(|e| e.to_string())?;
            }
            statement.raw_execute().map_err(|e| self.sql_failed(e))?;
        }
        let pending = self.bump_generation(1)?;
        match part {
            None if pending >= CHUNK_SLOTS as i64 => self.fold_pending(None)?,
            Some(part) if self.pending_in(&part)? >= CHUNK_SLOTS as i64 => {
                self.fold_pending(Some(&part))?
            }
            _ => {}
        }
        Ok(rowid)
    }

    /// A row's partition: its partition keys' values as a JSON array, or None when the index
    /// has no partition keys.
    fn partition_of(&self, values: &[Value]) -> Option<String> {
        if !self.partitioned() {
            return None;
        }
        let keys: Vec<serde_json::Value> = self
            .columns
            .iter()
            .zip(values)
            .filter(|(c, _)| c.role == ColumnRole::PartitionKey)
            .map(|(_, v)| match v {
                Value::Integer(i) => serde_json::Value::from(*i),
                Value::Text(t) => serde_json::Value::from(t.as_str()),
                _ => serde_json::Value::Null,
            })
            .collect();
        Some(serde_json::Value::from(keys).to_string())
    }

    fn pending_in(&self, part: &str) -> Result<i64, String> {
        self.prepared(&format!(
            "SELECT count(*) FROM {} WHERE part = ?1",
            self.shadow("pending")
        ))?
        .query_row([part], |r| r.get(0))
        .map_err(|e| self.sql_failed(e))
    }

    /// The value of declared column `column` of a row (NULL for a row without one).
    pub fn value(&self, rowid: i64, column: usize) -> Result<Value, String> {
        let name = &self.columns[column].name;
        self.prepared(&format!(
            "SELECT {} FROM {} WHERE rowid = ?1",
            quote(name),
            self.shadow("metadata")
        ))?
        .query_row([rowid], |r| r.get(0))
        .optional()
        .map(|v| v.unwrap_or(Value::Null))
        .map_err(|e| self.sql_failed(e))
    }

    /// Every declared column's value of a row.
    pub fn values(&self, rowid: i64) -> Result<Vec<Value>, String> {
        (0..self.columns.len())
            .map(|c| self.value(rowid, c))
            .collect()
    }

    /// Removes a row; a rowid that is not there is no error (SQLite found it first).
    pub fn delete(&mut self, rowid: i64) -> Result<(), String> {
        self.intact()?;
        if !self.columns.is_empty() {
            self.prepared(&format!(
                "DELETE FROM {} WHERE rowid = ?1",
                self.shadow("metadata")
            ))?
            .execute([rowid])
            .map_err(|e| self.sql_failed(e))?;
        }
        match self.location(rowid)? {
            None => Ok(()),
            Some(Location::Pending) => {
                self.prepared(&format!(
                    "DELETE FROM {} WHERE rowid = ?1",
                    self.shadow("pending")
                ))?
                .execute([rowid])
                .map_err(|e| self.sql_failed(e))?;
                self.bump_generation(-1).map(|_| ())
            }
            Some(Location::Chunk { chunk_id, slot }) => {
                let mut live: Vec<u8> = self
                    .prepared(&format!(
                        "SELECT live FROM {} WHERE chunk_id = ?1",
                        self.shadow("chunks")
                    ))?
                    .query_row([chunk_id], |r| r.get(0))
                    .map_err(|e| self.damaged("chunks", chunk_id, &e.to_string()))?;
                if live.len() != CHUNK_SLOTS || slot >= CHUNK_SLOTS {
                    return Err(self.damaged(
                        "chunks",
                        chunk_id,
                        "its live flags have the wrong size",
                    ));
                }
                live[slot] = 0;
                if live.iter().all(|&l| l == 0) {
                    for suffix in ["chunks", "codes"] {
                        self.prepared(&format!(
                            "DELETE FROM {} WHERE chunk_id = ?1",
                            self.shadow(suffix)
                        ))?
                        .execute([chunk_id])
                        .map_err(|e| self.sql_failed(e))?;
                    }
                    let first_block = chunk_id.saturating_mul(BLOCKS_PER_CHUNK);
                    self.prepared(&format!(
                        "DELETE FROM {} WHERE block_id BETWEEN ?1 AND ?2",
                        self.shadow("vectors")
                    ))?
                    .execute([
                        first_block,
                        first_block.saturating_add(BLOCKS_PER_CHUNK - 1),
                    ])
                    .map_err(|e| self.sql_failed(e))?;
                } else {
                    self.prepared(&format!(
                        "UPDATE {} SET live = ?1, version = ?2 WHERE chunk_id = ?3",
                        self.shadow("chunks")
                    ))?
                    .execute(params![live, fresh_nonce(), chunk_id])
                    .map_err(|e| self.sql_failed(e))?;
                }
                self.prepared(&format!(
                    "DELETE FROM {} WHERE rowid = ?1",
                    self.shadow("rowids")
                ))?
                .execute([rowid])
                .map_err(|e| self.sql_failed(e))?;
                self.bump_generation(0).map(|_| ())
            }
        }
    }

    /// Moves the `CHUNK_SLOTS` pending rows with the smallest rowids (of partition `part`,
    /// when the index has partition keys) into a new chunk.
    fn fold_pending(&mut self, part: Option<&str>) -> Result<(), String> {
        let rows: Vec<(i64, Vec<u8>)> = match part {
            None => self
                .prepared(&format!(
                    "SELECT rowid, vector FROM {} ORDER BY rowid LIMIT {CHUNK_SLOTS}",
                    self.shadow("pending")
                ))?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .and_then(|rows| rows.collect()),
            Some(part) => self
                .prepared(&format!(
                    "SELECT rowid, vector FROM {} WHERE part = ?1 ORDER BY rowid LIMIT {CHUNK_SLOTS}",
                    self.shadow("pending")
                ))?
                .query_map([part], |r| Ok((r.get(0)?, r.get(1)?)))
                .and_then(|rows| rows.collect()),
        }
        .map_err(|e| self.sql_failed(e))?;
        if rows.len() < CHUNK_SLOTS {
            return Ok(());
        }
        let mut rowids = Vec::with_capacity(CHUNK_SLOTS * 8);
        let mut codes = vec![0u8; CHUNK_SLOTS * self.code_bytes];
        let mut vectors = Vec::with_capacity(CHUNK_SLOTS * self.dimensions * 4);
        for ((rowid, blob), code) in rows.iter().zip(codes.chunks_exact_mut(self.code_bytes)) {
            let vector = self.stored_vector(blob, "pending", *rowid)?;
            let unit_vector = unit(&vector)
                .ok_or_else(|| self.damaged("pending", *rowid, "its vector is all zeros"))?;
            self.quantizer.encode(&unit_vector, code);
            rowids.extend_from_slice(&rowid.to_le_bytes());
            vectors.extend_from_slice(blob);
        }
        let chunk_id: i64 = self
            .prepared(&format!(
                "INSERT INTO {}(nonce, version, live) VALUES (?1, ?2, ?3) RETURNING chunk_id",
                self.shadow("chunks")
            ))?
            .query_row(
                params![fresh_nonce(), fresh_nonce(), vec![1u8; CHUNK_SLOTS]],
                |r| r.get(0),
            )
            .map_err(|e| self.sql_failed(e))?;
        self.prepared(&format!(
            "INSERT INTO {}(chunk_id, rowids, codes) VALUES (?1, ?2, ?3)",
            self.shadow("codes")
        ))?
        .execute(params![chunk_id, rowids, codes])
        .map_err(|e| self.sql_failed(e))?;
        let block_bytes = BLOCK_VECTORS * self.dimensions * 4;
        for (block, bytes) in vectors.chunks_exact(block_bytes).enumerate() {
            self.prepared(&format!(
                "INSERT INTO {}(block_id, vectors) VALUES (?1, ?2)",
                self.shadow("vectors")
            ))?
            .execute(params![chunk_id * BLOCKS_PER_CHUNK + block as i64, bytes])
            .map_err(|e| self.sql_failed(e))?;
        }
        let insert_sql = format!(
            "INSERT INTO {}(rowid, chunk_id, slot) VALUES (?1, ?2, ?3)",
            self.shadow("rowids")
        );
        let delete_sql = format!("DELETE FROM {} WHERE rowid = ?1", self.shadow("pending"));
        for (slot, (rowid, _)) in rows.iter().enumerate() {
            self.prepared(&insert_sql)?
                .execute(params![rowid, chunk_id, slot as i64])
                .map_err(|e| self.sql_failed(e))?;
            self.prepared(&delete_sql)?
                .execute([rowid])
                .map_err(|e| self.sql_failed(e))?;
        }
        self.bump_generation(-(CHUNK_SLOTS as i64)).map(|_| ())
    }

    /// Draws a new generation and adds `pending_change` to the pending count; returns the count.
    fn bump_generation(&mut self, pending_change: i64) -> Result<i64, String> {
        self.prepared(&format!(
            "UPDATE {} SET generation = ?1, pending = pending + ?2 WHERE id = 1 RETURNING pending",
            self.shadow("info")
        ))?
        .query_row(params![fresh_nonce(), pending_change], |r| r.get(0))
        .map_err(|e| self.sql_failed(e))
    }

    // ---- reads ----

    pub fn location(&mut self, rowid: i64) -> Result<Option<Location>, String> {
        self.intact()?;
        let in_chunk: Option<(i64, i64)> = self
            .prepared(&format!(
                "SELECT chunk_id, slot FROM {} WHERE rowid = ?1",
                self.shadow("rowids")
            ))?
            .query_row([rowid], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
            .map_err(|e| self.sql_failed(e))?;
        if let Some((chunk_id, slot)) = in_chunk {
            let slot = usize::try_from(slot)
                .ok()
                .filter(|s| *s < CHUNK_SLOTS)
                .ok_or_else(|| self.damaged("rowids", rowid, "its slot is out of range"))?;
            return Ok(Some(Location::Chunk { chunk_id, slot }));
        }
        let pending: Option<i64> = self
            .prepared(&format!(
                "SELECT rowid FROM {} WHERE rowid = ?1",
                self.shadow("pending")
            ))?
            .query_row([rowid], |r| r.get(0))
            .optional()
            .map_err(|e| self.sql_failed(e))?;
        Ok(pending.map(|_| Location::Pending))
    }

    /// Every rowid, in order (a scan without MATCH).
    pub fn rowids(&mut self) -> Result<Vec<i64>, String> {
        self.intact()?;
        self.prepared(&format!(
            "SELECT rowid FROM {} UNION ALL SELECT rowid FROM {} ORDER BY 1",
            self.shadow("rowids"),
            self.shadow("pending")
        ))?
        .query_map([], |r| r.get(0))
        .and_then(|rows| rows.collect())
        .map_err(|e| self.sql_failed(e))
    }

    /// The float32 vector of a row, as inserted.
    pub fn vector(&mut self, rowid: i64, location: Location) -> Result<Vec<f32>, String> {
        self.intact()?;
        match location {
            Location::Pending => {
                let blob: Vec<u8> = self
                    .prepared(&format!(
                        "SELECT vector FROM {} WHERE rowid = ?1",
                        self.shadow("pending")
                    ))?
                    .query_row([rowid], |r| r.get(0))
                    .map_err(|e| self.damaged("pending", rowid, &e.to_string()))?;
                self.stored_vector(&blob, "pending", rowid)
            }
            Location::Chunk { chunk_id, slot } => {
                let mut out = self.chunk_vectors(&[(chunk_id, slot)])?;
                Ok(out.pop().unwrap_or_default())
            }
        }
    }

    /// The float32 vectors at these places (in any order; sorted ones read fastest).
    fn chunk_vectors(&mut self, places: &[(i64, usize)]) -> Result<Vec<Vec<f32>>, String> {
        let bytes = self.dimensions * 4;
        let table = format!("{}_vectors", self.table);
        let mut out = Vec::with_capacity(places.len());
        let mut blob: Option<rusqlite::blob::Blob<'_>> = None;
        let mut open_block = None;
        let mut buffer = vec![0u8; bytes];
        for &(chunk_id, slot) in places {
            let block = chunk_id
                .checked_mul(BLOCKS_PER_CHUNK)
                .and_then(|b| b.checked_add((slot / BLOCK_VECTORS) as i64))
                .ok_or_else(|| self.damaged("chunks", chunk_id, "its id is out of range"))?;
            if open_block != Some(block) {
                let opened = match blob.as_mut() {
                    Some(b) => b.reopen(block),
                    None => self
                        .db
                        .blob_open(self.schema.as_str(), table.as_str(), "vectors", block, true)
                        .map(|b| {
                            blob = Some(b);
                        }),
                };
                opened.map_err(|e| self.damaged("vectors", block, &e.to_string()))?;
                open_block = Some(block);
            }
            let b = blob.as_ref().expect("opened above");
            if b.size() as usize != BLOCK_VECTORS * bytes {
                return Err(self.damaged("vectors", block, "it holds a BLOB of the wrong size"));
            }
            b.read_at_exact(&mut buffer, (slot % BLOCK_VECTORS) * bytes)
                .map_err(|e| self.sql_failed(e))?;
            out.push(self.stored_vector(&buffer, "vectors", block)?);
        }
        Ok(out)
    }

    fn largest_rowid(&mut self) -> Result<Option<i64>, String> {
        self.prepared(&format!("SELECT max(m) FROM (SELECT max(rowid) AS m FROM {} UNION ALL SELECT max(rowid) FROM {})", self.shadow("rowids"), self.shadow("pending")))?
            .query_row([], |r| r.get(0))
            .map_err(|e| self.sql_failed(e))
    }

    /// Parses a stored vector; a wrong size or a non-finite value means the shadow tables were
    /// edited by hand or by someone else, and is reported, never trusted.
    fn stored_vector(&self, blob: &[u8], suffix: &str, id: i64) -> Result<Vec<f32>, String> {
        match audiotext_core::index::blob::vector_from_blob(blob) {
            Ok(v) if v.len() == self.dimensions => Ok(v),
            Ok(v) => Err(self.damaged(
                suffix,
                id,
                &format!(
                    "a vector has {} dimensions instead of {}",
                    v.len(),
                    self.dimensions
                ),
            )),
            Err(e) => {
                Err(self.damaged(suffix, id, &format!("a stored vector is not valid ({e:?})")))
            }
        }
    }

    fn damaged(&self, suffix: &str, id: i64, what: &str) -> String {
        format!(
            "its shadow table {} is damaged at {id} ({what}); {REBUILD}",
            self.shadow(suffix)
        )
    }

    /// An SQL error on the shadow tables; a missing table or a value of the wrong type means
    /// they were changed outside the index, and the message says so.
    fn sql_failed(&self, e: rusqlite::Error) -> String {
        use rusqlite::Error::*;
        let damaged = matches!(
            e,
            InvalidColumnType(..)
                | FromSqlConversionFailure(..)
                | QueryReturnedNoRows
                | IntegralValueOutOfRange(..)
        ) || e.to_string().contains("no such");
        if damaged {
            format!("reading its shadow tables: {e}; {REBUILD}")
        } else {
            e.to_string()
        }
    }

    /// Refuses to use shadow tables found damaged when the table was connected.
    fn intact(&self) -> Result<(), String> {
        match &self.damage {
            Some(damage) => Err(damage.clone()),
            None => Ok(()),
        }
    }

    fn prepared(&self, sql: &str) -> Result<rusqlite::CachedStatement<'_>, String> {
        self.db.prepare_cached(sql).map_err(|e| self.sql_failed(e))
    }

    // ---- search ----

    /// The `k` rows nearest to `query` by cosine distance among those `filter` allows, nearest
    /// first (ties by rowid).
    pub fn search(
        &mut self,
        query: &[f32],
        k: usize,
        rescore: usize,
        filter: &RowidFilter,
        metadata: &MetadataConditions,
    ) -> Result<Vec<Hit>, String> {
        self.intact()?;
        let query = unit(query).ok_or(
            "the query vector is all zeros, so no cosine distance to it exists; pass an embedding",
        )?;
        let mut hits = match filter.named_rowids() {
            // A few rows named: score them exactly rather than scan every code.
            Some(rowids) if rowids.len() <= rescore.max(k) => {
                let rowids = self.passing(&rowids, metadata)?;
                self.exact_hits(&query, &rowids)?
            }
            _ => self.scanned_hits(&query, k, rescore, filter, metadata)?,
        };
        if let Some(bad) = hits.iter().find(|h| !h.distance.is_finite()) {
            return Err(format!("row {} has no finite distance to the query (a zero vector in the index); {REBUILD}", bad.rowid));
        }
        hits.sort_unstable_by(|a, b| {
            a.distance
                .total_cmp(&b.distance)
                .then(a.rowid.cmp(&b.rowid))
        });
        hits.truncate(k);
        Ok(hits)
    }

    /// The exact distance of each of these rows that exists.
    fn exact_hits(&mut self, query: &[f32], rowids: &[i64]) -> Result<Vec<Hit>, String> {
        let mut hits = Vec::with_capacity(rowids.len());
        for &rowid in rowids {
            if let Some(location) = self.location(rowid)? {
                let vector = self.vector(rowid, location)?;
                hits.push(Hit {
                    rowid,
                    distance: cosine_distance(&vector, query),
                });
            }
        }
        Ok(hits)
    }

    /// The scan of every code (the rows `filter` and `metadata` allow), its best `rescore`
    /// candidates scored exactly, and the pending rows.
    fn scanned_hits(
        &mut self,
        query: &[f32],
        k: usize,
        rescore: usize,
        filter: &RowidFilter,
        metadata: &MetadataConditions,
    ) -> Result<Vec<Hit>, String> {
        self.refresh()?;
        let (chunk_bits, pending_bits) = match self.allowed_slots(filter, metadata)? {
            Some((chunks, pending)) => (Some(chunks), Some(pending)),
            None => (None, None),
        };
        let mut hits: Vec<Hit> = self
            .cache
            .pending
            .iter()
            .enumerate()
            .filter(|(i, _)| pending_bits.as_ref().is_none_or(|b| bit(b, *i)))
            .map(|(_, (rowid, v))| Hit {
                rowid: *rowid,
                distance: cosine_distance(v, query),
            })
            .collect();
        let mut query_code = vec![0u8; self.code_bytes];
        self.quantizer.encode(query, &mut query_code);
        let chunks: Vec<&CodeChunk> = self.cache.chunks.iter().map(|c| &c.codes).collect();
        let candidates = top_candidates(
            &chunks,
            self.quantizer,
            self.code_bytes,
            &query_code,
            rescore.max(k),
            chunk_bits.as_deref(),
        );
        // Read each chunk's vectors in chunk order, then score exactly.
        let mut places: Vec<(i64, usize, i64)> = candidates
            .iter()
            .map(|c| {
                let chunk = &self.cache.chunks[c.chunk];
                (chunk.id, c.slot, chunk.codes.rowids[c.slot])
            })
            .collect();
        places.sort_unstable();
        let at: Vec<(i64, usize)> = places
            .iter()
            .map(|&(chunk_id, slot, _)| (chunk_id, slot))
            .collect();
        let vectors = self.chunk_vectors(&at)?;
        for (&(_, _, rowid), vector) in places.iter().zip(&vectors) {
            hits.push(Hit {
                rowid,
                distance: cosine_distance(vector, query),
            });
        }
        Ok(hits)
    }

    /// The filterable columns' kinds, in order (the index `MetadataConditions` use).
    fn filterable_kinds(&self) -> Vec<ColumnKind> {
        self.columns
            .iter()
            .filter(|c| c.filters())
            .map(|c| c.kind)
            .collect()
    }

    /// The filterable values of these rows, in order (NULLs for a row without any).
    fn filterable_values(&self, rowids: &[i64]) -> Result<Vec<Vec<Value>>, String> {
        let names: Vec<String> = self
            .columns
            .iter()
            .filter(|c| c.filters())
            .map(|c| quote(&c.name))
            .collect();
        let mut statement = self.prepared(&format!(
            "SELECT {} FROM {} WHERE rowid = ?1",
            names.join(", "),
            self.shadow("metadata")
        ))?;
        rowids
            .iter()
            .map(|rowid| {
                statement
                    .query_row([rowid], |r| {
                        (0..names.len()).map(|i| r.get::<_, Value>(i)).collect()
                    })
                    .optional()
                    .map(|row| row.unwrap_or_else(|| vec![Value::Null; names.len()]))
                    .map_err(|e| self.sql_failed(e))
            })
            .collect()
    }

    /// The slots of every chunk, and of the pending rows, that `filter` and `metadata` allow
    /// (`None`: every one); reads the values of chunks not read before.
    #[allow(clippy::type_complexity)]
    fn allowed_slots(
        &mut self,
        filter: &RowidFilter,
        metadata: &MetadataConditions,
    ) -> Result<Option<(Vec<SlotBits>, SlotBits)>, String> {
        if metadata.is_empty() && filter.allows_all() {
            return Ok(None);
        }
        let kinds = self.filterable_kinds();
        if !metadata.is_empty() {
            for c in 0..self.cache.chunks.len() {
                if self.cache.chunks[c].metadata.is_none() {
                    let rows = self.filterable_values(&self.cache.chunks[c].codes.rowids)?;
                    let loaded = ChunkMetadata::new(&kinds, &rows, &mut self.cache.dictionaries);
                    self.cache.chunks[c].metadata = Some(loaded);
                }
            }
            if self.cache.pending_metadata.is_none() {
                let rowids: Vec<i64> = self.cache.pending.iter().map(|(r, _)| *r).collect();
                let rows = self.filterable_values(&rowids)?;
                let loaded = ChunkMetadata::new(&kinds, &rows, &mut self.cache.dictionaries);
                self.cache.pending_metadata = Some(loaded);
            }
        }
        let prepared: Vec<Prepared> = metadata
            .iter()
            .map(|(column, filters)| {
                super::metadata::prepare(*column, kinds[*column], filters, &self.cache.dictionaries)
            })
            .collect();
        let named = filter.named_rowids();
        let slots = |rowids: &[i64], values: Option<&ChunkMetadata>| {
            let mut bits = filter.slots(rowids, named.as_deref());
            if let Some(values) = values {
                values.allowed_slots(rowids.len(), &prepared, &mut bits);
            }
            bits
        };
        use rayon::prelude::*;
        let chunks = self
            .cache
            .chunks
            .par_iter()
            .map(|chunk| slots(&chunk.codes.rowids, chunk.metadata.as_ref()))
            .collect();
        let pending_rowids: Vec<i64> = self.cache.pending.iter().map(|(r, _)| *r).collect();
        let pending = slots(&pending_rowids, self.cache.pending_metadata.as_ref());
        Ok(Some((chunks, pending)))
    }

    /// Those of `rowids` whose values pass `metadata`.
    fn passing(
        &mut self,
        rowids: &[i64],
        metadata: &MetadataConditions,
    ) -> Result<Vec<i64>, String> {
        if metadata.is_empty() {
            return Ok(rowids.to_vec());
        }
        let kinds = self.filterable_kinds();
        let rows = self.filterable_values(rowids)?;
        let values = ChunkMetadata::new(&kinds, &rows, &mut self.cache.dictionaries);
        let prepared: Vec<Prepared> = metadata
            .iter()
            .map(|(column, filters)| {
                super::metadata::prepare(*column, kinds[*column], filters, &self.cache.dictionaries)
            })
            .collect();
        let mut bits = super::metadata::all_slots(rowids.len());
        values.allowed_slots(rowids.len(), &prepared, &mut bits);
        Ok(rowids
            .iter()
            .enumerate()
            .filter(|(i, _)| bit(&bits, *i))
            .map(|(_, r)| *r)
            .collect())
    }

    /// Brings the memory copy up to date with the database (see the module's comment).
    fn refresh(&mut self) -> Result<(), String> {
        let generation: i64 = self
            .prepared(&format!(
                "SELECT generation FROM {} WHERE id = 1",
                self.shadow("info")
            ))?
            .query_row([], |r| r.get(0))
            .map_err(|e| format!("reading {}: {e}", self.shadow("info")))?;
        if self.cache.generation == Some(generation) {
            return Ok(());
        }
        self.cache.generation = None;
        let listed: Vec<(i64, i64, i64)> = self
            .prepared(&format!(
                "SELECT chunk_id, nonce, version FROM {} ORDER BY chunk_id",
                self.shadow("chunks")
            ))?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .and_then(|rows| rows.collect())
            .map_err(|e| self.sql_failed(e))?;
        let mut kept: HashMap<i64, CachedChunk> = std::mem::take(&mut self.cache.chunks)
            .into_iter()
            .map(|c| (c.id, c))
            .collect();
        let mut chunks = Vec::with_capacity(listed.len());
        for (id, nonce, version) in listed {
            let chunk = match kept.remove(&id) {
                Some(mut chunk) if chunk.nonce == nonce => {
                    if chunk.version != version {
                        chunk.codes.live = self.live_flags(id)?;
                        chunk.version = version;
                    }
                    chunk
                }
                _ => self.load_chunk(id, nonce, version)?,
            };
            chunks.push(chunk);
        }
        let pending: Vec<(i64, Vec<u8>)> = self
            .prepared(&format!(
                "SELECT rowid, vector FROM {}",
                self.shadow("pending")
            ))?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .and_then(|rows| rows.collect())
            .map_err(|e| self.sql_failed(e))?;
        self.cache.pending = pending
            .into_iter()
            .map(|(rowid, blob): (i64, Vec<u8>)| {
                Ok((rowid, self.stored_vector(&blob, "pending", rowid)?))
            })
            .collect::<Result<_, String>>()?;
        self.cache.chunks = chunks;
        self.cache.pending_metadata = None;
        self.cache.generation = Some(generation);
        Ok(())
    }

    fn live_flags(&self, chunk_id: i64) -> Result<Vec<u8>, String> {
        let live: Vec<u8> = self
            .prepared(&format!(
                "SELECT live FROM {} WHERE chunk_id = ?1",
                self.shadow("chunks")
            ))?
            .query_row([chunk_id], |r| r.get(0))
            .map_err(|e| self.damaged("chunks", chunk_id, &e.to_string()))?;
        if live.len() != CHUNK_SLOTS {
            return Err(self.damaged("chunks", chunk_id, "its live flags have the wrong size"));
        }
        Ok(live)
    }

    fn load_chunk(&self, id: i64, nonce: i64, version: i64) -> Result<CachedChunk, String> {
        let (rowid_bytes, codes): (Vec<u8>, Vec<u8>) = self
            .prepared(&format!(
                "SELECT rowids, codes FROM {} WHERE chunk_id = ?1",
                self.shadow("codes")
            ))?
            .query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(|e| self.damaged("codes", id, &e.to_string()))?;
        if rowid_bytes.len() != CHUNK_SLOTS * 8 || codes.len() != CHUNK_SLOTS * self.code_bytes {
            return Err(self.damaged("codes", id, "its rowids or codes have the wrong size"));
        }
        let rowids = rowid_bytes
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")))
            .collect();
        Ok(CachedChunk {
            id,
            nonce,
            version,
            metadata: None,
            codes: CodeChunk {
                rowids,
                live: self.live_flags(id)?,
                codes,
            },
        })
    }

    /// The connection's handle (for `sqlite3_vtab_on_conflict`).
    ///
    /// # Safety
    /// Use it only on this thread, while the table exists.
    pub unsafe fn handle(&self) -> *mut rusqlite::ffi::sqlite3 {
        self.db.handle()
    }
}

/// `1 - cos(vector, unit_query)`, computed the same way for every row, so equal vectors get
/// equal distances wherever they are stored.
fn cosine_distance(vector: &[f32], unit_query: &[f32]) -> f32 {
    1.0 - dot_f32(vector, unit_query) / dot_f32(vector, vector).sqrt()
}

/// A random 64-bit number, new on every call.
fn fresh_nonce() -> i64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    RandomState::new().hash_one(COUNTER.fetch_add(1, Ordering::Relaxed)) as i64
}

/// An SQL identifier in double quotes.
pub fn quote(identifier: &str) -> String {
    format!("\"{}\"", identifier.replace('"', "\"\""))
}
