//! The PostgreSQL store: for workers on several machines.
//!
//! Every transaction that writes more than one row first locks the study's row
//! (`SELECT ... FOR UPDATE`): that is the study lock, and it also keeps the events of a study
//! committed in the order of their sequence numbers, so a reader that has seen event `n` never
//! misses a later-committed event below `n`. Heartbeats and releases touch one trial row and
//! need no study lock; their updates re-check the lease, so a lease taken away meanwhile is never
//! renewed. Leases are judged by the server's clock (`clock_timestamp()`), never the workers'.
//!
//! The URL is the one `psql` takes: `postgresql://user[:password]@host[:port]/db`; a Unix socket
//! folder goes percent-encoded in the host (`postgresql://me@%2Fvar%2Frun%2Fpostgresql/db`) or as
//! `?host=/var/run/postgresql`. Without a host the local socket is used (else localhost), without
//! a user `$USER`, without a password `$PGPASSWORD`, as libpq does. The query parameter
//! `options=-csearch_path%3DNAME` keeps the tables in schema NAME (which must exist), so several
//! study stores can share one database.

use std::collections::HashMap;
use std::time::Duration;

use postgres::error::SqlState;
use postgres::{Client, NoTls, Statement, Transaction};

use super::{
    Claim, Decide, Decision, Event, EventKind, Lease, LeaseSettings, NewStudy, Owner, Running,
    SCHEMA_VERSION, Store, StoreError, StudyRecord, TrialLine, from_json, known_studies, new_token,
    sql_int, to_json, url,
};
use crate::opt::Trial;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (schema_version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS studies (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    study TEXT NOT NULL,
    created_unix_s DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    seq BIGSERIAL PRIMARY KEY,
    study_id BIGINT NOT NULL REFERENCES studies(id),
    kind TEXT NOT NULL,
    trial_id BIGINT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_study_seq ON events (study_id, seq);
CREATE TABLE IF NOT EXISTS trials (
    study_id BIGINT NOT NULL REFERENCES studies(id),
    trial_id BIGINT NOT NULL,
    trial TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('running', 'queued', 'done')),
    attempt INTEGER NOT NULL,
    stale INTEGER NOT NULL,
    token TEXT,
    owner TEXT,
    heartbeat_at DOUBLE PRECISION,
    PRIMARY KEY (study_id, trial_id)
);
CREATE INDEX IF NOT EXISTS trials_study_state ON trials (study_id, state, trial_id);
CREATE TABLE IF NOT EXISTS checkpoints (
    study_id BIGINT NOT NULL REFERENCES studies(id),
    trial_id BIGINT NOT NULL,
    bytes BYTEA NOT NULL,
    PRIMARY KEY (study_id, trial_id)
);
CREATE TABLE IF NOT EXISTS progress (
    study_id BIGINT NOT NULL REFERENCES studies(id),
    trial_id BIGINT NOT NULL,
    bytes BYTEA NOT NULL,
    PRIMARY KEY (study_id, trial_id)
);
";

/// Serialises schema creation among processes starting at once (`CREATE TABLE IF NOT EXISTS`
/// alone races); an arbitrary fixed key.
const SCHEMA_LOCK: i64 = 0x6473_6e6e_6870_6f01;

/// Attempts of a transaction that failed on a deadlock or serialization conflict.
const ATTEMPTS: u32 = 5;

/// The server's clock, seconds since the Unix epoch: the one clock every worker is judged by.
const NOW: &str = "SELECT extract(epoch from clock_timestamp())::float8";

/// A connection to a PostgreSQL study store.
pub struct PostgresStore {
    client: Client,
    config: postgres::Config,
    /// The URL, password hidden.
    url: String,
    statements: HashMap<&'static str, Statement>,
    /// Study name -> (row id, lease settings): a study never changes once created.
    studies: HashMap<String, (i64, LeaseSettings)>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("url", &self.url)
            .finish()
    }
}

/// A failed transaction: the server's error (maybe worth retrying) or the store's.
enum TxError {
    Pg(postgres::Error),
    Store(StoreError),
}

impl From<postgres::Error> for TxError {
    fn from(e: postgres::Error) -> TxError {
        TxError::Pg(e)
    }
}

impl From<StoreError> for TxError {
    fn from(e: StoreError) -> TxError {
        TxError::Store(e)
    }
}

fn retryable(e: &TxError) -> bool {
    matches!(e, TxError::Pg(e) if matches!(
        e.code(),
        Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED
    ))
}

/// A short random pause before a retry, so two conflicting transactions do not meet again.
fn backoff(attempt: u32) {
    use rand::Rng;
    let ms = rand::rng().random_range(5..50) * u64::from(attempt + 1);
    std::thread::sleep(Duration::from_millis(ms));
}

