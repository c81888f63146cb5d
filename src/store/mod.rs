//! The metadata store: every record berthd must not lose (sandboxes,
//! containers, images, name reservations) in one embedded transactional
//! database (redb) under the root directory.
//!
//! The database is opened once per berthd; a second berthd on the same root
//! is refused. Every write is a transaction committed to disk before it
//! returns, so a `kill -9` at any moment leaves either the old or the new
//! state, never a torn one. Records are JSON, so the store stays readable
//! across versions and in a debugger; the schema version in the `meta`
//! table guards against an older berthd opening a newer store.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Version of the record layout; bumped with a migration whenever a table
/// or record changes incompatibly.
pub const SCHEMA_VERSION: u32 = 1;

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const SCHEMA_KEY: &str = "schema_version";

/// The tables of the store. Keys are object ids (or names for [`Table::Names`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// Pod sandboxes by id.
    Sandboxes,
    /// Containers by id.
    Containers,
    /// Images by id (config digest).
    Images,
    /// Name reservations: sandbox and container names → the id holding them.
    Names,
    /// Layer snapshots by chain id.
    Snapshots,
}

impl Table {
    const ALL: [Table; 5] = [
        Table::Sandboxes,
        Table::Containers,
        Table::Images,
        Table::Names,
        Table::Snapshots,
    ];

    fn name(self) -> &'static str {
        match self {
            Table::Sandboxes => "sandboxes",
            Table::Containers => "containers",
            Table::Images => "images",
            Table::Names => "names",
            Table::Snapshots => "snapshots",
        }
    }

    fn definition(self) -> TableDefinition<'static, &'static str, &'static [u8]> {
        TableDefinition::new(self.name())
    }
}

/// What went wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process (another berthd) has the database open.
    #[error(
        "metadata store {path} is in use by another process (is another berthd running on this root?)"
    )]
    Locked {
        /// The database file.
        path: PathBuf,
    },
    /// The database was written by a newer berthd.
    #[error(
        "metadata store {path} has schema version {found}; this berthd understands up to {SCHEMA_VERSION}"
    )]
    NewerSchema {
        /// The database file.
        path: PathBuf,
        /// The version found.
        found: u32,
    },
    /// A name is already reserved by another object.
    #[error("name {name:?} is reserved by {holder}")]
    NameTaken {
        /// The name asked for.
        name: String,
        /// The id that holds it.
        holder: String,
    },
    /// A record could not be encoded or decoded.
    #[error("record {key:?} in table {table}: {source}")]
    Record {
        /// Table name.
        table: &'static str,
        /// Record key.
        key: String,
        /// The codec error.
        source: serde_json::Error,
    },
    /// Creating the store's directory failed.
    #[error("cannot create {path}: {source}")]
    Io {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The database engine failed (I/O error, corruption).
    #[error("metadata store: {0}")]
    Database(Box<redb::Error>),
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Database(Box::new(e.into()))
            }
        }
    )*};
}
from_redb!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// The metadata store. Cheap to clone; all clones share one database.
#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (creating when absent) the store at `path`, checks its schema
    /// version and makes sure every table exists.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let db = Database::create(path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Locked {
                path: path.to_path_buf(),
            },
            other => other.into(),
        })?;
        let tx = db.begin_write()?;
        {
            let mut meta = tx.open_table(META)?;
            let found = meta
                .get(SCHEMA_KEY)?
                .map(|v| decode_version(v.value()))
                .transpose()
                .map_err(|source| StoreError::Record {
                    table: "meta",
                    key: SCHEMA_KEY.into(),
                    source,
                })?;
            match found {
                Some(found) if found > SCHEMA_VERSION => {
                    return Err(StoreError::NewerSchema {
                        path: path.to_path_buf(),
                        found,
                    });
                }
                Some(found) if found == SCHEMA_VERSION => {}
                // A fresh store, or an older one: version 1 is the first, so
                // there is nothing to migrate yet.
                _ => {
                    let v = SCHEMA_VERSION.to_string();
                    meta.insert(SCHEMA_KEY, v.as_bytes())?;
                }
            }
            for table in Table::ALL {
                tx.open_table(table.definition())?;
            }
        }
        tx.commit()?;
        Ok(Store { db: Arc::new(db) })
    }

    /// The schema version recorded in the store.
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        let tx = self.db.begin_read()?;
        let meta = tx.open_table(META)?;
        let value = meta.get(SCHEMA_KEY)?.ok_or_else(|| StoreError::Record {
            table: "meta",
            key: SCHEMA_KEY.into(),
            source: serde::de::Error::custom("missing"),
        })?;
        decode_version(value.value()).map_err(|source| StoreError::Record {
            table: "meta",
            key: SCHEMA_KEY.into(),
            source,
        })
    }

    /// Reads one record.
    pub fn get<T: DeserializeOwned>(
        &self,
        table: Table,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(table.definition())?;
        t.get(key)?
            .map(|v| decode(table, key, v.value()))
            .transpose()
    }

    /// Reads every record of a table, in key order.
    pub fn list<T: DeserializeOwned>(&self, table: Table) -> Result<Vec<(String, T)>, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(table.definition())?;
        let mut out = Vec::new();
        for entry in t.iter()? {
            let (k, v) = entry?;
            let key = k.value().to_string();
            let record = decode(table, &key, v.value())?;
            out.push((key, record));
        }
        Ok(out)
    }

    /// Writes one record (insert or replace) and commits.
    pub fn put<T: Serialize>(&self, table: Table, key: &str, record: &T) -> Result<(), StoreError> {
        self.transaction(|tx| tx.put(table, key, record))
    }

    /// Deletes one record and commits; `false` when there was none.
    pub fn delete(&self, table: Table, key: &str) -> Result<bool, StoreError> {
        self.transaction(|tx| tx.delete(table, key))
    }

    /// Reserves `name` for `id`. Reserving a name again for the same id
    /// succeeds; a name held by another id is [`StoreError::NameTaken`].
    pub fn reserve_name(&self, name: &str, id: &str) -> Result<(), StoreError> {
        self.transaction(|tx| tx.reserve_name(name, id))
    }

    /// Releases `name` if `id` holds it; a name held by another id is left
    /// alone.
    pub fn release_name(&self, name: &str, id: &str) -> Result<(), StoreError> {
        self.transaction(|tx| {
            if tx.get::<String>(Table::Names, name)?.as_deref() == Some(id) {
                tx.delete(Table::Names, name)?;
            }
            Ok(())
        })
    }

    /// Runs `f` in one write transaction: all of its changes are committed
    /// together when it returns `Ok`, none when it returns `Err`.
    pub fn transaction<R>(
        &self,
        f: impl FnOnce(&mut Transaction<'_>) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let tx = self.db.begin_write()?;
        let result = f(&mut Transaction { tx: &tx })?;
        tx.commit()?;
        Ok(result)
    }
}

