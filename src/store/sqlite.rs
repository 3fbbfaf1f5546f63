//! The SQLite store: one file shared by the worker processes of one machine.
//!
//! WAL mode lets readers go on while one process writes; every writing transaction starts with
//! `BEGIN IMMEDIATE`, so it takes the write lock first and never fails half-way on an upgrade
//! (the database lock is the study lock). Waiting writers retry for [`BUSY_TIMEOUT`]. The clock
//! that judges leases is SQLite's `unixepoch('subsec')`: every process on the machine shares it.
//! SQLite's locks do not work on network filesystems, so a file there is warned about.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{
    Connection, ErrorCode, OptionalExtension, Transaction, TransactionBehavior, params,
};

use super::{
    Claim, Decide, Decision, Event, EventKind, Lease, LeaseSettings, NewStudy, Owner, Running,
    SCHEMA_VERSION, Store, StoreError, StudyRecord, TrialLine, from_json, known_studies, new_token,
    sql_int, to_json,
};
use crate::opt::Trial;

/// How long a writer waits for another process's transaction before giving up.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (schema_version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS studies (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    study TEXT NOT NULL,
    created_unix_s REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    study_id INTEGER NOT NULL REFERENCES studies(id),
    kind TEXT NOT NULL,
    trial_id INTEGER NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_study_seq ON events (study_id, seq);
CREATE TABLE IF NOT EXISTS trials (
    study_id INTEGER NOT NULL REFERENCES studies(id),
    trial_id INTEGER NOT NULL,
    trial TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('running', 'queued', 'done')),
    attempt INTEGER NOT NULL,
    stale INTEGER NOT NULL,
    token TEXT,
    owner TEXT,
    heartbeat_at REAL,
    PRIMARY KEY (study_id, trial_id)
);
CREATE INDEX IF NOT EXISTS trials_study_state ON trials (study_id, state, trial_id);
CREATE TABLE IF NOT EXISTS checkpoints (
    study_id INTEGER NOT NULL REFERENCES studies(id),
    trial_id INTEGER NOT NULL,
    bytes BLOB NOT NULL,
    PRIMARY KEY (study_id, trial_id)
);
CREATE TABLE IF NOT EXISTS progress (
    study_id INTEGER NOT NULL REFERENCES studies(id),
    trial_id INTEGER NOT NULL,
    bytes BLOB NOT NULL,
    PRIMARY KEY (study_id, trial_id)
);
";

const NOW: &str = "SELECT unixepoch('subsec')";

/// Statements run per claim, heartbeat and finish: each must find its rows through an index
/// (checked by a test), so their cost does not grow with the study.
const SILENT: &str = "SELECT trial_id, trial, stale, owner FROM trials
    WHERE study_id = ?1 AND state = 'running' AND heartbeat_at < ?2 ORDER BY trial_id";
const NEXT_QUEUED: &str = "SELECT trial_id, trial, attempt FROM trials
    WHERE study_id = ?1 AND state = 'queued' ORDER BY trial_id LIMIT 1";
const EVENTS_AFTER: &str =
    "SELECT seq, body FROM events WHERE study_id = ?1 AND seq > ?2 ORDER BY seq";
const ASKED: &str = "SELECT EXISTS (SELECT 1 FROM trials WHERE study_id = ?1 AND trial_id = ?2)";
const HEARTBEAT: &str = "UPDATE trials SET heartbeat_at = unixepoch('subsec')
    WHERE study_id = ?1 AND trial_id = ?2 AND state = 'running' AND token = ?3";
const FINISH: &str = "UPDATE trials SET state = 'done', token = NULL, owner = NULL,
    heartbeat_at = NULL
    WHERE study_id = ?1 AND trial_id = ?2 AND state = 'running' AND token = ?3";
const RELEASE: &str = "UPDATE trials SET state = 'queued', token = NULL, owner = NULL,
    heartbeat_at = NULL
    WHERE study_id = ?1 AND trial_id = ?2 AND state = 'running' AND token = ?3";