impl PostgresStore {
    /// Connects to the store at `url` and creates its tables if they are missing.
    pub fn open(url: &str) -> Result<PostgresStore, StoreError> {
        let shown = url::hide_password(url);
        let config = connect_config(url, &shown)?;
        PostgresStore::connect(config, shown)
    }

    fn connect(config: postgres::Config, url: String) -> Result<PostgresStore, StoreError> {
        let client = config
            .connect(NoTls)
            .map_err(|e| backend(&url, &config, &e))?;
        let mut store = PostgresStore {
            client,
            config,
            url,
            statements: HashMap::new(),
            studies: HashMap::new(),
        };
        store.init_schema()?;
        Ok(store)
    }

    fn fail(&self, e: TxError) -> StoreError {
        match e {
            TxError::Pg(e) => backend(&self.url, &self.config, &e),
            TxError::Store(e) => e,
        }
    }

    /// Reconnects when the server closed the connection (a restart, an idle timeout).
    fn ensure_connected(&mut self) -> Result<(), StoreError> {
        if self.client.is_closed() {
            self.client = self
                .config
                .connect(NoTls)
                .map_err(|e| backend(&self.url, &self.config, &e))?;
            self.statements.clear();
        }
        Ok(())
    }

    fn init_schema(&mut self) -> Result<(), StoreError> {
        let r = (|| -> Result<Option<i32>, TxError> {
            let exists: bool = self
                .client
                .query_one("SELECT to_regclass('meta') IS NOT NULL", &[])?
                .get(0);
            if !exists {
                let mut tx = self.client.transaction()?;
                tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])?;
                tx.batch_execute(SCHEMA)?;
                tx.execute(
                    "INSERT INTO meta (schema_version)
                     SELECT $1 WHERE NOT EXISTS (SELECT 1 FROM meta)",
                    &[&i32::try_from(SCHEMA_VERSION).unwrap_or(i32::MAX)],
                )?;
                tx.commit()?;
            }
            Ok(self
                .client
                .query_one("SELECT max(schema_version) FROM meta", &[])?
                .get(0))
        })();
        match r.map_err(|e| self.fail(e))? {
            Some(v) if i64::from(v) > i64::from(SCHEMA_VERSION) => Err(StoreError::NewerSchema {
                url: self.url.clone(),
                found: u32::try_from(v).unwrap_or(u32::MAX),
            }),
            Some(_) => Ok(()),
            None => Err(StoreError::Backend {
                url: self.url.clone(),
                message: "the table meta holds no schema version: not a dsnn-hpo store, or a \
                          damaged one"
                    .into(),
            }),
        }
    }

    /// Runs `body` in a transaction, again after a deadlock or serialization failure.
    fn transact<T>(
        &mut self,
        mut body: impl FnMut(&mut Tx<'_, '_>) -> Result<T, TxError>,
    ) -> Result<T, StoreError> {
        self.ensure_connected()?;
        let mut attempt = 0;
        loop {
            let r = (|| {
                let mut tx = Tx {
                    tx: self.client.transaction()?,
                    statements: &mut self.statements,
                    url: &self.url,
                };
                let out = body(&mut tx)?;
                tx.tx.commit()?;
                Ok(out)
            })();
            match r {
                Err(e) if retryable(&e) && attempt + 1 < ATTEMPTS => {
                    backoff(attempt);
                    attempt += 1;
                }
                r => return r.map_err(|e| self.fail(e)),
            }
        }
    }

    fn no_such_study(&mut self, name: &str) -> StoreError {
        let known = self
            .client
            .query("SELECT name FROM studies ORDER BY id", &[])
            .map(|rows| {
                let names: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
                known_studies(names.iter().map(String::as_str))
            })
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
        self.ensure_connected()?;
        let row = self
            .client
            .query_opt("SELECT id, study FROM studies WHERE name = $1", &[&name])
            .map_err(|e| backend(&self.url, &self.config, &e))?;
        let Some(row) = row else {
            return Err(self.no_such_study(name));
        };
        let study: NewStudy = from_json(&self.url, "studies", row.get(1))?;
        let found = (row.get(0), study.leases);
        self.studies.insert(name.into(), found);
        Ok(found)
    }

    /// A read outside a transaction.
    fn read<T>(
        &mut self,
        body: impl FnOnce(
            &mut Client,
            &mut HashMap<&'static str, Statement>,
            &str,
        ) -> Result<T, TxError>,
    ) -> Result<T, StoreError> {
        self.ensure_connected()?;
        body(&mut self.client, &mut self.statements, &self.url).map_err(|e| self.fail(e))
    }
}

/// An open transaction with the connection's prepared statements.
struct Tx<'c, 's> {
    tx: Transaction<'c>,
    statements: &'s mut HashMap<&'static str, Statement>,
    url: &'s str,
}

