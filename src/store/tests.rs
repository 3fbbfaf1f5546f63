//! The conformance suite against the in-memory reference store (the SQLite and PostgreSQL
//! stores run it in tests/store_conformance.rs).

use super::conformance;
use super::memory::MemoryStore;

#[test]
fn memory_store_conforms() {
    conformance::run_all(&|| Box::new(MemoryStore::new()));
}
