//! The study store: the one source of truth of a study, shared by every process that works on it.
//!
//! A study is an ordered log of the optimizer's decisions ([`EventKind::Ask`]) and of finished
//! trials ([`EventKind::Tell`]), plus the state of each trial asked (running with a lease, queued
//! for a retry, or done). Every process keeps its own optimizer and brings it up to date by
//! replaying the events it has not seen, in their order: the optimizer is deterministic, so every
//! replica reaches the same state (the design of Optuna's journal storage). New decisions are made
//! inside [`Store::claim`], under the study lock, after replaying what others recorded; so two
//! workers never decide from the same state, and the log replays exactly.
//!
//! Leases and fencing: a claimed trial carries a random token. A worker heartbeats its leases
//! (the server's clock judges them); a lease silent for the study's grace period is taken away
//! (the trial queued again, at most `max_retries` times, then failed), and a late
//! [`Store::finish`] with the old token is refused, never counted twice.
//!
//! Backends: [`memory`] (tests, benchmarks), [`sqlite`] (the default, a file inside the run
//! directory), [`journal`] (many machines sharing a folder, no server), [`postgres`] (many
//! machines). [`open`] picks one from a URL. Nothing here knows about training: trials are
//! records.

#[doc(hidden)]
pub mod conformance;
pub mod journal;
pub mod memory;
pub mod postgres;
pub mod progress;
pub mod record;
pub mod run_dir;
pub mod sqlite;
mod trials;
pub mod url;

use serde::{Deserialize, Serialize};

use crate::opt::{AskState, Trial};

pub use record::{BASELINE_IDS, Metrics, RunInfo, TrialLine, TrialStatus};
pub use run_dir::{
    ASKS, AskLine, JsonlLog, RUN, TRIALS, TrialLog, read_asks, read_run_info, read_trials,
    write_atomic, write_run_info, write_trials,
};
pub use url::StoreUrl;

#[cfg(test)]
mod tests;

/// The schema this build writes. A store with a newer one is refused (a newer dsnn-hpo wrote it);
/// an older one is upgraded when opened, once later versions exist.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {message}")]
    Io {
        path: std::path::PathBuf,
        message: String,
    },
    #[error("{path} line {line}: {message}")]
    Corrupt {
        path: std::path::PathBuf,
        line: usize,
        message: String,
    },
    /// The server or file cannot be reached or read; `url` has its password hidden.
    #[error("study store {url}: {message}")]
    Backend { url: String, message: String },
    #[error("study store {url}: no study named \"{name}\" (studies there: {known})")]
    NoSuchStudy {
        url: String,
        name: String,
        known: String,
    },
    #[error("study store {url}: a study named \"{name}\" already exists; {hint}")]
    StudyExists {
        url: String,
        name: String,
        hint: String,
    },
    #[error(
        "study store {url}: written by a newer dsnn-hpo (schema version {found}, this build knows up to {SCHEMA_VERSION}); use that release or a newer one"
    )]
    NewerSchema { url: String, found: u32 },
    /// The optimizer's replay or decision failed inside [`Store::claim`]: nothing was written.
    #[error("{0}")]
    Decide(String),
}

/// How long leases live, and how often a silent trial is tried again.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LeaseSettings {
    /// Seconds between a worker's heartbeats.
    pub heartbeat_s: f64,
    /// Seconds of silence after which a running trial is taken from its worker.
    pub grace_s: f64,
    /// How often a trial taken from a silent worker is queued again before it is failed.
    pub max_retries: u32,
}

impl Default for LeaseSettings {
    fn default() -> Self {
        LeaseSettings {
            heartbeat_s: 30.0,
            grace_s: 600.0,
            max_retries: 2,
        }
    }
}

/// What a new study is made of.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewStudy {
    pub name: String,
    pub info: RunInfo,
    pub leases: LeaseSettings,
    /// Identifies the data set the study trains on (record counts and a hash of the first
    /// records), so a worker with other data is refused; `None` for objectives without data.
    pub data_fingerprint: Option<String>,
    /// The dsnn-hpo version that created the study; workers of another version are refused.
    pub version: String,
}

/// A study as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StudyRecord {
    #[serde(flatten)]
    pub study: NewStudy,
    /// Server time of creation, seconds since the Unix epoch.
    pub created_unix_s: f64,
}