impl Tx<'_, '_> {
    /// `sql` prepared once per connection (prepared statements outlive a rollback).
    fn prepared(&mut self, sql: &'static str) -> Result<Statement, postgres::Error> {
        if let Some(st) = self.statements.get(sql) {
            return Ok(st.clone());
        }
        let st = self.tx.prepare(sql)?;
        self.statements.insert(sql, st.clone());
        Ok(st)
    }

    fn execute(
        &mut self,
        sql: &'static str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> Result<u64, postgres::Error> {
        let st = self.prepared(sql)?;
        self.tx.execute(&st, params)
    }

    fn query(
        &mut self,
        sql: &'static str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> Result<Vec<postgres::Row>, postgres::Error> {
        let st = self.prepared(sql)?;
        self.tx.query(&st, params)
    }

    /// Takes the study lock (the study's row) until the transaction ends.
    fn lock_study(&mut self, study_id: i64) -> Result<(), postgres::Error> {
        self.query(
            "SELECT id FROM studies WHERE id = $1 FOR UPDATE",
            &[&study_id],
        )
        .map(|_| ())
    }

    fn now(&mut self) -> Result<f64, postgres::Error> {
        let st = self.prepared(NOW)?;
        Ok(self.tx.query_one(&st, &[])?.get(0))
    }

    fn insert_event(&mut self, study_id: i64, kind: &EventKind) -> Result<(), TxError> {
        let (name, trial_id) = match kind {
            EventKind::Ask { trial, .. } => ("ask", trial.id),
            EventKind::Tell { line } => ("tell", line.id),
        };
        let trial_id = sql_int(self.url, trial_id)?;
        let body = to_json(self.url, kind)?;
        self.execute(
            "INSERT INTO events (study_id, kind, trial_id, body) VALUES ($1, $2, $3, $4)",
            &[&study_id, &name, &trial_id, &body],
        )?;
        Ok(())
    }
}

/// The driver's configuration of `url`, with libpq's defaults for what it leaves out.
fn connect_config(url: &str, shown: &str) -> Result<postgres::Config, StoreError> {
    let mut config: postgres::Config = url.parse().map_err(|e| StoreError::Backend {
        url: shown.into(),
        message: format!(
            "{e}: expected postgresql://user[:password]@host[:port]/database \
             (a socket folder percent-encoded as host, e.g. %2Fvar%2Frun%2Fpostgresql)"
        ),
    })?;
    if config.get_hosts().is_empty() {
        default_host(&mut config);
    }
    if config.get_user().is_none()
        && let Ok(user) = std::env::var("USER")
    {
        config.user(&user);
    }
    if config.get_password().is_none()
        && let Ok(password) = std::env::var("PGPASSWORD")
    {
        config.password(&password);
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(10));
    }
    if config.get_application_name().is_none() {
        config.application_name("dsnn-hpo");
    }
    Ok(config)
}

/// The local server's socket folder if there is one (as libpq), else localhost.
#[cfg(unix)]
fn default_host(config: &mut postgres::Config) {
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let socket = ["/var/run/postgresql", "/run/postgresql", "/tmp"]
        .into_iter()
        .find(|dir| {
            std::path::Path::new(dir)
                .join(format!(".s.PGSQL.{port}"))
                .exists()
        });
    match socket {
        Some(dir) => config.host_path(dir),
        None => config.host("localhost"),
    };
}

#[cfg(not(unix))]
fn default_host(config: &mut postgres::Config) {
    config.host("localhost");
}

