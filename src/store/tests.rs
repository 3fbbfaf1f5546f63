//! The conformance suite against the in-memory reference store.

use super::conformance;
use super::memory::MemoryStore;

#[test]
fn memory_store_conforms() {
    conformance::run_all(&|| Box::new(MemoryStore::new()));
}