const RUNNING: &str = "SELECT trial, attempt, token, owner, unixepoch('subsec') - heartbeat_at
    FROM trials WHERE study_id = ?1 AND state = 'running' ORDER BY trial_id";
const QUEUED: &str =
    "SELECT trial FROM trials WHERE study_id = ?1 AND state = 'queued' ORDER BY trial_id";
#[cfg(test)]
const INDEXED: &[&str] = &[
    SILENT,
    NEXT_QUEUED,
    EVENTS_AFTER,
    ASKED,
    HEARTBEAT,
    FINISH,
    RELEASE,
    RUNNING,
    QUEUED,
];

/// A connection to a study store file.
pub struct SqliteStore {
    conn: Connection,
    path: PathBuf,
    url: String,
    /// Study name -> (row id, lease settings): a study never changes once created.
    studies: HashMap<String, (i64, LeaseSettings)>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("url", &self.url)
            .finish()
    }
}

impl SqliteStore {
    /// Runs `sql` (parameters: study, trial, token) on a lease's trial in one transaction,
    /// then `and_then` (parameters: study, trial) when the lease was still held; `true` then.
    fn update_held(
        &mut self,
        sql: &str,
        lease: &Lease,
        and_then: Option<(&str, &[u8])>,
    ) -> Result<bool, StoreError> {
        let (sid, _) = self.study_id(&lease.study)?;
        let trial_id = sql_int(&self.url, lease.trial.id)?;
        let url = self.url.clone();
        let be = |e| backend(&url, e);
        let tx = self.write_tx()?;
        let n = tx
            .prepare_cached(sql)
            .and_then(|mut st| st.execute(params![sid, trial_id, lease.token]))
            .map_err(be)?;
        if n != 1 {
            return Ok(false);
        }
        if let Some((then, bytes)) = and_then {
            tx.prepare_cached(then)
                .and_then(|mut st| st.execute(params![sid, trial_id, bytes]))
                .map_err(be)?;
        }
        tx.commit().map_err(be)?;
        Ok(true)
    }

    /// Opens (or creates) the store file at `path`; its folder must exist.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let url = format!("sqlite://{}", path.display());
        let fail = |message: String| StoreError::Backend {
            url: url.clone(),
            message,
        };
        if let Some(parent) = path.parent()
            && !parent.as_os_str().is_empty()
            && !parent.is_dir()
        {
            return Err(fail(format!(
                "the folder {} does not exist; create it first",
                parent.display()
            )));
        }
        if path.is_dir() {
            return Err(fail("is a folder, not a file".into()));
        }
        warn_on_network_fs(path);
        let be = |e| backend(&url, e);
        let conn = Connection::open(path).map_err(be)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(be)?;
        conn.set_prepared_statement_cache_capacity(64);
        let mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(be)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(fail(format!(
                "cannot switch to write-ahead logging (journal mode stays {mode}); \
                 keep the file on a local disk"
            )));
        }
        // In WAL mode NORMAL never corrupts the file; a power cut may lose the last commits,
        // together with the workers that made them (their trials are re-run).
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(be)?;
        conn.pragma_update(None, "foreign_keys", true).map_err(be)?;
        let mut store = SqliteStore {
            conn,
            path: path.to_path_buf(),
            url,
            studies: HashMap::new(),
        };
        store.init_schema()?;
        Ok(store)
    }

    fn be(&self) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
        |e| backend(&self.url, e)
    }

    /// Creates the tables of a new file, checks the version of an existing one.
    fn init_schema(&mut self) -> Result<(), StoreError> {
        let url = self.url.clone();
        let be = |e| backend(&url, e);
        let has_meta: bool = self
            .conn
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta')",
                [],
                |r| r.get(0),
            )
            .map_err(be)?;
        if !has_meta {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(be)?;
            tx.execute_batch(SCHEMA).map_err(be)?;
            tx.execute(
                "INSERT INTO meta (schema_version) SELECT ?1 WHERE NOT EXISTS (SELECT 1 FROM meta)",
                [SCHEMA_VERSION],
            )
            .map_err(be)?;
            tx.commit().map_err(be)?;
        }
        let found: Option<i64> = self
            .conn
            .query_row("SELECT max(schema_version) FROM meta", [], |r| r.get(0))
            .map_err(be)?;
        match found {
            Some(v) if v > i64::from(SCHEMA_VERSION) => Err(StoreError::NewerSchema {
                url,
                found: u32::try_from(v).unwrap_or(u32::MAX),
            }),
            Some(_) => Ok(()),
            None => Err(StoreError::Backend {
                url,
                message: "the table meta holds no schema version: not a dsnn-hpo store, or a \
                          damaged one"
                    .into(),
            }),
        }
    }

    fn no_such_study(&self, name: &str) -> StoreError {
        let known = self
            .conn
            .prepare_cached("SELECT name FROM studies ORDER BY id")
            .and_then(|mut st| {
                st.query_map([], |r| r.get::<_, String>(0))?
                    .collect::<Result<Vec<_>, _>>()
            })
            .map(|names| known_studies(names.iter().map(String::as_str)))
            .unwrap_or_else(|e| format!("unknown: {e}"));
        StoreError::NoSuchStudy {
            url: self.url.clone(),
            name: name.into(),
            known,
        }
    }

    /// The row id and lease settings of study `name`.
    fn study_id(&mut self, name: &str) -> Result<(i64, LeaseSettings), StoreError> {
        if let Some(&found) = self.studies.get(name) {
            return Ok(found);
        }
        let row: Option<(i64, String)> = self
            .conn
            .prepare_cached("SELECT id, study FROM studies WHERE name = ?1")
            .and_then(|mut st| {
                st.query_row([name], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()
            })
            .map_err(self.be())?;
        let Some((id, json)) = row else {
            return Err(self.no_such_study(name));
        };
        let study: NewStudy = from_json(&self.url, "studies", &json)?;
        self.studies.insert(name.into(), (id, study.leases));
        Ok((id, study.leases))
    }

    fn write_tx(&mut self) -> Result<Transaction<'_>, StoreError> {
        let url = &self.url;
        self.conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| backend(url, e))
    }
}

