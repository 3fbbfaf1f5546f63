//! The study store conformance suite against the SQLite, journal and PostgreSQL backends,
//! through `store::open` as users reach them. PostgreSQL needs `DSNN_HPO_TEST_POSTGRES` (a
//! postgresql:// URL of a database the tests may create schemas in).

use std::sync::atomic::{AtomicUsize, Ordering};

use dsnn_hpo::store::postgres::TestSchemas;
use dsnn_hpo::store::{self, conformance};

#[test]
fn sqlite_store_conforms() {
    let dir = tempfile::tempdir().expect("temp dir");
    let n = AtomicUsize::new(0);
    conformance::run_all(&|| {
        let path = dir
            .path()
            .join(format!("s{}.db", n.fetch_add(1, Ordering::Relaxed)));
        store::open(&format!("sqlite://{}", path.display())).unwrap_or_else(|e| panic!("{e}"))
    });
}

#[test]
fn journal_store_conforms() {
    let dir = tempfile::tempdir().expect("temp dir");
    let n = AtomicUsize::new(0);
    conformance::run_all(&|| {
        let folder = dir
            .path()
            .join(format!("j{}", n.fetch_add(1, Ordering::Relaxed)));
        store::open(&format!("journal://{}", folder.display())).unwrap_or_else(|e| panic!("{e}"))
    });
}

#[test]
fn postgres_store_conforms() {
    let Some(db) = TestSchemas::from_env() else {
        return;
    };
    conformance::run_all(&|| store::open(&db.fresh_url()).unwrap_or_else(|e| panic!("{e}")));
}
