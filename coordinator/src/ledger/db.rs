//! The ledger's two databases behind one small interface: the embedded SQLite file (the
//! default) and PostgreSQL (for a fleet side past one machine).
//!
//! The ledger's SQL is written once, in the dialect both speak (`INSERT ... ON CONFLICT`,
//! `CASE`, `CAST(SUM(..) AS BIGINT)`), with SQLite's `?N` placeholders; on PostgreSQL they
//! become `$N` and each statement is prepared once per connection. Values cross as [`Val`]
//! and come back as [`Row`]s of integers, text and bytes, so every decoder is the ledger's
//! own and returns [`LedgerError::Corrupt`] on a value of the wrong kind.
//!
//! Atomic sections ([`Db::atomic`]) are savepoints inside an open group or transaction; on
//! PostgreSQL, where a savepoint needs a transaction, one outside a group is its own
//! `BEGIN ... COMMIT`. A failed section is rolled back to its savepoint, the rest stands.

use super::LedgerError;
use bytes::BytesMut;
use postgres::types::{IsNull, ToSql, Type};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;

/// One parameter of a statement.
#[derive(Debug, Clone, Copy)]
pub(super) enum Val<'a> {
    /// A 64-bit integer (a `u64` crosses with its bits, see `u`).
    Int(i64),
    /// Text.
    Text(&'a str),
    /// Bytes.
    Blob(&'a [u8]),
    /// SQL `NULL`.
    Null,
}

impl From<i64> for Val<'_> {
    fn from(v: i64) -> Self {
        Val::Int(v)
    }
}

impl From<u64> for Val<'_> {
    fn from(v: u64) -> Self {
        Val::Int(v as i64)
    }
}

impl From<u32> for Val<'_> {
    fn from(v: u32) -> Self {
        Val::Int(i64::from(v))
    }
}

impl From<bool> for Val<'_> {
    fn from(v: bool) -> Self {
        Val::Int(i64::from(v))
    }
}

impl<'a> From<&'a str> for Val<'a> {
    fn from(v: &'a str) -> Self {
        Val::Text(v)
    }
}

impl<'a> From<&'a String> for Val<'a> {
    fn from(v: &'a String) -> Self {
        Val::Text(v)
    }
}

impl<'a> From<&'a [u8]> for Val<'a> {
    fn from(v: &'a [u8]) -> Self {
        Val::Blob(v)
    }
}

impl<'a> From<&'a Vec<u8>> for Val<'a> {
    fn from(v: &'a Vec<u8>) -> Self {
        Val::Blob(v)
    }
}

impl<'a> From<Option<&'a str>> for Val<'a> {
    fn from(v: Option<&'a str>) -> Self {
        v.map_or(Val::Null, Val::Text)
    }
}

/// The parameters of a statement: `p![a, b]` is `&[Val::from(a), Val::from(b)]`.
macro_rules! p {
    ($($v:expr),* $(,)?) => {
        &[$($crate::ledger::db::Val::from($v)),*][..]
    };
}
pub(super) use p;

impl rusqlite::ToSql for Val<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(match self {
            Val::Int(v) => ToSqlOutput::from(*v),
            Val::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
            Val::Blob(b) => ToSqlOutput::Borrowed(ValueRef::Blob(b)),
            Val::Null => ToSqlOutput::Borrowed(ValueRef::Null),
        })
    }
}

impl ToSql for Val<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Val::Null => Ok(IsNull::Yes),
            Val::Int(v) if *ty == Type::INT4 => i32::try_from(*v)?.to_sql(ty, out),
            Val::Int(v) if *ty == Type::INT2 => i16::try_from(*v)?.to_sql(ty, out),
            Val::Int(v) if *ty == Type::BOOL => (*v != 0).to_sql(ty, out),
            Val::Int(v) => v.to_sql(ty, out),
            Val::Text(s) => s.to_sql(ty, out),
            Val::Blob(b) => b.to_sql(ty, out),
        }
    }

    fn accepts(ty: &Type) -> bool {
        [
            Type::INT2,
            Type::INT4,
            Type::INT8,
            Type::BOOL,
            Type::TEXT,
            Type::VARCHAR,
            Type::BYTEA,
        ]
        .contains(ty)
    }

    postgres::types::to_sql_checked!();
}