/// `e` as a store error, with what to do about the usual causes.
fn backend(url: &str, e: rusqlite::Error) -> StoreError {
    let code = match &e {
        rusqlite::Error::SqliteFailure(f, _) => Some(f.code),
        _ => None,
    };
    let message = match code {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => format!(
            "{e}: another process held the database longer than the busy timeout ({} s); \
             with many workers on one machine that can happen, with workers on several \
             machines use a postgresql:// store",
            BUSY_TIMEOUT.as_secs()
        ),
        Some(ErrorCode::NotADatabase) => format!("{e}: the file is not a dsnn-hpo study store"),
        Some(ErrorCode::ReadOnly | ErrorCode::PermissionDenied) => {
            format!("{e}: the file or its folder is not writable by this user")
        }
        Some(ErrorCode::CannotOpen) => {
            format!("{e}: check that the folder exists and that this user may write there")
        }
        Some(ErrorCode::DiskFull) => format!("{e}: the disk is full"),
        _ => e.to_string(),
    };
    StoreError::Backend {
        url: url.into(),
        message,
    }
}

fn insert_event(
    tx: &Transaction<'_>,
    url: &str,
    study_id: i64,
    kind: &EventKind,
) -> Result<(), StoreError> {
    let (name, trial_id) = match kind {
        EventKind::Ask { trial, .. } => ("ask", trial.id),
        EventKind::Tell { line } => ("tell", line.id),
    };
    let trial_id = sql_int(url, trial_id)?;
    let body = to_json(url, kind)?;
    tx.prepare_cached("INSERT INTO events (study_id, kind, trial_id, body) VALUES (?1, ?2, ?3, ?4)")
        .and_then(|mut st| st.execute(params![study_id, name, trial_id, body]))
        .map(|_| ())
        .map_err(|e| backend(url, e))
}