/// `e` as a store error, saying what to do about the usual causes.
fn backend(url: &str, config: &postgres::Config, e: &postgres::Error) -> StoreError {
    let user = config.get_user().unwrap_or("?");
    let db = config.get_dbname().unwrap_or(user);
    let message = if let Some(db_error) = e.as_db_error() {
        let mut text = db_error.message().to_string();
        if let Some(detail) = db_error.detail() {
            text.push_str(&format!(" ({detail})"));
        }
        let code = db_error.code();
        let advice = if *code == SqlState::INVALID_PASSWORD {
            format!(
                "check the password of user \"{user}\" (in the URL as user:password@, or in \
                 PGPASSWORD)"
            )
        } else if *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION {
            format!(
                "the server does not let user \"{user}\" in: create the role (createuser \
                 {user}) or allow it in the server's pg_hba.conf"
            )
        } else if *code == SqlState::INVALID_CATALOG_NAME {
            format!("create the database first: createdb {db} (or CREATE DATABASE {db})")
        } else if *code == SqlState::INSUFFICIENT_PRIVILEGE {
            format!(
                "user \"{user}\" may not create or change the store's tables: have the \
                 database owner GRANT CREATE ON SCHEMA public TO {user} (or the schema in \
                 search_path)"
            )
        } else if *code == SqlState::INVALID_SCHEMA_NAME {
            "the schema the URL's search_path names does not exist: CREATE SCHEMA it first".into()
        } else if *code == SqlState::TOO_MANY_CONNECTIONS {
            "the server takes no more connections: run fewer workers or raise \
             max_connections"
                .into()
        } else if *code == SqlState::ADMIN_SHUTDOWN || *code == SqlState::CANNOT_CONNECT_NOW {
            "the server is shutting down or starting up: try again shortly".into()
        } else if let Some(hint) = db_error.hint() {
            hint.to_string()
        } else {
            String::new()
        };
        if advice.is_empty() {
            text
        } else {
            format!("{text}: {advice}")
        }
    } else {
        let mut text = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            text.push_str(&format!(": {s}"));
            source = s.source();
        }
        if text.starts_with("error connecting to server") {
            format!(
                "{text}: is PostgreSQL running there and accepting connections? (check with \
                 pg_isready; for a remote server its listen_addresses and firewall)"
            )
        } else if text.contains("password missing") {
            format!(
                "{text}: the server asks for a password: put it in the URL \
                 (postgresql://{user}:PASSWORD@host/{db}) or in PGPASSWORD"
            )
        } else if e.is_closed() {
            format!("{text}: the server closed the connection (restarted, or killed it)")
        } else {
            text
        }
    };
    StoreError::Backend {
        url: url.into(),
        message,
    }
}

/// An attempt or retry count as INTEGER.
fn count(n: i32) -> u32 {
    u32::try_from(n).unwrap_or(0)
}

fn read_events(
    client: &mut Client,
    statements: &mut HashMap<&'static str, Statement>,
    url: &str,
    study_id: i64,
    since: u64,
) -> Result<Vec<Event>, TxError> {
    const SQL: &str = "SELECT seq, body FROM events WHERE study_id = $1 AND seq > $2 ORDER BY seq";
    let st = match statements.get(SQL) {
        Some(st) => st.clone(),
        None => {
            let st = client.prepare(SQL)?;
            statements.insert(SQL, st.clone());
            st
        }
    };
    let since = i64::try_from(since).unwrap_or(i64::MAX);
    rows_to_events(url, client.query(&st, &[&study_id, &since])?)
}

fn rows_to_events(url: &str, rows: Vec<postgres::Row>) -> Result<Vec<Event>, TxError> {
    rows.iter()
        .map(|r| {
            let seq: i64 = r.get(0);
            Ok(Event {
                seq: seq.unsigned_abs(),
                kind: from_json(url, "events", r.get(1))?,
            })
        })
        .collect()
}

impl Store for PostgresStore {
    fn url(&self) -> String {
        self.url.clone()
    }

    fn connect_again(&self) -> Result<Box<dyn Store>, StoreError> {
        Ok(Box::new(PostgresStore::connect(
            self.config.clone(),
            self.url.clone(),
        )?))
    }

    fn create_study(&mut self, study: &NewStudy) -> Result<(), StoreError> {
        let json = to_json(&self.url, study)?;
        let url = self.url.clone();
        self.transact(|tx| {
            // Two processes creating the same name at once: the unique index makes one wait
            // for the other and then fail; ON CONFLICT turns that into "exists".
            let created = tx.execute(
                "INSERT INTO studies (name, study, created_unix_s)
                 VALUES ($1, $2, extract(epoch from clock_timestamp()))
                 ON CONFLICT (name) DO NOTHING",
                &[&study.name, &json],
            )?;
            if created == 0 {
                return Err(TxError::Store(StoreError::StudyExists {
                    url: url.clone(),
                    name: study.name.clone(),
                    hint: "choose another name".into(),
                }));
            }
            Ok(())
        })
    }

    fn study(&mut self, name: &str) -> Result<StudyRecord, StoreError> {
        let row = self.read(|client, _, _| {
            Ok(client.query_opt(
                "SELECT study, created_unix_s FROM studies WHERE name = $1",
                &[&name],
            )?)
        })?;
        let Some(row) = row else {
            return Err(self.no_such_study(name));
        };
        Ok(StudyRecord {
            study: from_json(&self.url, "studies", row.get(0))?,
            created_unix_s: row.get(1),
        })
    }

