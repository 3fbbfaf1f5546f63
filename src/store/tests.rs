//! The conformance suite against the in-memory reference store and the SQLite store.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::conformance;
use super::memory::MemoryStore;
use super::sqlite::SqliteStore;

#[test]
fn memory_store_conforms() {
    conformance::run_all(&|| Box::new(MemoryStore::new()));
}

#[test]
fn sqlite_store_conforms() {
    let dir = tempfile::tempdir().expect("temp dir");
    let n = AtomicUsize::new(0);
    conformance::run_all(&|| {
        let path = dir
            .path()
            .join(format!("s{}.db", n.fetch_add(1, Ordering::Relaxed)));
        Box::new(SqliteStore::open(&path).unwrap_or_else(|e| panic!("{e}")))
    });
}