/// The study's events after `since`, in order.
fn read_events(
    conn: &Connection,
    url: &str,
    study_id: i64,
    since: u64,
) -> Result<Vec<Event>, StoreError> {
    let since = i64::try_from(since).unwrap_or(i64::MAX);
    let rows: Vec<(i64, String)> = conn
        .prepare_cached(EVENTS_AFTER)
        .and_then(|mut st| {
            st.query_map(params![study_id, since], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect()
        })
        .map_err(|e| backend(url, e))?;
    rows.into_iter()
        .map(|(seq, body)| {
            Ok(Event {
                seq: seq.unsigned_abs(),
                kind: from_json(url, "events", &body)?,
            })
        })
        .collect()
}

impl Store for SqliteStore {
    fn url(&self) -> String {
        self.url.clone()
    }

    fn connect_again(&self) -> Result<Box<dyn Store>, StoreError> {
        Ok(Box::new(SqliteStore::open(&self.path)?))
    }

    fn create_study(&mut self, study: &NewStudy) -> Result<(), StoreError> {
        let json = to_json(&self.url, study)?;
        let url = self.url.clone();
        let be = |e| backend(&url, e);
        let tx = self.write_tx()?;
        let taken: bool = tx
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM studies WHERE name = ?1)")
            .and_then(|mut st| st.query_row([&study.name], |r| r.get(0)))
            .map_err(be)?;
        if taken {
            return Err(StoreError::StudyExists {
                url,
                name: study.name.clone(),
                hint: "choose another name".into(),
            });
        }
        tx.prepare_cached(
            "INSERT INTO studies (name, study, created_unix_s) VALUES (?1, ?2, unixepoch('subsec'))",
        )
        .and_then(|mut st| st.execute(params![study.name, json]))
        .map_err(be)?;
        tx.commit().map_err(be)
    }

    fn study(&mut self, name: &str) -> Result<StudyRecord, StoreError> {
        let row: Option<(String, f64)> = self
            .conn
            .prepare_cached("SELECT study, created_unix_s FROM studies WHERE name = ?1")
            .and_then(|mut st| {
                st.query_row([name], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()
            })
            .map_err(self.be())?;
        let Some((json, created_unix_s)) = row else {
            return Err(self.no_such_study(name));
        };
        Ok(StudyRecord {
            study: from_json(&self.url, "studies", &json)?,
            created_unix_s,
        })
    }

    fn studies(&mut self) -> Result<Vec<String>, StoreError> {
        self.conn
            .prepare_cached("SELECT name FROM studies ORDER BY id")
            .and_then(|mut st| st.query_map([], |r| r.get(0))?.collect())
            .map_err(self.be())
    }

    fn claim(
        &mut self,
        study: &str,
        owner: &Owner,
        since: u64,
        decide: &mut Decide<'_>,
    ) -> Result<Claim, StoreError> {
        let (sid, leases) = self.study_id(study)?;
        let owner_json = to_json(&self.url, owner)?;
        let url = self.url.clone();
        let be = |e| backend(&url, e);
        let tx = self.write_tx()?;
        let now: f64 = tx.query_row(NOW, [], |r| r.get(0)).map_err(be)?;

        // Take away the leases silent for longer than the grace period.
        let silent: Vec<(i64, String, u32, Option<String>)> = tx
            .prepare_cached(SILENT)
            .and_then(|mut st| {
                st.query_map(params![sid, now - leases.grace_s], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })?
                .collect()
            })
            .map_err(be)?;
        for (trial_id, trial_json, stale, last_owner) in silent {
            let stale = stale + 1;
            let state = if stale > leases.max_retries {
                let trial: Trial = from_json(&url, "trials", &trial_json)?;
                let last_owner: Owner = match last_owner {
                    Some(json) => from_json(&url, "trials", &json)?,
                    None => Owner {
                        host: "unknown".into(),
                        pid: 0,
                        name: "unknown".into(),
                    },
                };
                let line = TrialLine::failed_silent(&trial, stale, &last_owner, now);
                insert_event(
                    &tx,
                    &url,
                    sid,
                    &EventKind::Tell {
                        line: Box::new(line),
                    },
                )?;
                "done"
            } else {
                "queued"
            };
            tx.prepare_cached(
                "UPDATE trials SET state = ?3, stale = ?4, token = NULL, owner = NULL,
                 heartbeat_at = NULL WHERE study_id = ?1 AND trial_id = ?2",
            )
            .and_then(|mut st| st.execute(params![sid, trial_id, state, stale]))
            .map_err(be)?;
        }

        // A queued trial goes first.
        let queued: Option<(i64, String, u32)> = tx
            .prepare_cached(NEXT_QUEUED)
            .and_then(|mut st| {
                st.query_row([sid], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                    .optional()
            })
            .map_err(be)?;
        if let Some((trial_id, trial_json, attempt)) = queued {
            let trial: Trial = from_json(&url, "trials", &trial_json)?;
            let token = new_token();
            let attempt = attempt + 1;
            tx.prepare_cached(
                "UPDATE trials SET state = 'running', attempt = ?3, token = ?4, owner = ?5,
                 heartbeat_at = ?6 WHERE study_id = ?1 AND trial_id = ?2",
            )
            .and_then(|mut st| st.execute(params![sid, trial_id, attempt, token, owner_json, now]))
            .map_err(be)?;
            tx.commit().map_err(be)?;
            return Ok(Claim::Run(Lease {
                study: study.into(),
                trial,
                attempt,
                token,
                owner: owner.clone(),
            }));
        }

        // Otherwise the optimizer decides, having replayed what it has not seen.
        let events = read_events(&tx, &url, sid, since)?;
        let (trial, state) = match decide(&events).map_err(StoreError::Decide)? {
            Decision::Wait => {
                tx.commit().map_err(be)?;
                return Ok(Claim::Wait);
            }
            Decision::Done => {
                tx.commit().map_err(be)?;
                return Ok(Claim::Done);
            }
            Decision::Run(trial, state) => (trial, state),
        };
        let trial_id = sql_int(&url, trial.id)?;
        let asked: bool = tx
            .prepare_cached(ASKED)
            .and_then(|mut st| st.query_row(params![sid, trial_id], |r| r.get(0)))
            .map_err(be)?;
        if asked {
            return Err(StoreError::Decide(format!(
                "the optimizer asked for trial {} again (it was asked before)",
                trial.id
            )));
        }
        let kind = EventKind::Ask {
            trial: trial.clone(),
            state,
        };
        insert_event(&tx, &url, sid, &kind)?;
        let token = new_token();
        let trial_json = to_json(&url, &trial)?;
        tx.prepare_cached(
            "INSERT INTO trials (study_id, trial_id, trial, state, attempt, stale, token, owner,
             heartbeat_at) VALUES (?1, ?2, ?3, 'running', 1, 0, ?4, ?5, ?6)",
        )
        .and_then(|mut st| st.execute(params![sid, trial_id, trial_json, token, owner_json, now]))
        .map_err(be)?;
        tx.commit().map_err(be)?;
        Ok(Claim::Run(Lease {
            study: study.into(),
            trial,
            attempt: 1,
            token,
            owner: owner.clone(),
        }))
    }

    fn heartbeat(&mut self, lease: &Lease) -> Result<bool, StoreError> {
        self.update_held(HEARTBEAT, lease, None)
    }

    fn finish(
        &mut self,
        lease: &Lease,
        line: &TrialLine,
        checkpoint: Option<&[u8]>,
    ) -> Result<bool, StoreError> {
        let (sid, _) = self.study_id(&lease.study)?;
        let url = self.url.clone();
        let be = |e| backend(&url, e);
        let trial_id = sql_int(&url, lease.trial.id)?;
        let continued_from = line
            .continued_from
            .map(|id| sql_int(&url, id))
            .transpose()?;
        let tx = self.write_tx()?;
        let n = tx
            .prepare_cached(FINISH)
            .and_then(|mut st| st.execute(params![sid, trial_id, lease.token]))
            .map_err(be)?;
        if n == 0 {
            return Ok(false);
        }
        if let Some(bytes) = checkpoint {
            tx.prepare_cached(
                "INSERT INTO checkpoints (study_id, trial_id, bytes) VALUES (?1, ?2, ?3)
                 ON CONFLICT (study_id, trial_id) DO UPDATE SET bytes = excluded.bytes",
            )
            .and_then(|mut st| st.execute(params![sid, trial_id, bytes]))
            .map_err(be)?;
        }
        if let Some(from) = continued_from {
            tx.prepare_cached("DELETE FROM checkpoints WHERE study_id = ?1 AND trial_id = ?2")
                .and_then(|mut st| st.execute(params![sid, from]))
                .map_err(be)?;
        }
        tx.prepare_cached("DELETE FROM progress WHERE study_id = ?1 AND trial_id = ?2")
            .and_then(|mut st| st.execute(params![sid, trial_id]))
            .map_err(be)?;
        insert_event(
            &tx,
            &url,
            sid,
            &EventKind::Tell {
                line: Box::new(line.clone()),
            },
        )?;
        tx.commit().map_err(be)?;
        Ok(true)
    }

    fn release(&mut self, lease: &Lease) -> Result<bool, StoreError> {
        self.update_held(RELEASE, lease, None)
    }

    fn events(&mut self, study: &str, since: u64) -> Result<Vec<Event>, StoreError> {
        let (sid, _) = self.study_id(study)?;
        read_events(&self.conn, &self.url, sid, since)
    }

    fn running(&mut self, study: &str) -> Result<Vec<Running>, StoreError> {
        let (sid, _) = self.study_id(study)?;
        type Row = (String, u32, String, String, f64);
        let rows: Vec<Row> = self
            .conn
            .prepare_cached(RUNNING)
            .and_then(|mut st| {
                st.query_map([sid], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                })?
                .collect()
            })
            .map_err(self.be())?;
        rows.into_iter()
            .map(|(trial, attempt, token, owner, silent_s)| {
                Ok(Running {
                    lease: Lease {
                        study: study.into(),
                        trial: from_json(&self.url, "trials", &trial)?,
                        attempt,
                        token,
                        owner: from_json(&self.url, "trials", &owner)?,
                    },
                    silent_s,
                })
            })
            .collect()
    }

    fn queued(&mut self, study: &str) -> Result<Vec<Trial>, StoreError> {
        let (sid, _) = self.study_id(study)?;
        let rows: Vec<String> = self
            .conn
            .prepare_cached(QUEUED)
            .and_then(|mut st| st.query_map([sid], |r| r.get(0))?.collect())
            .map_err(self.be())?;
        rows.iter()
            .map(|json| from_json(&self.url, "trials", json))
            .collect()
    }

    fn checkpoint(&mut self, study: &str, trial: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let (sid, _) = self.study_id(study)?;
        let trial_id = sql_int(&self.url, trial)?;
        self.conn
            .prepare_cached("SELECT bytes FROM checkpoints WHERE study_id = ?1 AND trial_id = ?2")
            .and_then(|mut st| {
                st.query_row(params![sid, trial_id], |r| r.get(0))
                    .optional()
            })
            .map_err(self.be())
    }

    fn save_progress(&mut self, lease: &Lease, progress: &[u8]) -> Result<bool, StoreError> {
        // The heartbeat's update both checks the lease and renews it.
        self.update_held(
            HEARTBEAT,
            lease,
            Some((
                "INSERT INTO progress (study_id, trial_id, bytes) VALUES (?1, ?2, ?3)
                 ON CONFLICT (study_id, trial_id) DO UPDATE SET bytes = excluded.bytes",
                progress,
            )),
        )
    }

    fn progress(&mut self, study: &str, trial: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let (sid, _) = self.study_id(study)?;
        let trial_id = sql_int(&self.url, trial)?;
        self.conn
            .prepare_cached("SELECT bytes FROM progress WHERE study_id = ?1 AND trial_id = ?2")
            .and_then(|mut st| {
                st.query_row(params![sid, trial_id], |r| r.get(0))
                    .optional()
            })
            .map_err(self.be())
    }

    fn drop_checkpoints(&mut self, study: &str) -> Result<(), StoreError> {
        let (sid, _) = self.study_id(study)?;
        let url = self.url.clone();
        let be = |e| backend(&url, e);
        let tx = self.write_tx()?;
        for sql in [
            "DELETE FROM checkpoints WHERE study_id = ?1",
            "DELETE FROM progress WHERE study_id = ?1",
        ] {
            tx.prepare_cached(sql)
                .and_then(|mut st| st.execute([sid]))
                .map_err(be)?;
        }
        tx.commit().map_err(be)
    }

    fn import(&mut self, study: &str, events: &[EventKind]) -> Result<(), StoreError> {
        let (sid, _) = self.study_id(study)?;
        let url = self.url.clone();
        let be = |e| backend(&url, e);
        let tx = self.write_tx()?;
        for kind in events {
            insert_event(&tx, &url, sid, kind)?;
            match kind {
                EventKind::Ask { trial, .. } => {
                    let json = to_json(&url, trial)?;
                    let trial_id = sql_int(&url, trial.id)?;
                    tx.prepare_cached(
                        "INSERT INTO trials (study_id, trial_id, trial, state, attempt, stale)
                         VALUES (?1, ?2, ?3, 'queued', 0, 0)
                         ON CONFLICT (study_id, trial_id) DO UPDATE SET trial = excluded.trial,
                         state = 'queued', attempt = 0, stale = 0, token = NULL, owner = NULL,
                         heartbeat_at = NULL",
                    )
                    .and_then(|mut st| st.execute(params![sid, trial_id, json]))
                    .map_err(be)?;
                }
                EventKind::Tell { line } => {
                    let trial_id = sql_int(&url, line.id)?;
                    tx.prepare_cached(
                        "UPDATE trials SET state = 'done', token = NULL, owner = NULL,
                         heartbeat_at = NULL WHERE study_id = ?1 AND trial_id = ?2",
                    )
                    .and_then(|mut st| st.execute(params![sid, trial_id]))
                    .map_err(be)?;
                }
            }
        }
        tx.commit().map_err(be)
    }
}