    fn studies(&mut self) -> Result<Vec<String>, StoreError> {
        self.read(|client, _, _| {
            Ok(client
                .query("SELECT name FROM studies ORDER BY id", &[])?
                .iter()
                .map(|r| r.get(0))
                .collect())
        })
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
        let max_retries = i32::try_from(leases.max_retries).unwrap_or(i32::MAX);
        // `decide` runs at most once: a conflict after it is an error, not a retry, since the
        // caller's optimizer has already replayed the events.
        let mut decided = false;
        self.transact(|tx| {
            if decided {
                return Err(TxError::Store(StoreError::Backend {
                    url: tx.url.into(),
                    message: "the claim conflicted with another transaction after the \
                              optimizer decided; claim again"
                        .into(),
                }));
            }
            tx.lock_study(sid)?;
            let now = tx.now()?;

            // Take away the leases silent for longer than the grace period. The update
            // re-checks each row, so a heartbeat that commits first keeps its lease.
            let rows = tx.query(
                "UPDATE trials SET stale = stale + 1,
                     state = CASE WHEN stale + 1 > $3 THEN 'done' ELSE 'queued' END,
                     token = NULL, heartbeat_at = NULL
                 WHERE study_id = $1 AND state = 'running' AND heartbeat_at < $2
                 RETURNING trial_id, trial, stale, state, owner",
                &[&sid, &(now - leases.grace_s), &max_retries],
            )?;
            let mut failed: Vec<(i64, TrialLine)> = Vec::new();
            for r in &rows {
                if r.get::<_, &str>(3) == "done" {
                    let trial: Trial = from_json(tx.url, "trials", r.get(1))?;
                    let last: Owner = match r.get::<_, Option<&str>>(4) {
                        Some(json) => from_json(tx.url, "trials", json)?,
                        None => Owner {
                            host: "unknown".into(),
                            pid: 0,
                            name: "unknown".into(),
                        },
                    };
                    let line = TrialLine::failed_silent(&trial, count(r.get(2)), &last, now);
                    failed.push((r.get(0), line));
                }
            }
            failed.sort_by_key(|(id, _)| *id);
            for (_, line) in failed {
                tx.insert_event(
                    sid,
                    &EventKind::Tell {
                        line: Box::new(line),
                    },
                )?;
            }

            // A queued trial goes first.
            let queued = tx.query(
                "SELECT trial_id, trial, attempt FROM trials
                 WHERE study_id = $1 AND state = 'queued' ORDER BY trial_id LIMIT 1",
                &[&sid],
            )?;
            if let Some(r) = queued.first() {
                let trial_id: i64 = r.get(0);
                let trial: Trial = from_json(tx.url, "trials", r.get(1))?;
                let attempt: i32 = r.get::<_, i32>(2) + 1;
                let token = new_token();
                tx.execute(
                    "UPDATE trials SET state = 'running', attempt = $3, token = $4, owner = $5,
                         heartbeat_at = $6
                     WHERE study_id = $1 AND trial_id = $2",
                    &[&sid, &trial_id, &attempt, &token, &owner_json, &now],
                )?;
                return Ok(Claim::Run(Lease {
                    study: study.into(),
                    trial,
                    attempt: count(attempt),
                    token,
                    owner: owner.clone(),
                }));
            }

            // Otherwise the optimizer decides, having replayed what it has not seen.
            let since_sql = i64::try_from(since).unwrap_or(i64::MAX);
            let rows = tx.query(
                "SELECT seq, body FROM events WHERE study_id = $1 AND seq > $2 ORDER BY seq",
                &[&sid, &since_sql],
            )?;
            let events = rows_to_events(tx.url, rows)?;
            decided = true;
            let (trial, state) = match decide(&events).map_err(StoreError::Decide)? {
                Decision::Wait => return Ok(Claim::Wait),
                Decision::Done => return Ok(Claim::Done),
                Decision::Run(trial, state) => (trial, state),
            };
            let trial_id = sql_int(tx.url, trial.id)?;
            let asked = !tx
                .query(
                    "SELECT 1 FROM trials WHERE study_id = $1 AND trial_id = $2",
                    &[&sid, &trial_id],
                )?
                .is_empty();
            if asked {
                return Err(TxError::Store(StoreError::Decide(format!(
                    "the optimizer asked for trial {} again (it was asked before)",
                    trial.id
                ))));
            }
            tx.insert_event(
                sid,
                &EventKind::Ask {
                    trial: trial.clone(),
                    state,
                },
            )?;
            let token = new_token();
            let trial_json = to_json(tx.url, &trial)?;
            tx.execute(
                "INSERT INTO trials (study_id, trial_id, trial, state, attempt, stale, token,
                     owner, heartbeat_at)
                 VALUES ($1, $2, $3, 'running', 1, 0, $4, $5, $6)",
                &[&sid, &trial_id, &trial_json, &token, &owner_json, &now],
            )?;
            Ok(Claim::Run(Lease {
                study: study.into(),
                trial,
                attempt: 1,
                token,
                owner: owner.clone(),
            }))
        })
    }

    fn heartbeat(&mut self, lease: &Lease) -> Result<bool, StoreError> {
        let (sid, _) = self.study_id(&lease.study)?;
        let trial_id = sql_int(&self.url, lease.trial.id)?;
        self.transact(|tx| {
            // Not worth a disk flush (milliseconds on many servers): a heartbeat lost in a
            // server crash only makes the lease look silent a little longer.
            tx.tx.batch_execute("SET LOCAL synchronous_commit = off")?;
            let n = tx.execute(
                "UPDATE trials SET heartbeat_at = extract(epoch from clock_timestamp())
                 WHERE study_id = $1 AND trial_id = $2 AND state = 'running' AND token = $3",
                &[&sid, &trial_id, &lease.token],
            )?;
            Ok(n == 1)
        })
    }

    fn finish(
        &mut self,
        lease: &Lease,
        line: &TrialLine,
        checkpoint: Option<&[u8]>,
    ) -> Result<bool, StoreError> {
        let (sid, _) = self.study_id(&lease.study)?;
        let trial_id = sql_int(&self.url, lease.trial.id)?;
        let continued_from = line
            .continued_from
            .map(|id| sql_int(&self.url, id))
            .transpose()?;
        self.transact(|tx| {
            tx.lock_study(sid)?;
            let n = tx.execute(
                "UPDATE trials SET state = 'done', token = NULL, owner = NULL, heartbeat_at = NULL
                 WHERE study_id = $1 AND trial_id = $2 AND state = 'running' AND token = $3",
                &[&sid, &trial_id, &lease.token],
            )?;
            if n == 0 {
                // Nothing was written; the empty transaction commits.
                return Ok(false);
            }
            if let Some(bytes) = checkpoint {
                tx.execute(
                    "INSERT INTO checkpoints (study_id, trial_id, bytes) VALUES ($1, $2, $3)
                     ON CONFLICT (study_id, trial_id) DO UPDATE SET bytes = excluded.bytes",
                    &[&sid, &trial_id, &bytes],
                )?;
            }
            if let Some(from) = continued_from {
                tx.execute(
                    "DELETE FROM checkpoints WHERE study_id = $1 AND trial_id = $2",
                    &[&sid, &from],
                )?;
            }
            tx.execute(
                "DELETE FROM progress WHERE study_id = $1 AND trial_id = $2",
                &[&sid, &trial_id],
            )?;
            tx.insert_event(
                sid,
                &EventKind::Tell {
                    line: Box::new(line.clone()),
                },
            )?;
            Ok(true)
        })
    }

    fn release(&mut self, lease: &Lease) -> Result<bool, StoreError> {
        let (sid, _) = self.study_id(&lease.study)?;
        let trial_id = sql_int(&self.url, lease.trial.id)?;
        self.transact(|tx| {
            let n = tx.execute(
                "UPDATE trials SET state = 'queued', token = NULL, owner = NULL,
                     heartbeat_at = NULL
                 WHERE study_id = $1 AND trial_id = $2 AND state = 'running' AND token = $3",
                &[&sid, &trial_id, &lease.token],
            )?;
            Ok(n == 1)
        })
    }

    fn events(&mut self, study: &str, since: u64) -> Result<Vec<Event>, StoreError> {
        let (sid, _) = self.study_id(study)?;
        self.read(|client, statements, url| read_events(client, statements, url, sid, since))
    }

    fn running(&mut self, study: &str) -> Result<Vec<Running>, StoreError> {
        let (sid, _) = self.study_id(study)?;
        self.read(|client, _, url| {
            let rows = client.query(
                "SELECT trial, attempt, token, owner,
                     extract(epoch from clock_timestamp())::float8 - heartbeat_at
                 FROM trials WHERE study_id = $1 AND state = 'running' ORDER BY trial_id",
                &[&sid],
            )?;
            rows.iter()
                .map(|r| {
                    Ok(Running {
                        lease: Lease {
                            study: study.into(),
                            trial: from_json(url, "trials", r.get(0))?,
                            attempt: count(r.get(1)),
                            token: r.get(2),
                            owner: from_json(url, "trials", r.get(3))?,
                        },
                        silent_s: r.get(4),
                    })
                })
                .collect()
        })
    }

    fn queued(&mut self, study: &str) -> Result<Vec<Trial>, StoreError> {
        let (sid, _) = self.study_id(study)?;
        self.read(|client, _, url| {
            client
                .query(
                    "SELECT trial FROM trials WHERE study_id = $1 AND state = 'queued'
                     ORDER BY trial_id",
                    &[&sid],
                )?
                .iter()
                .map(|r| Ok(from_json(url, "trials", r.get(0))?))
                .collect()
        })
    }

    fn checkpoint(&mut self, study: &str, trial: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let (sid, _) = self.study_id(study)?;
        let trial_id = sql_int(&self.url, trial)?;
        self.read(|client, _, _| {
            Ok(client
                .query_opt(
                    "SELECT bytes FROM checkpoints WHERE study_id = $1 AND trial_id = $2",
                    &[&sid, &trial_id],
                )?
                .map(|r| r.get(0)))
        })
    }

    fn save_progress(&mut self, lease: &Lease, progress: &[u8]) -> Result<bool, StoreError> {
        let (sid, _) = self.study_id(&lease.study)?;
        let trial_id = sql_int(&self.url, lease.trial.id)?;
        self.transact(|tx| {
            // The row lock this update takes keeps a claim from taking the lease away before
            // the progress is written; it renews the heartbeat too.
            let n = tx.execute(
                "UPDATE trials SET heartbeat_at = extract(epoch from clock_timestamp())
                 WHERE study_id = $1 AND trial_id = $2 AND state = 'running' AND token = $3",
                &[&sid, &trial_id, &lease.token],
            )?;
            if n == 0 {
                return Ok(false);
            }
            tx.execute(
                "INSERT INTO progress (study_id, trial_id, bytes) VALUES ($1, $2, $3)
                 ON CONFLICT (study_id, trial_id) DO UPDATE SET bytes = excluded.bytes",
                &[&sid, &trial_id, &progress],
            )?;
            Ok(true)
        })
    }

    fn progress(&mut self, study: &str, trial: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let (sid, _) = self.study_id(study)?;
        let trial_id = sql_int(&self.url, trial)?;
        self.read(|client, _, _| {
            Ok(client
                .query_opt(
                    "SELECT bytes FROM progress WHERE study_id = $1 AND trial_id = $2",
                    &[&sid, &trial_id],
                )?
                .map(|r| r.get(0)))
        })
    }

    fn drop_checkpoints(&mut self, study: &str) -> Result<(), StoreError> {
        let (sid, _) = self.study_id(study)?;
        self.transact(|tx| {
            tx.lock_study(sid)?;
            tx.execute("DELETE FROM checkpoints WHERE study_id = $1", &[&sid])?;
            tx.execute("DELETE FROM progress WHERE study_id = $1", &[&sid])?;
            Ok(())
        })
    }

    fn import(&mut self, study: &str, events: &[EventKind]) -> Result<(), StoreError> {
        let (sid, _) = self.study_id(study)?;
        self.transact(|tx| {
            tx.lock_study(sid)?;
            for kind in events {
                tx.insert_event(sid, kind)?;
                match kind {
                    EventKind::Ask { trial, .. } => {
                        let json = to_json(tx.url, trial)?;
                        let trial_id = sql_int(tx.url, trial.id)?;
                        tx.execute(
                            "INSERT INTO trials (study_id, trial_id, trial, state, attempt, stale)
                             VALUES ($1, $2, $3, 'queued', 0, 0)
                             ON CONFLICT (study_id, trial_id) DO UPDATE SET
                                 trial = excluded.trial, state = 'queued', attempt = 0,
                                 stale = 0, token = NULL, owner = NULL, heartbeat_at = NULL",
                            &[&sid, &trial_id, &json],
                        )?;
                    }
                    EventKind::Tell { line } => {
                        let trial_id = sql_int(tx.url, line.id)?;
                        tx.execute(
                            "UPDATE trials SET state = 'done', token = NULL, owner = NULL,
                                 heartbeat_at = NULL
                             WHERE study_id = $1 AND trial_id = $2",
                            &[&sid, &trial_id],
                        )?;
                    }
                }
            }
            Ok(())
        })
    }
}