/// One entry of a study's log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventKind {
    /// The optimizer (or the baseline rule) decided to run this trial.
    Ask {
        trial: Trial,
        /// Lets other processes take the decision over without recomputing it; absent in logs
        /// written before it existed (they are replayed by recomputing).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        state: Option<AskState>,
    },
    /// A trial finished (successful, infeasible, or failed: by its worker, or by the store after
    /// its workers went silent too often).
    Tell { line: Box<TrialLine> },
}

/// An entry with its position in the log (1, 2, ...; gaps are allowed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub seq: u64,
    #[serde(flatten)]
    pub kind: EventKind,
}

/// Who holds a lease: shown by `study show`, and used to hand back at once the trials of a
/// process on this host that is known dead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub host: String,
    pub pid: u32,
    /// e.g. "worker 2" of a process with several local workers.
    pub name: String,
}

impl Owner {
    /// This process, named `name`.
    pub fn this_process(name: impl Into<String>) -> Owner {
        Owner {
            host: url::host_name(),
            pid: std::process::id(),
            name: name.into(),
        }
    }
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} on {} (pid {})", self.name, self.host, self.pid)
    }
}

/// The right to run one trial and to record its result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    pub study: String,
    pub trial: Trial,
    /// 1 for the first claim, counting every claim of the trial.
    pub attempt: u32,
    /// Fencing token: only the holder of the current token may finish the trial.
    pub token: String,
    pub owner: Owner,
}

/// What the optimizer decided, given the events it replayed.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Run this trial; the state goes into its `Ask` event.
    Run(Trial, Option<AskState>),
    /// Nothing to start before a running trial finishes.
    Wait,
    /// The study is done: nothing more will be asked.
    Done,
}

/// What [`Store::claim`] gave.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    Run(Lease),
    Wait,
    Done,
}

/// A running trial, for status displays and for handing back a dead local process's trials.
#[derive(Debug, Clone, PartialEq)]
pub struct Running {
    pub lease: Lease,
    /// Seconds since its last heartbeat, by the store's clock.
    pub silent_s: f64,
}

/// The replay-and-decide step run under the study lock: gets the events after the caller's
/// `since` (the stale trials the store just failed included), returns the decision.
pub type Decide<'a> = dyn FnMut(&[Event]) -> Result<Decision, String> + 'a;

/// A study store. Every method is one transaction; a method that returns `Err` changed nothing.
pub trait Store: Send {
    /// The store's URL, password hidden: for messages.
    fn url(&self) -> String;

    /// Another connection to the same store (for a heartbeat thread).
    fn connect_again(&self) -> Result<Box<dyn Store>, StoreError>;

    /// Creates a study; [`StoreError::StudyExists`] if the name is taken.
    fn create_study(&mut self, study: &NewStudy) -> Result<(), StoreError>;

    /// The study named `name`; [`StoreError::NoSuchStudy`] if there is none.
    fn study(&mut self, name: &str) -> Result<StudyRecord, StoreError>;

    /// Names of the studies the store holds, oldest first.
    fn studies(&mut self) -> Result<Vec<String>, StoreError>;

    /// Under the study lock: first takes away the leases silent for longer than the study's grace
    /// period (queued again, or failed with a `Tell` event after `max_retries`); then hands out the
    /// queued trial with the lowest id if there is one; otherwise passes the events after `since`
    /// to `decide` and records its decision (an `Ask` event and a lease) in the same transaction.
    /// Trials of the baseline (ids from [`BASELINE_IDS`]) are decided the same way.
    fn claim(
        &mut self,
        study: &str,
        owner: &Owner,
        since: u64,
        decide: &mut Decide<'_>,
    ) -> Result<Claim, StoreError>;

    /// Renews a lease; `false` when it was taken away (the worker should drop the trial).
    fn heartbeat(&mut self, lease: &Lease) -> Result<bool, StoreError>;

    /// Records a finished trial (a `Tell` event) with its saved state, if any, in one
    /// transaction; the saved state of the trial it continued is deleted, since nothing can
    /// continue it again. `false`, and nothing written, when the lease was taken away.
    fn finish(
        &mut self,
        lease: &Lease,
        line: &TrialLine,
        checkpoint: Option<&[u8]>,
    ) -> Result<bool, StoreError>;