/// A write transaction in progress; see [`Store::transaction`].
pub struct Transaction<'a> {
    tx: &'a redb::WriteTransaction,
}

impl Transaction<'_> {
    /// Reads one record, seeing this transaction's own writes.
    pub fn get<T: DeserializeOwned>(
        &self,
        table: Table,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        let t = self.tx.open_table(table.definition())?;
        let value = t.get(key)?;
        value.map(|v| decode(table, key, v.value())).transpose()
    }

    /// Writes one record (insert or replace).
    pub fn put<T: Serialize>(
        &mut self,
        table: Table,
        key: &str,
        record: &T,
    ) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(record).map_err(|source| StoreError::Record {
            table: table.name(),
            key: key.into(),
            source,
        })?;
        let mut t = self.tx.open_table(table.definition())?;
        t.insert(key, bytes.as_slice())?;
        Ok(())
    }

    /// Deletes one record; `false` when there was none.
    pub fn delete(&mut self, table: Table, key: &str) -> Result<bool, StoreError> {
        let mut t = self.tx.open_table(table.definition())?;
        let removed = t.remove(key)?.is_some();
        Ok(removed)
    }

    /// Reserves `name` for `id` within this transaction.
    pub fn reserve_name(&mut self, name: &str, id: &str) -> Result<(), StoreError> {
        match self.get::<String>(Table::Names, name)? {
            Some(holder) if holder != id => Err(StoreError::NameTaken {
                name: name.into(),
                holder,
            }),
            Some(_) => Ok(()),
            None => self.put(Table::Names, name, &id),
        }
    }
}

fn decode<T: DeserializeOwned>(table: Table, key: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Record {
        table: table.name(),
        key: key.into(),
        source,
    })
}

fn decode_version(bytes: &[u8]) -> Result<u32, serde_json::Error> {
    serde_json::from_slice(bytes)
}

#[cfg(test)]
mod tests;