/// Test support: stores in fresh schemas of the database `DSNN_HPO_TEST_POSTGRES` names, so
/// tests run in parallel on one database; the schemas are dropped at the end.
#[doc(hidden)]
pub struct TestSchemas {
    url: String,
    admin: std::sync::Mutex<Client>,
    made: std::sync::Mutex<Vec<String>>,
}

impl TestSchemas {
    /// `None`, after saying so, when `DSNN_HPO_TEST_POSTGRES` is unset; but under CI (`CI=true`)
    /// a missing URL fails the test.
    pub fn from_env() -> Option<TestSchemas> {
        let Some(url) = std::env::var("DSNN_HPO_TEST_POSTGRES")
            .ok()
            .filter(|u| !u.is_empty())
        else {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true but no PostgreSQL URL: set DSNN_HPO_TEST_POSTGRES"
            );
            eprintln!("skipped: no PostgreSQL URL (set DSNN_HPO_TEST_POSTGRES)");
            return None;
        };
        let shown = url::hide_password(&url);
        let config = connect_config(&url, &shown).unwrap_or_else(|e| panic!("{e}"));
        let admin = config
            .connect(NoTls)
            .unwrap_or_else(|e| panic!("{}", backend(&shown, &config, &e)));
        Some(TestSchemas {
            url,
            admin: std::sync::Mutex::new(admin),
            made: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// The URL the tests were given.
    pub fn base_url(&self) -> &str {
        &self.url
    }

    /// The URL of a store in a new, empty schema.
    pub fn fresh_url(&self) -> String {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let schema = format!(
            "dsnn_test_{}_{nanos}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        self.admin
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .batch_execute(&format!("CREATE SCHEMA {schema}"))
            .unwrap_or_else(|e| panic!("CREATE SCHEMA {schema}: {e}"));
        self.made
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(schema.clone());
        let sep = if self.url.contains('?') { '&' } else { '?' };
        format!("{}{sep}options=-csearch_path%3D{schema}", self.url)
    }

    /// A store in a new, empty schema.
    pub fn fresh(&self) -> PostgresStore {
        PostgresStore::open(&self.fresh_url()).unwrap_or_else(|e| panic!("{e}"))
    }
}

impl Drop for TestSchemas {
    fn drop(&mut self) {
        let admin = self.admin.get_mut().unwrap_or_else(|e| e.into_inner());
        for schema in self
            .made
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            // Left behind if it fails: a uniquely named schema harms no other test.
            let _ = admin.batch_execute(&format!("DROP SCHEMA {schema} CASCADE"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreachable_server_is_named_and_the_password_hidden() {
        let e = PostgresStore::open("postgresql://bob:s3cret@127.0.0.1:1/hpo")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("postgresql://bob:***@127.0.0.1:1/hpo")
                && e.contains("is PostgreSQL running")
                && !e.contains("s3cret"),
            "{e}"
        );
    }

    #[test]
    fn a_malformed_url_is_explained() {
        let e = PostgresStore::open("postgresql://bob:s3cret@host/db?nonsense=1")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("expected postgresql://user") && !e.contains("s3cret"),
            "{e}"
        );
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let Some(db) = TestSchemas::from_env() else {
            return;
        };
        let url = db.fresh_url();
        let mut store = PostgresStore::open(&url).unwrap_or_else(|e| panic!("{e}"));
        store
            .client
            .execute(
                "UPDATE meta SET schema_version = $1",
                &[&i32::try_from(SCHEMA_VERSION + 1).unwrap_or(i32::MAX)],
            )
            .expect("bump version");
        match PostgresStore::open(&url) {
            Err(StoreError::NewerSchema { found, .. }) => assert_eq!(found, SCHEMA_VERSION + 1),
            other => panic!("a newer schema gave {other:?}"),
        }
    }

    #[test]
    fn processes_starting_at_once_create_the_schema_once() {
        let Some(db) = TestSchemas::from_env() else {
            return;
        };
        let url = db.fresh_url();
        let barrier = std::sync::Barrier::new(6);
        std::thread::scope(|s| {
            for _ in 0..6 {
                s.spawn(|| {
                    barrier.wait();
                    PostgresStore::open(&url).unwrap_or_else(|e| panic!("concurrent open: {e}"));
                });
            }
        });
        let mut store = PostgresStore::open(&url).unwrap_or_else(|e| panic!("{e}"));
        let rows: i64 = store
            .client
            .query_one("SELECT count(*) FROM meta", &[])
            .expect("count")
            .get(0);
        assert_eq!(rows, 1, "schema versions recorded");
    }

    #[test]
    fn a_missing_database_says_to_create_it() {
        let Some(db) = TestSchemas::from_env() else {
            return;
        };
        let base = db.base_url();
        let (head, query) = base.split_once('?').unwrap_or((base, ""));
        let authority_end = head
            .find("://")
            .map(|i| i + 3)
            .and_then(|start| head[start..].find('/').map(|j| start + j))
            .expect("the test URL names a database");
        let mut url = format!("{}/dsnn_hpo_no_such_db", &head[..authority_end]);
        if !query.is_empty() {
            url = format!("{url}?{query}");
        }
        let e = PostgresStore::open(&url).unwrap_err().to_string();
        assert!(e.contains("createdb dsnn_hpo_no_such_db"), "{e}");
    }

    #[test]
    fn a_wrong_password_is_named_and_hidden() {
        let Some(db) = TestSchemas::from_env() else {
            return;
        };
        // Over TCP to the same server, where the usual pg_hba.conf asks for a password.
        let config = connect_config(db.base_url(), "").expect("test URL");
        let user = config.get_user().unwrap_or("root").to_string();
        let dbname = config.get_dbname().unwrap_or("postgres").to_string();
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let url = format!("postgresql://{user}:n0t-the-password@127.0.0.1:{port}/{dbname}");
        match PostgresStore::open(&url) {
            Ok(_) => eprintln!("skipped: the server let a wrong password in (trust auth)"),
            Err(e) => {
                let e = e.to_string();
                assert!(!e.contains("n0t-the-password"), "{e}");
                if e.contains("error connecting to server") {
                    eprintln!("skipped: the server does not listen on 127.0.0.1:{port}: {e}");
                } else {
                    assert!(e.contains("check the password"), "{e}");
                }
            }
        }
    }
}