/// Warns once per process when `path` lies on a network filesystem, where SQLite's locks do
/// not hold and several workers would corrupt the study.
fn warn_on_network_fs(path: &Path) {
    static WARNED: std::sync::Once = std::sync::Once::new();
    let probe = if path.exists() {
        path
    } else {
        match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        }
    };
    if let Some(fs) = filesystem_magic(probe).and_then(network_fs_name) {
        WARNED.call_once(|| {
            eprintln!(
                "dsnn-hpo: warning: the study store {} lies on a network filesystem ({fs}); \
                 SQLite's locks do not work there, so several workers must not share it \
                 (use a postgresql:// or journal:// store for workers on several machines)",
                path.display()
            );
        });
    }
}

/// The filesystem type (`statfs`'s `f_type`) of `path`.
#[cfg(target_os = "linux")]
fn filesystem_magic(path: &Path) -> Option<u32> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: `c_path` is NUL-terminated and outlives the call; `st` is a writable statfs.
    let rc = unsafe { libc::statfs(c_path.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statfs returned 0, so it filled `st`.
    let st = unsafe { st.assume_init() };
    // The field's integer type differs between targets; the magic numbers fit in 32 bits.
    Some(st.f_type as u32)
}

#[cfg(not(target_os = "linux"))]
fn filesystem_magic(_path: &Path) -> Option<u32> {
    None
}

/// The name of a network filesystem's `statfs` magic number (linux/magic.h and the
/// filesystems' own headers); `None` for local ones. FUSE is left out: most FUSE mounts are
/// local.
fn network_fs_name(magic: u32) -> Option<&'static str> {
    Some(match magic {
        0x6969 => "NFS",
        0x517B => "SMB",
        0xFF53_4D42 => "CIFS",
        0xFE53_4D42 => "SMB2",
        0x564C => "NCP",
        0x7375_7245 => "Coda",
        0x5346_414F | 0x6B41_4653 => "AFS",
        0x00C3_6400 => "CephFS",
        0x0102_1997 => "9P",
        0x0BD0_0BD0 => "Lustre",
        0x0116_1970 => "GFS2",
        0x7461_636F => "OCFS2",
        0x4750_4653 => "GPFS",
        0x1983_0326 => "BeeGFS",
        0x2003_0528 => "OrangeFS",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_folder_is_named() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("nope").join("study.db");
        let e = SqliteStore::open(&path).unwrap_err().to_string();
        assert!(
            e.contains(&dir.path().join("nope").display().to_string())
                && e.contains("does not exist"),
            "{e}"
        );
        assert!(!dir.path().join("nope").exists(), "the folder was created");
    }

    #[test]
    fn a_newer_schema_is_refused_and_a_reopen_keeps_the_studies() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("study.db");
        {
            let mut store = SqliteStore::open(&path).expect("open");
            let mut study = conformance_study();
            study.name = "kept".into();
            store.create_study(&study).expect("create");
        }
        let mut store = SqliteStore::open(&path).expect("reopen");
        assert_eq!(store.studies().expect("studies"), ["kept"]);
        store
            .conn
            .execute("UPDATE meta SET schema_version = ?1", [SCHEMA_VERSION + 1])
            .expect("bump version");
        drop(store);
        match SqliteStore::open(&path) {
            Err(StoreError::NewerSchema { found, url }) => {
                assert_eq!(found, SCHEMA_VERSION + 1);
                assert!(url.ends_with("study.db"), "{url}");
            }
            other => panic!("a newer schema gave {other:?}"),
        }
    }

    #[test]
    fn a_file_that_is_not_a_store_is_named() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("notes.txt");
        std::fs::write(&path, "x".repeat(4096)).expect("write");
        let e = SqliteStore::open(&path).unwrap_err().to_string();
        assert!(e.contains("not a dsnn-hpo study store"), "{e}");
    }

    #[test]
    fn locked_database_message_says_why() {
        let e = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
            Some("database is locked".into()),
        );
        let msg = backend("sqlite:///x.db", e).to_string();
        assert!(
            msg.contains("database is locked") && msg.contains("busy timeout (30 s)"),
            "{msg}"
        );
    }

    #[test]
    fn hot_statements_use_indexes() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SqliteStore::open(&dir.path().join("plan.db")).expect("open");
        for sql in INDEXED {
            let mut st = store
                .conn
                .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                .expect("explain");
            let nulls = vec![rusqlite::types::Null; st.parameter_count()];
            let details: Vec<String> = st
                .query_map(rusqlite::params_from_iter(nulls), |r| r.get(3))
                .expect("plan")
                .collect::<Result<_, _>>()
                .expect("plan rows");
            // A search on the study alone would read every trial or event of the study.
            let whole = |d: &String| {
                (d.starts_with("SCAN") && d != "SCAN CONSTANT ROW") || d.ends_with("(study_id=?)")
            };
            assert!(
                !details.iter().any(whole),
                "{sql}\nreads more than it needs: {details:?}"
            );
        }
    }

    #[test]
    fn network_filesystems_are_recognised() {
        assert_eq!(network_fs_name(0x6969), Some("NFS"));
        assert_eq!(network_fs_name(0xFF53_4D42), Some("CIFS"));
        assert_eq!(network_fs_name(0xEF53), None, "ext4 is local");
        assert_eq!(network_fs_name(0x0102_1994), None, "tmpfs is local");
        let dir = tempfile::tempdir().expect("temp dir");
        let magic = filesystem_magic(dir.path());
        assert!(magic.is_some(), "statfs of the temp dir failed");
        assert_eq!(
            magic.and_then(network_fs_name),
            None,
            "temp dir on a network fs?"
        );
    }

    fn conformance_study() -> NewStudy {
        NewStudy {
            name: "s".into(),
            info: crate::store::RunInfo {
                objectives: vec!["loss".into()],
                objective_sources: vec!["1 - validation accuracy".into()],
                default_config: crate::space::Config::new(),
                meta_hash: "h".into(),
                constraint_reference: Default::default(),
                config_toml: String::new(),
            },
            leases: LeaseSettings::default(),
            data_fingerprint: None,
            version: "0".into(),
        }
    }
}