/// A column value read back.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Owned {
    Null,
    Int(i64),
    Text(String),
    Blob(Vec<u8>),
}

/// One result row.
#[derive(Debug, Clone)]
pub(super) struct Row(Vec<Owned>);

impl Row {
    fn at(&self, i: usize) -> Result<&Owned, LedgerError> {
        self.0
            .get(i)
            .ok_or_else(|| LedgerError::Corrupt(format!("no column {i} in a result row")))
    }

    fn kind(&self, i: usize, want: &str) -> LedgerError {
        LedgerError::Corrupt(format!("column {i} holds {:?}, not {want}", self.0.get(i)))
    }

    /// Column `i` as an integer.
    pub(super) fn int(&self, i: usize) -> Result<i64, LedgerError> {
        match self.at(i)? {
            Owned::Int(v) => Ok(*v),
            _ => Err(self.kind(i, "an integer")),
        }
    }

    /// Column `i` as a `u64` stored with its bits.
    pub(super) fn u64(&self, i: usize) -> Result<u64, LedgerError> {
        Ok(self.int(i)? as u64)
    }

    /// Column `i` as a `u32`, refused when out of range.
    pub(super) fn u32(&self, i: usize) -> Result<u32, LedgerError> {
        u32::try_from(self.int(i)?).map_err(|_| self.kind(i, "a 32-bit count"))
    }

    /// Column `i` as an integer or `NULL`.
    pub(super) fn opt_int(&self, i: usize) -> Result<Option<i64>, LedgerError> {
        match self.at(i)? {
            Owned::Null => Ok(None),
            Owned::Int(v) => Ok(Some(*v)),
            _ => Err(self.kind(i, "an integer or NULL")),
        }
    }

    /// Column `i` as text.
    pub(super) fn text(&self, i: usize) -> Result<String, LedgerError> {
        match self.at(i)? {
            Owned::Text(s) => Ok(s.clone()),
            _ => Err(self.kind(i, "text")),
        }
    }

    /// Column `i` as text or `NULL`.
    pub(super) fn opt_text(&self, i: usize) -> Result<Option<String>, LedgerError> {
        match self.at(i)? {
            Owned::Null => Ok(None),
            Owned::Text(s) => Ok(Some(s.clone())),
            _ => Err(self.kind(i, "text or NULL")),
        }
    }

    /// Column `i` as bytes.
    pub(super) fn blob(&self, i: usize) -> Result<Vec<u8>, LedgerError> {
        match self.at(i)? {
            Owned::Blob(b) => Ok(b.clone()),
            _ => Err(self.kind(i, "bytes")),
        }
    }

    fn from_sqlite(row: &rusqlite::Row<'_>, columns: usize) -> rusqlite::Result<Self> {
        use rusqlite::types::ValueRef;
        let mut values = Vec::with_capacity(columns);
        for i in 0..columns {
            values.push(match row.get_ref(i)? {
                ValueRef::Null => Owned::Null,
                ValueRef::Integer(v) => Owned::Int(v),
                // No column of the ledger is a float; a float here is a foreign file.
                ValueRef::Real(v) => Owned::Text(v.to_string()),
                ValueRef::Text(t) => Owned::Text(String::from_utf8_lossy(t).into_owned()),
                ValueRef::Blob(b) => Owned::Blob(b.to_vec()),
            });
        }
        Ok(Row(values))
    }