    /// Hands a trial back unfinished (a worker stopping): queued again at once, not counted as a
    /// retry. `false` when the lease was no longer held.
    fn release(&mut self, lease: &Lease) -> Result<bool, StoreError>;

    /// The study's events after `since`, in order.
    fn events(&mut self, study: &str, since: u64) -> Result<Vec<Event>, StoreError>;

    /// The study's running trials.
    fn running(&mut self, study: &str) -> Result<Vec<Running>, StoreError>;

    /// Trials asked, not finished and not running: waiting for a worker.
    fn queued(&mut self, study: &str) -> Result<Vec<Trial>, StoreError>;

    /// The saved state a trial finished with, if it is still kept.
    fn checkpoint(&mut self, study: &str, trial: u64) -> Result<Option<Vec<u8>>, StoreError>;

    /// Saves how far a running trial got (its own state after some of its epochs), replacing
    /// what it saved before, so that a later attempt of it continues there instead of starting
    /// over. `false`, and nothing written, when the lease was taken away. Deleted when the trial
    /// finishes, and with the study's other saved states.
    fn save_progress(&mut self, lease: &Lease, progress: &[u8]) -> Result<bool, StoreError>;

    /// What an earlier attempt of a trial saved with [`Store::save_progress`], if anything.
    fn progress(&mut self, study: &str, trial: u64) -> Result<Option<Vec<u8>>, StoreError>;

    /// Deletes every saved state of the study (it is done), progress included.
    fn drop_checkpoints(&mut self, study: &str) -> Result<(), StoreError>;

    /// Appends events recorded elsewhere (a run directory of an earlier release), in order, in
    /// one transaction: an `Ask` without a later `Tell` leaves its trial queued.
    fn import(&mut self, study: &str, events: &[EventKind]) -> Result<(), StoreError>;
}

/// Opens the store a URL names: `sqlite:///abs/path.db` or `sqlite://rel/path.db`,
/// `journal:///abs/folder` or `journal://rel/folder` (a folder shared by the machines, made if
/// its parent exists), `postgresql://user[:password]@host[:port]/db`, `memory://` (this process
/// only).
pub fn open(url: &str) -> Result<Box<dyn Store>, StoreError> {
    match StoreUrl::parse(url)? {
        StoreUrl::Sqlite(path) => Ok(Box::new(sqlite::SqliteStore::open(&path)?)),
        StoreUrl::Postgres(url) => Ok(Box::new(postgres::PostgresStore::open(&url)?)),
        StoreUrl::Memory => Ok(Box::new(memory::MemoryStore::new())),
        StoreUrl::Journal(folder) => Ok(Box::new(journal::JournalStore::open(&folder)?)),
    }
}

/// Reads a record the SQL backends keep as JSON text.
pub(crate) fn from_json<T: serde::de::DeserializeOwned>(
    url: &str,
    table: &str,
    json: &str,
) -> Result<T, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Backend {
        url: url.into(),
        message: format!("a record of table {table} cannot be read ({e}): a damaged store?"),
    })
}

/// Writes a record as JSON text for the SQL backends.
pub(crate) fn to_json<T: serde::Serialize>(url: &str, value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Backend {
        url: url.into(),
        message: format!("cannot encode a record: {e}"),
    })
}

/// A trial id or sequence number as SQL's signed 64-bit integer.
pub(crate) fn sql_int(url: &str, n: u64) -> Result<i64, StoreError> {
    i64::try_from(n).map_err(|_| StoreError::Backend {
        url: url.into(),
        message: format!("the number {n} is too large for the store"),
    })
}

/// [`StoreError::NoSuchStudy`]'s list of the studies a store does hold: their names, or "none".
fn known_studies<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    let names: Vec<&str> = names.into_iter().collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

/// A fresh fencing token: unique across processes and hosts with overwhelming probability.
pub fn new_token() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    format!("{:016x}{:016x}", rng.random::<u64>(), rng.random::<u64>())
}

/// The finished trials of a study, in log order.
pub fn finished_lines(store: &mut dyn Store, study: &str) -> Result<Vec<TrialLine>, StoreError> {
    Ok(store
        .events(study, 0)?
        .into_iter()
        .filter_map(|e| match e.kind {
            EventKind::Tell { line } => Some(*line),
            EventKind::Ask { .. } => None,
        })
        .collect())
}