    fn from_postgres(row: &postgres::Row) -> Result<Self, LedgerError> {
        let mut values = Vec::with_capacity(row.len());
        for (i, column) in row.columns().iter().enumerate() {
            let ty = column.type_();
            let v = if *ty == Type::INT8 {
                row.try_get::<_, Option<i64>>(i)?.map(Owned::Int)
            } else if *ty == Type::INT4 {
                row.try_get::<_, Option<i32>>(i)?
                    .map(|v| Owned::Int(i64::from(v)))
            } else if *ty == Type::INT2 {
                row.try_get::<_, Option<i16>>(i)?
                    .map(|v| Owned::Int(i64::from(v)))
            } else if *ty == Type::BOOL {
                row.try_get::<_, Option<bool>>(i)?
                    .map(|v| Owned::Int(i64::from(v)))
            } else if *ty == Type::BYTEA {
                row.try_get::<_, Option<Vec<u8>>>(i)?.map(Owned::Blob)
            } else if [Type::TEXT, Type::VARCHAR, Type::NAME, Type::BPCHAR].contains(ty) {
                row.try_get::<_, Option<String>>(i)?.map(Owned::Text)
            } else {
                return Err(LedgerError::Corrupt(format!(
                    "column {} is of type {ty}, which the ledger does not read",
                    column.name()
                )));
            };
            values.push(v.unwrap_or(Owned::Null));
        }
        Ok(Row(values))
    }
}

/// A PostgreSQL connection and the statements prepared on it.
struct Pg {
    client: postgres::Client,
    prepared: HashMap<&'static str, postgres::Statement>,
}

impl Pg {
    fn statement(&mut self, sql: &'static str) -> Result<postgres::Statement, LedgerError> {
        if let Some(s) = self.prepared.get(sql) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(&dollar_placeholders(sql))?;
        self.prepared.insert(sql, s.clone());
        Ok(s)
    }
}

impl std::fmt::Debug for Pg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pg")
            .field("prepared", &self.prepared.len())
            .finish_non_exhaustive()
    }
}

/// `?N` placeholders as PostgreSQL's `$N` (the ledger's SQL has no `?` anywhere else).
fn dollar_placeholders(sql: &str) -> String {
    sql.replace('?', "$")
}

/// Runs `f`, a call of the blocking PostgreSQL client, which drives a runtime of its own:
/// inside the coordinator's (multi-threaded) runtime it runs as a blocking section, so that
/// runtime goes on with its other tasks; outside any runtime it just runs.
pub(super) fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

fn pg_params<'v>(params: &'v [Val<'_>]) -> Vec<&'v (dyn ToSql + Sync)> {
    params.iter().map(|v| v as &(dyn ToSql + Sync)).collect()
}

#[derive(Debug)]
enum Backend {
    Sqlite(rusqlite::Connection),
    Postgres(Box<RefCell<Pg>>),
}

/// A connection to the ledger's database.
#[derive(Debug)]
pub(super) struct Db {
    backend: Backend,
    /// Open groups and atomic sections, outermost first.
    depth: Cell<u32>,
}

impl Db {
    /// Wraps an open SQLite connection.
    pub(super) fn sqlite(conn: rusqlite::Connection) -> Self {
        Self {
            backend: Backend::Sqlite(conn),
            depth: Cell::new(0),
        }
    }

    /// Wraps an open PostgreSQL connection.
    pub(super) fn postgres(client: postgres::Client) -> Self {
        Self {
            backend: Backend::Postgres(Box::new(RefCell::new(Pg {
                client,
                prepared: HashMap::new(),
            }))),
            depth: Cell::new(0),
        }
    }

    /// Whether this is the PostgreSQL ledger.
    pub(super) fn is_postgres(&self) -> bool {
        matches!(self.backend, Backend::Postgres(_))
    }

    /// Runs statements without parameters or results (schema, transaction control).
    pub(super) fn batch(&self, sql: &str) -> Result<(), LedgerError> {
        match &self.backend {
            Backend::Sqlite(c) => c.execute_batch(sql)?,
            Backend::Postgres(pg) => blocking(|| pg.borrow_mut().client.batch_execute(sql))?,
        }
        Ok(())
    }

    /// Runs one statement; returns the rows it changed.
    pub(super) fn exec(&self, sql: &'static str, params: &[Val<'_>]) -> Result<u64, LedgerError> {
        match &self.backend {
            Backend::Sqlite(c) => {
                let n = c
                    .prepare_cached(sql)?
                    .execute(rusqlite::params_from_iter(params))?;
                Ok(n as u64)
            }
            Backend::Postgres(pg) => {
                let mut pg = pg.borrow_mut();
                blocking(|| {
                    let stmt = pg.statement(sql)?;
                    Ok(pg.client.execute(&stmt, &pg_params(params))?)
                })
            }
        }
    }

    /// Runs one query; returns its rows.
    pub(super) fn query(
        &self,
        sql: &'static str,
        params: &[Val<'_>],
    ) -> Result<Vec<Row>, LedgerError> {
        match &self.backend {
            Backend::Sqlite(c) => {
                let mut stmt = c.prepare_cached(sql)?;
                let columns = stmt.column_count();
                let rows = stmt
                    .query_map(rusqlite::params_from_iter(params), |r| {
                        Row::from_sqlite(r, columns)
                    })?
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(rows)
            }
            Backend::Postgres(pg) => {
                let mut pg = pg.borrow_mut();
                let rows = blocking(|| {
                    let stmt = pg.statement(sql)?;
                    Ok::<_, LedgerError>(pg.client.query(&stmt, &pg_params(params))?)
                })?;
                rows.iter().map(Row::from_postgres).collect()
            }
        }
    }

    /// The one row of a query that always returns one (an aggregate).
    pub(super) fn query_one(
        &self,
        sql: &'static str,
        params: &[Val<'_>],
    ) -> Result<Row, LedgerError> {
        self.query_opt(sql, params)?
            .ok_or_else(|| LedgerError::Corrupt("an aggregate query returned no row".into()))
    }

    /// The first row of a query, if any.
    pub(super) fn query_opt(
        &self,
        sql: &'static str,
        params: &[Val<'_>],
    ) -> Result<Option<Row>, LedgerError> {
        Ok(self.query(sql, params)?.into_iter().next())
    }

    /// Opens a group (a transaction the engine commits with [`Db::commit`]).
    pub(super) fn begin(&self) -> Result<(), LedgerError> {
        self.batch(if self.is_postgres() {
            "BEGIN"
        } else {
            "BEGIN IMMEDIATE"
        })?;
        self.depth.set(self.depth.get().saturating_add(1));
        Ok(())
    }

    /// Commits the open group.
    pub(super) fn commit(&self) -> Result<(), LedgerError> {
        self.batch("COMMIT")?;
        self.depth.set(self.depth.get().saturating_sub(1));
        Ok(())
    }

    /// Runs `f` all or nothing: a savepoint (or, on PostgreSQL outside any transaction, a
    /// transaction of its own), released when `f` returns `Ok`, rolled back otherwise.
    pub(super) fn atomic<T>(
        &self,
        f: impl FnOnce(&Db) -> Result<T, LedgerError>,
    ) -> Result<T, LedgerError> {
        let depth = self.depth.get();
        let own_transaction = depth == 0 && self.is_postgres();
        let name = format!("sp{depth}");
        if own_transaction {
            self.batch("BEGIN")?;
        } else {
            self.batch(&format!("SAVEPOINT {name}"))?;
        }
        self.depth.set(depth.saturating_add(1));
        let result = f(self);
        self.depth.set(depth);
        match result {
            Ok(v) => {
                if own_transaction {
                    self.batch("COMMIT")?;
                } else {
                    self.batch(&format!("RELEASE {name}"))?;
                }
                Ok(v)
            }
            Err(e) => {
                let undo = if own_transaction {
                    self.batch("ROLLBACK")
                } else {
                    self.batch(&format!("ROLLBACK TO {name}; RELEASE {name}"))
                };
                if let Err(u) = undo {
                    tracing::error!(error = %u, "rolling back a failed ledger write failed");
                }
                Err(e)
            }
        }
    }
}
