//! The journal store: a folder on a filesystem every machine of the cluster mounts (NFS), for
//! clusters that have a shared folder but no database server.
//!
//! The design is Optuna's `JournalFileBackend`. The folder holds `journal.log`, an append-only log
//! of operations, one JSON object per line and one line per transaction
//! (`{"ops":[{"op":"grant",...},...]}`): a study created, an event appended, a lease granted,
//! renewed, handed back or taken away, a saved state set or dropped. Saved states (checkpoints and
//! progress) are files in `blobs/`, each written atomically (a temporary name in the same folder,
//! fsync, rename) before the line that names it. Every handle keeps the state the log describes
//! and the byte offset it has read up to, and reads only the tail written since; the log is opened
//! afresh for each read, which makes NFS's close-to-open consistency show the latest appends.
//!
//! Locking: a writer creates the file `lock` with `O_EXCL` (atomic on the server from NFSv3 on),
//! holding host, pid, time and a random nonce, and removes it when done; it touches the file every
//! few seconds while it holds it. Inside the lock it replays the tail, decides, appends its line
//! with one write and fsyncs. A lock not touched for [`STALE_LOCK`] belongs to a dead writer: it is
//! renamed to a unique name first, so that of two processes breaking it only one succeeds, then
//! deleted. Waiting writers retry with short growing sleeps for [`LOCK_WAIT`]. Readers take no
//! lock.
//!
//! Torn writes: a writer killed mid-write leaves a last line without its newline (or one that is
//! not JSON). Readers ignore it; the next writer cuts it off, under the lock, before appending, so
//! no later line is glued to a fragment, and a transaction is either whole or absent. Any other
//! line that cannot be read is damage: an error naming its line number.
//!
//! Clocks: leases are judged by the system clock of the process writing (seconds since the Unix
//! epoch, stored in the operations), and a lock's age by its mtime against the local clock. The
//! machines' clocks must therefore agree (NTP) to well within the study's grace period and
//! [`STALE_LOCK`], or leases are taken away too early or too late.
//!
//! Limits: every write takes the one lock of the folder and costs a few round trips to the file
//! server, so throughput is far below PostgreSQL's (enough for trials of minutes, not for
//! hundreds of claims a second). The log only grows (heartbeats included), and a process that
//! opens the store reads it whole once. Saved states of crashed writers may stay behind in
//! `blobs/` as files no line names.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use super::trials::{self, State, TrialState, Trials, now};
use super::{
    Claim, Decide, Decision, Event, EventKind, Lease, NewStudy, Owner, Running, SCHEMA_VERSION,
    Store, StoreError, StudyRecord, TrialLine, known_studies, new_token,
};
use crate::opt::Trial;

/// The operation log, inside the store's folder.
pub const LOG: &str = "journal.log";
/// The lock file, inside the store's folder.
pub const LOCK: &str = "lock";
/// The folder of saved states, inside the store's folder.
pub const BLOBS: &str = "blobs";

/// A lock untouched this long is taken to belong to a dead writer and broken.
pub const STALE_LOCK: Duration = Duration::from_secs(30);
/// How long a writer waits for the lock; longer than [`STALE_LOCK`], so a dead writer's lock is
/// broken before anyone gives up.
pub const LOCK_WAIT: Duration = Duration::from_secs(60);
/// How often a holder touches its lock, well inside [`STALE_LOCK`] (a long `decide` must not
/// look dead).
const TOUCH_EVERY: Duration = Duration::from_secs(5);
/// The longest sleep between two tries for the lock.
const MAX_PAUSE: Duration = Duration::from_millis(20);

/// One change of the store. A line of the log holds the changes of one transaction.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Op {
    /// The first line of every log.
    Schema { version: u32 },
    Study {
        study: NewStudy,
        created_unix_s: f64,
    },
    /// An `Ask` adds its trial as queued (a `grant` in the same line starts it); a `Tell` ends it.
    Event {
        study: String,
        seq: u64,
        kind: EventKind,
    },
    Grant {
        study: String,
        trial: u64,
        token: String,
        owner: Owner,
        at: f64,
    },
    Renew {
        study: String,
        trial: u64,
        token: String,
        at: f64,
    },
    Release {
        study: String,
        trial: u64,
        token: String,
    },
    /// The lease was silent too long: queued again, counted; a `Tell` follows when it is failed.
    Stale {
        study: String,
        trial: u64,
        token: String,
        at: f64,
    },
    /// A checkpoint set (the blob's file name) or deleted.
    Checkpoint {
        study: String,
        trial: u64,
        blob: Option<String>,
    },
    /// Progress set (the blob's file name) or deleted.
    Progress {
        study: String,
        trial: u64,
        blob: Option<String>,
    },
    /// Every checkpoint and progress of the study deleted.
    DropSaved { study: String },
}

#[derive(Deserialize)]
struct Line {
    ops: Vec<Op>,
}

#[derive(Serialize)]
struct LineOut<'a> {
    ops: &'a [Op],
}

#[derive(Debug, Clone, Default)]
struct StudyState {
    events: Vec<Event>,
    trials: Trials,
    /// Trial id -> blob file name.
    checkpoints: BTreeMap<u64, String>,
    progress: BTreeMap<u64, String>,
}

impl StudyState {
    fn events_after(&self, since: u64) -> Vec<Event> {
        let from = self.events.partition_point(|e| e.seq <= since);
        self.events[from..].to_vec()
    }

    fn holds(&self, lease: &Lease) -> bool {
        trials::holds(&self.trials, lease)
    }
}

/// What the log read so far says.
#[derive(Debug, Clone, Default)]
struct Replica {
    /// Bytes of the log read: always the end of a whole line.
    offset: u64,
    /// Lines read.
    lines: usize,
    schema: Option<u32>,
    studies: Vec<(StudyRecord, StudyState)>,
    by_name: HashMap<String, usize>,
    last_seq: u64,
}

impl Replica {
    fn find(&self, name: &str) -> Option<&(StudyRecord, StudyState)> {
        self.by_name.get(name).map(|&i| &self.studies[i])
    }

    fn study(&self, name: &str, url: &str) -> Result<&(StudyRecord, StudyState), StoreError> {
        self.find(name).ok_or_else(|| StoreError::NoSuchStudy {
            url: url.into(),
            name: name.into(),
            known: known_studies(self.studies.iter().map(|(r, _)| r.study.name.as_str())),
        })
    }

    fn state_mut(&mut self, name: &str) -> Result<&mut StudyState, String> {
        match self.by_name.get(name) {
            Some(&i) => Ok(&mut self.studies[i].1),
            None => Err(format!("an operation on study \"{name}\", never created")),
        }
    }

    fn trial_mut(&mut self, study: &str, id: u64) -> Result<&mut TrialState, String> {
        self.state_mut(study)?
            .trials
            .get_mut(&id)
            .ok_or_else(|| format!("an operation on trial {id} of study \"{study}\", never asked"))
    }

    /// The running trial `id`, if `token` holds it.
    fn held_mut(&mut self, study: &str, id: u64, token: &str) -> Result<&mut TrialState, String> {
        let ts = self.trial_mut(study, id)?;
        match &ts.state {
            State::Running { token: held, .. } if held == token => Ok(ts),
            _ => Err(format!(
                "a lease operation on trial {id} of study \"{study}\" with a token that does not \
                 hold it"
            )),
        }
    }

    /// Applies one operation; `Err` names what makes it impossible (a damaged log).
    fn apply(&mut self, op: Op) -> Result<(), String> {
        if self.schema.is_none() && !matches!(op, Op::Schema { .. }) {
            return Err(
                "the log does not start with a schema version: not a dsnn-hpo journal \
                        store"
                    .into(),
            );
        }
        match op {
            Op::Schema { version } => {
                if self.schema.is_some() {
                    return Err("a second schema version".into());
                }
                self.schema = Some(version);
            }
            Op::Study {
                study,
                created_unix_s,
            } => {
                if self.by_name.contains_key(&study.name) {
                    return Err(format!("study \"{}\" created twice", study.name));
                }
                self.by_name.insert(study.name.clone(), self.studies.len());
                self.studies.push((
                    StudyRecord {
                        study,
                        created_unix_s,
                    },
                    StudyState::default(),
                ));
            }
            Op::Event { study, seq, kind } => {
                if seq <= self.last_seq {
                    return Err(format!(
                        "event {seq} after event {}: out of order",
                        self.last_seq
                    ));
                }
                self.last_seq = seq;
                let s = self.state_mut(&study)?;
                trials::apply(&mut s.trials, &kind);
                s.events.push(Event { seq, kind });
            }
            Op::Grant {
                study,
                trial,
                token,
                owner,
                at,
            } => {
                let ts = self.trial_mut(&study, trial)?;
                if !matches!(ts.state, State::Queued) {
                    return Err(format!(
                        "trial {trial} of study \"{study}\" granted while not queued"
                    ));
                }
                ts.attempt += 1;
                ts.state = State::Running {
                    token,
                    owner,
                    heartbeat_at: at,
                };
            }
            Op::Renew {
                study,
                trial,
                token,
                at,
            } => {
                if let State::Running { heartbeat_at, .. } =
                    &mut self.held_mut(&study, trial, &token)?.state
                {
                    *heartbeat_at = at;
                }
            }
            Op::Release {
                study,
                trial,
                token,
            } => self.held_mut(&study, trial, &token)?.state = State::Queued,
            Op::Stale {
                study,
                trial,
                token,
                at: _,
            } => {
                let ts = self.held_mut(&study, trial, &token)?;
                ts.stale += 1;
                ts.state = State::Queued;
            }
            Op::Checkpoint { study, trial, blob } => {
                let s = self.state_mut(&study)?;
                match blob {
                    Some(name) => s.checkpoints.insert(trial, name),
                    None => s.checkpoints.remove(&trial),
                };
            }
            Op::Progress { study, trial, blob } => {
                let s = self.state_mut(&study)?;
                match blob {
                    Some(name) => s.progress.insert(trial, name),
                    None => s.progress.remove(&trial),
                };
            }
            Op::DropSaved { study } => {
                let s = self.state_mut(&study)?;
                s.checkpoints.clear();
                s.progress.clear();
            }
        }
        Ok(())
    }
}

/// What a write transaction appends, and the blobs that no line names once it is written.
#[derive(Default)]
struct Change {
    ops: Vec<Op>,
    unlink: Vec<String>,
}

impl Change {
    fn ops(ops: Vec<Op>) -> Change {
        Change {
            ops,
            unlink: Vec::new(),
        }
    }
}

/// The lock of a store folder while held; released when dropped.
struct LockGuard {
    path: PathBuf,
    /// What this holder wrote into it: tells its own lock from one taken after it was broken.
    stamp: String,
    /// Dropping it stops the thread that keeps the lock's mtime fresh.
    stop: Option<mpsc::Sender<()>>,
    toucher: Option<thread::JoinHandle<()>>,
}

impl LockGuard {
    fn still_held(&self) -> bool {
        fs::read_to_string(&self.path).is_ok_and(|s| s == self.stamp)
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(t) = self.toucher.take() {
            let _ = t.join();
        }
        // Only our own: had ours been broken, the file may now be another holder's.
        if self.still_held() {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// A handle on a journal store folder.
pub struct JournalStore {
    folder: PathBuf,
    url: String,
    replica: Replica,
    lock_wait: Duration,
}

impl std::fmt::Debug for JournalStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JournalStore")
            .field("url", &self.url)
            .finish()
    }
}

/// How long ago `path` was last modified; `None` when it is gone. A time in the future (another
/// machine's clock ahead) counts as just now.
fn age(path: &Path) -> Option<Duration> {
    let modified = fs::metadata(path).ok()?.modified().ok()?;
    Some(
        SystemTime::now()
            .duration_since(modified)
            .unwrap_or(Duration::ZERO),
    )
}

/// The schema version a log's first line names, read loosely (a newer release may have changed
/// everything else).
fn schema_of(line: &[u8]) -> Option<u32> {
    let v: serde_json::Value = serde_json::from_slice(line).ok()?;
    let op = v.get("ops")?.get(0)?;
    if op.get("op")?.as_str()? != "schema" {
        return None;
    }
    u32::try_from(op.get("version")?.as_u64()?).ok()
}

impl JournalStore {
    /// Opens the store in `folder`, making the folder (its parent must exist) and its log.
    pub fn open(folder: &Path) -> Result<JournalStore, StoreError> {
        let url = format!("journal://{}", folder.display());
        let fail = |message: String| StoreError::Backend {
            url: url.clone(),
            message,
        };
        if folder.exists() && !folder.is_dir() {
            return Err(fail("is a file, not a folder".into()));
        }
        if !folder.exists() {
            if let Some(parent) = folder.parent()
                && !parent.as_os_str().is_empty()
                && !parent.is_dir()
            {
                return Err(fail(format!(
                    "the folder {} does not exist; create it first (on a filesystem every \
                     worker machine mounts)",
                    parent.display()
                )));
            }
            match fs::create_dir(folder) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                Err(e) => {
                    return Err(fail(format!(
                        "cannot create the folder: {e}; check that this user may write to its \
                         parent"
                    )));
                }
            }
        }
        let mut store = JournalStore {
            folder: folder.to_path_buf(),
            url,
            replica: Replica::default(),
            lock_wait: LOCK_WAIT,
        };
        let blobs = store.blobs();
        fs::create_dir_all(&blobs).map_err(|e| store.io("cannot create", &blobs, e))?;
        let log = store.log();
        OpenOptions::new()
            .append(true)
            .create(true)
            .open(&log)
            .map_err(|e| store.io("cannot create", &log, e))?;
        store.catch_up()?;
        if store.replica.lines == 0 {
            store.transact(|r| {
                Ok((
                    if r.lines == 0 {
                        Change::ops(vec![Op::Schema {
                            version: SCHEMA_VERSION,
                        }])
                    } else {
                        Change::default()
                    },
                    (),
                ))
            })?;
        }
        Ok(store)
    }

    fn log(&self) -> PathBuf {
        self.folder.join(LOG)
    }

    fn lock_path(&self) -> PathBuf {
        self.folder.join(LOCK)
    }

    fn blobs(&self) -> PathBuf {
        self.folder.join(BLOBS)
    }

    fn fail(&self, message: String) -> StoreError {
        StoreError::Backend {
            url: self.url.clone(),
            message,
        }
    }

    fn io(&self, what: &str, path: &Path, e: std::io::Error) -> StoreError {
        let hint = match e.kind() {
            ErrorKind::PermissionDenied => "; check that this user may write to the store's folder",
            ErrorKind::NotFound => "; was the store's folder moved or unmounted?",
            _ => "",
        };
        self.fail(format!("{what} {}: {e}{hint}", path.display()))
    }

    /// Reads the lines appended since this handle last read. A last line without its newline,
    /// or not readable, is left for later: a writer may still be writing it, or died doing so.
    fn catch_up(&mut self) -> Result<(), StoreError> {
        let log = self.log();
        let mut file = File::open(&log).map_err(|e| self.io("cannot read", &log, e))?;
        let len = file
            .metadata()
            .map_err(|e| self.io("cannot read", &log, e))?
            .len();
        let offset = self.replica.offset;
        if len < offset {
            self.replica = Replica::default();
            return Err(self.fail(format!(
                "{} is shorter ({len} bytes) than this process already read ({offset} bytes): \
                 it was replaced or cut; restore the folder from a copy",
                log.display()
            )));
        }
        if len == offset {
            return Ok(());
        }
        let mut tail = Vec::new();
        file.seek(SeekFrom::Start(offset))
            .and_then(|_| file.take(len - offset).read_to_end(&mut tail))
            .map_err(|e| self.io("cannot read", &log, e))?;
        let mut pos = 0;
        while let Some(nl) = tail[pos..].iter().position(|&b| b == b'\n') {
            let end = pos + nl + 1;
            let raw = &tail[pos..pos + nl];
            let number = self.replica.lines + 1;
            let line = match serde_json::from_slice::<Line>(raw) {
                Ok(line) => line,
                Err(e) => {
                    if number == 1
                        && let Some(found) = schema_of(raw).filter(|&v| v > SCHEMA_VERSION)
                    {
                        return Err(StoreError::NewerSchema {
                            url: self.url.clone(),
                            found,
                        });
                    }
                    if !tail[end..].contains(&b'\n') {
                        // The last line: torn by a writer that died; the next writer cuts it.
                        break;
                    }
                    self.replica = Replica::default();
                    return Err(self.damaged(number, format!("not an operation ({e})")));
                }
            };
            for op in line.ops {
                if let Err(message) = self.replica.apply(op) {
                    self.replica = Replica::default();
                    return Err(self.damaged(number, message));
                }
            }
            if let Some(found) = self.replica.schema.filter(|&v| v > SCHEMA_VERSION) {
                self.replica = Replica::default();
                return Err(StoreError::NewerSchema {
                    url: self.url.clone(),
                    found,
                });
            }
            self.replica.offset = offset + end as u64;
            self.replica.lines = number;
            pos = end;
        }
        Ok(())
    }

    fn damaged(&self, line: usize, message: String) -> StoreError {
        StoreError::Corrupt {
            path: self.log(),
            line,
            message: format!(
                "{message}: the study store {} is damaged; restore the folder from a copy, or \
                 export what precedes this line",
                self.url
            ),
        }
    }

    /// Takes the folder's lock, breaking a dead writer's, waiting up to `lock_wait`.
    fn lock(&self) -> Result<LockGuard, StoreError> {
        use rand::Rng;
        let path = self.lock_path();
        let started = Instant::now();
        let mut pause = Duration::from_millis(1);
        loop {
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut file) => {
                    let stamp = format!(
                        "{} pid {} at {:.3} nonce {}\n",
                        super::url::host_name(),
                        std::process::id(),
                        now(),
                        new_token()
                    );
                    if let Err(e) = file
                        .write_all(stamp.as_bytes())
                        .and_then(|()| file.sync_all())
                    {
                        let _ = fs::remove_file(&path);
                        return Err(self.io("cannot write the lock", &path, e));
                    }
                    let (stop, stopped) = mpsc::channel::<()>();
                    let toucher = thread::Builder::new()
                        .name("journal-lock".into())
                        .spawn(move || {
                            while let Err(mpsc::RecvTimeoutError::Timeout) =
                                stopped.recv_timeout(TOUCH_EVERY)
                            {
                                let _ = file.set_modified(SystemTime::now());
                            }
                        })
                        .ok();
                    return Ok(LockGuard {
                        path,
                        stamp,
                        stop: Some(stop),
                        toucher,
                    });
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists => self.break_if_stale(&path),
                Err(e) => return Err(self.io("cannot create the lock", &path, e)),
            }
            if started.elapsed() >= self.lock_wait {
                let holder = fs::read_to_string(&path).unwrap_or_default();
                return Err(self.fail(format!(
                    "the lock {} stayed taken for {:.1} s (by {}); another process is writing \
                     slowly or the machines' clocks disagree; if no process uses the store, \
                     delete the lock file",
                    path.display(),
                    self.lock_wait.as_secs_f64(),
                    holder.trim()
                )));
            }
            let jitter = rand::rng().random_range(0..=pause.as_micros() as u64);
            thread::sleep(pause + Duration::from_micros(jitter));
            pause = (pause * 2).min(MAX_PAUSE);
        }
    }

    /// Removes the lock at `path` if its holder stopped touching it [`STALE_LOCK`] ago. It is
    /// renamed away first: of two breakers only one rename succeeds.
    fn break_if_stale(&self, path: &Path) {
        if age(path).is_none_or(|a| a < STALE_LOCK) {
            return;
        }
        let Ok(seen) = fs::read(path) else {
            return;
        };
        let aside = self.folder.join(format!("{LOCK}.broken.{}", new_token()));
        if fs::rename(path, &aside).is_err() {
            return; // another process broke it first
        }
        let moved_stale = fs::read(&aside).is_ok_and(|b| b == seen)
            && age(&aside).is_some_and(|a| a >= STALE_LOCK);
        if moved_stale {
            eprintln!(
                "dsnn-hpo: warning: broke the lock of {} left by a writer silent for over {} s ({})",
                self.url,
                STALE_LOCK.as_secs(),
                String::from_utf8_lossy(&seen).trim()
            );
        } else {
            // Broken and taken again between our look and the rename: give the live one back
            // (fails if yet another process took the lock; its holder then finds it lost).
            let _ = fs::hard_link(&aside, path);
        }
        let _ = fs::remove_file(&aside);
    }

    /// One write transaction: under the lock, `body` sees the store up to date and says what to
    /// append (nothing: nothing is written). Blobs no longer named are deleted after.
    fn transact<T>(
        &mut self,
        body: impl FnOnce(&Replica) -> Result<(Change, T), StoreError>,
    ) -> Result<T, StoreError> {
        // Most of a long tail is read before locking, so the lock is held briefly.
        self.catch_up()?;
        let guard = self.lock()?;
        self.catch_up()?;
        let (write, out) = body(&self.replica)?;
        if !write.ops.is_empty() {
            self.append(&guard, &write.ops)?;
        }
        drop(guard);
        for name in write.unlink {
            let _ = fs::remove_file(self.blobs().join(name));
        }
        Ok(out)
    }

    /// Appends one line holding `ops`, under the lock, and applies it.
    fn append(&mut self, guard: &LockGuard, ops: &[Op]) -> Result<(), StoreError> {
        if !guard.still_held() {
            return Err(self.fail(format!(
                "another process broke this one's lock (held over {} s without a touch?); \
                 nothing was written, try again",
                STALE_LOCK.as_secs()
            )));
        }
        let mut bytes = serde_json::to_vec(&LineOut { ops })
            .map_err(|e| self.fail(format!("cannot encode an operation: {e}")))?;
        bytes.push(b'\n');
        let log = self.log();
        let offset = self.replica.offset;
        let mut file = OpenOptions::new()
            .write(true)
            .open(&log)
            .map_err(|e| self.io("cannot write", &log, e))?;
        let len = file
            .metadata()
            .map_err(|e| self.io("cannot write", &log, e))?
            .len();
        // Bytes after the last whole line read are a writer's torn line (catch_up, under this
        // lock, read everything else): cut them, or this line would be glued to the fragment.
        let written = (if len > offset {
            file.set_len(offset)
        } else {
            Ok(())
        })
        .and_then(|()| file.seek(SeekFrom::Start(offset)))
        .and_then(|_| file.write_all(&bytes))
        .and_then(|()| file.sync_all());
        if let Err(e) = written {
            // Leave no torn line behind.
            let _ = file.set_len(offset);
            return Err(self.io("cannot write", &log, e));
        }
        let number = self.replica.lines + 1;
        for op in ops {
            if let Err(message) = self.replica.apply(op.clone()) {
                self.replica = Replica::default();
                return Err(self.damaged(number, message));
            }
        }
        self.replica.offset = offset + bytes.len() as u64;
        self.replica.lines = number;
        Ok(())
    }

    /// Writes a saved state to its own file, atomically; its file name.
    fn write_blob(&self, bytes: &[u8]) -> Result<String, StoreError> {
        let name = format!("{}.bin", new_token());
        let dir = self.blobs();
        let tmp = dir.join(format!(".{name}.tmp"));
        let written = File::create(&tmp)
            .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()))
            .and_then(|()| fs::rename(&tmp, dir.join(&name)));
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(self.io("cannot write a saved state to", &dir, e));
        }
        // Makes the rename durable before a line names the file; some filesystems cannot sync a
        // folder, and then the file's own sync is all there is.
        if let Ok(d) = File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(name)
    }

    /// A saved state of `trial`, `progress` or its checkpoint.
    fn saved(
        &mut self,
        study: &str,
        trial: u64,
        progress: bool,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let mut missing = None;
        for _ in 0..3 {
            self.catch_up()?;
            let (_, s) = self.replica.study(study, &self.url)?;
            let names = if progress {
                &s.progress
            } else {
                &s.checkpoints
            };
            let Some(name) = names.get(&trial) else {
                return Ok(None);
            };
            let path = self.blobs().join(name);
            match fs::read(&path) {
                Ok(bytes) => return Ok(Some(bytes)),
                // Deleted by a writer after this handle read the log: the log now says so.
                Err(e) if e.kind() == ErrorKind::NotFound => missing = Some(path),
                Err(e) => return Err(self.io("cannot read the saved state", &path, e)),
            }
        }
        Err(self.fail(format!(
            "the saved state of trial {trial} of study \"{study}\" is missing ({}): the folder \
             was damaged; drop the study's saved states to go on without it",
            missing.map_or_else(String::new, |p| p.display().to_string())
        )))
    }
}

impl Store for JournalStore {
    fn url(&self) -> String {
        self.url.clone()
    }

    fn connect_again(&self) -> Result<Box<dyn Store>, StoreError> {
        Ok(Box::new(JournalStore {
            folder: self.folder.clone(),
            url: self.url.clone(),
            replica: self.replica.clone(),
            lock_wait: self.lock_wait,
        }))
    }

    fn create_study(&mut self, study: &NewStudy) -> Result<(), StoreError> {
        let url = self.url.clone();
        self.transact(|r| {
            if r.find(&study.name).is_some() {
                return Err(StoreError::StudyExists {
                    url,
                    name: study.name.clone(),
                    hint: "choose another name".into(),
                });
            }
            Ok((
                Change::ops(vec![Op::Study {
                    study: study.clone(),
                    created_unix_s: now(),
                }]),
                (),
            ))
        })
    }

    fn study(&mut self, name: &str) -> Result<StudyRecord, StoreError> {
        self.catch_up()?;
        Ok(self.replica.study(name, &self.url)?.0.clone())
    }

    fn studies(&mut self) -> Result<Vec<String>, StoreError> {
        self.catch_up()?;
        Ok(self
            .replica
            .studies
            .iter()
            .map(|(r, _)| r.study.name.clone())
            .collect())
    }

    fn claim(
        &mut self,
        study: &str,
        owner: &Owner,
        since: u64,
        decide: &mut Decide<'_>,
    ) -> Result<Claim, StoreError> {
        let url = self.url.clone();
        self.transact(|r| {
            let (rec, s) = r.study(study, &url)?;
            let leases = rec.study.leases;
            let t = now();
            let mut ops = Vec::new();
            let mut seq = r.last_seq;
            let mut told = Vec::new();
            let mut requeued = None;
            // Take away silent leases; the line is written only if the claim succeeds.
            for (&id, ts) in &s.trials {
                if let State::Running {
                    token,
                    owner: silent,
                    heartbeat_at,
                } = &ts.state
                    && t - heartbeat_at > leases.grace_s
                {
                    ops.push(Op::Stale {
                        study: study.into(),
                        trial: id,
                        token: token.clone(),
                        at: t,
                    });
                    let times = ts.stale + 1;
                    if times > leases.max_retries {
                        seq += 1;
                        let kind = EventKind::Tell {
                            line: Box::new(TrialLine::failed_silent(&ts.trial, times, silent, t)),
                        };
                        told.push(Event {
                            seq,
                            kind: kind.clone(),
                        });
                        ops.push(Op::Event {
                            study: study.into(),
                            seq,
                            kind,
                        });
                    } else if requeued.is_none() {
                        requeued = Some(id);
                    }
                }
            }
            let queued = s
                .trials
                .values()
                .find(|ts| matches!(ts.state, State::Queued))
                .map(|ts| ts.trial.id);
            let next = match (queued, requeued) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let grant = |trial: &Trial, attempt: u32, ops: &mut Vec<Op>| {
                let token = new_token();
                ops.push(Op::Grant {
                    study: study.into(),
                    trial: trial.id,
                    token: token.clone(),
                    owner: owner.clone(),
                    at: t,
                });
                Claim::Run(Lease {
                    study: study.into(),
                    trial: trial.clone(),
                    attempt,
                    token,
                    owner: owner.clone(),
                })
            };
            if let Some(ts) = next.and_then(|id| s.trials.get(&id)) {
                let claim = grant(&ts.trial, ts.attempt + 1, &mut ops);
                return Ok((Change::ops(ops), claim));
            }
            let mut events = s.events_after(since);
            events.extend(told);
            let decision = match decide(&events) {
                Ok(Decision::Run(trial, _)) if s.trials.contains_key(&trial.id) => Err(format!(
                    "the optimizer asked for trial {} again (it was asked before)",
                    trial.id
                )),
                other => other,
            };
            match decision.map_err(StoreError::Decide)? {
                Decision::Wait => Ok((Change::ops(ops), Claim::Wait)),
                Decision::Done => Ok((Change::ops(ops), Claim::Done)),
                Decision::Run(trial, state) => {
                    ops.push(Op::Event {
                        study: study.into(),
                        seq: seq + 1,
                        kind: EventKind::Ask {
                            trial: trial.clone(),
                            state,
                        },
                    });
                    let claim = grant(&trial, 1, &mut ops);
                    Ok((Change::ops(ops), claim))
                }
            }
        })
    }

    fn heartbeat(&mut self, lease: &Lease) -> Result<bool, StoreError> {
        let url = self.url.clone();
        self.transact(|r| {
            let (_, s) = r.study(&lease.study, &url)?;
            if !s.holds(lease) {
                return Ok((Change::default(), false));
            }
            let renew = Op::Renew {
                study: lease.study.clone(),
                trial: lease.trial.id,
                token: lease.token.clone(),
                at: now(),
            };
            Ok((Change::ops(vec![renew]), true))
        })
    }

    fn finish(
        &mut self,
        lease: &Lease,
        line: &TrialLine,
        checkpoint: Option<&[u8]>,
    ) -> Result<bool, StoreError> {
        // Written before locking, so the lock is not held for a large write.
        let blob = checkpoint.map(|b| self.write_blob(b)).transpose()?;
        let url = self.url.clone();
        let done = self.transact(|r| {
            let (_, s) = r.study(&lease.study, &url)?;
            if !s.holds(lease) {
                return Ok((Change::default(), false));
            }
            let study = &lease.study;
            let id = lease.trial.id;
            let mut w = Change::ops(vec![Op::Event {
                study: study.clone(),
                seq: r.last_seq + 1,
                kind: EventKind::Tell {
                    line: Box::new(line.clone()),
                },
            }]);
            if let Some(name) = &blob {
                w.unlink.extend(s.checkpoints.get(&id).cloned());
                w.ops.push(Op::Checkpoint {
                    study: study.clone(),
                    trial: id,
                    blob: Some(name.clone()),
                });
            }
            if let Some(from) = line.continued_from {
                let current = if from == id {
                    blob.clone().or_else(|| s.checkpoints.get(&id).cloned())
                } else {
                    s.checkpoints.get(&from).cloned()
                };
                if let Some(name) = current {
                    w.unlink.push(name);
                    w.ops.push(Op::Checkpoint {
                        study: study.clone(),
                        trial: from,
                        blob: None,
                    });
                }
            }
            if let Some(name) = s.progress.get(&id) {
                w.unlink.push(name.clone());
                w.ops.push(Op::Progress {
                    study: study.clone(),
                    trial: id,
                    blob: None,
                });
            }
            Ok((w, true))
        })?;
        if !done && let Some(name) = blob {
            let _ = fs::remove_file(self.blobs().join(name));
        }
        Ok(done)
    }

    fn release(&mut self, lease: &Lease) -> Result<bool, StoreError> {
        let url = self.url.clone();
        self.transact(|r| {
            let (_, s) = r.study(&lease.study, &url)?;
            if !s.holds(lease) {
                return Ok((Change::default(), false));
            }
            let release = Op::Release {
                study: lease.study.clone(),
                trial: lease.trial.id,
                token: lease.token.clone(),
            };
            Ok((Change::ops(vec![release]), true))
        })
    }

    fn events(&mut self, study: &str, since: u64) -> Result<Vec<Event>, StoreError> {
        self.catch_up()?;
        Ok(self.replica.study(study, &self.url)?.1.events_after(since))
    }

    fn running(&mut self, study: &str) -> Result<Vec<Running>, StoreError> {
        self.catch_up()?;
        let (_, s) = self.replica.study(study, &self.url)?;
        Ok(trials::running(&s.trials, study, now()))
    }

    fn queued(&mut self, study: &str) -> Result<Vec<Trial>, StoreError> {
        self.catch_up()?;
        let (_, s) = self.replica.study(study, &self.url)?;
        Ok(trials::queued(&s.trials))
    }

    fn checkpoint(&mut self, study: &str, trial: u64) -> Result<Option<Vec<u8>>, StoreError> {
        self.saved(study, trial, false)
    }

    fn save_progress(&mut self, lease: &Lease, progress: &[u8]) -> Result<bool, StoreError> {
        let blob = self.write_blob(progress)?;
        let url = self.url.clone();
        let saved = self.transact(|r| {
            let (_, s) = r.study(&lease.study, &url)?;
            if !s.holds(lease) {
                return Ok((Change::default(), false));
            }
            let mut w = Change::ops(vec![Op::Progress {
                study: lease.study.clone(),
                trial: lease.trial.id,
                blob: Some(blob.clone()),
            }]);
            w.unlink.extend(s.progress.get(&lease.trial.id).cloned());
            Ok((w, true))
        })?;
        if !saved {
            let _ = fs::remove_file(self.blobs().join(blob));
        }
        Ok(saved)
    }

    fn progress(&mut self, study: &str, trial: u64) -> Result<Option<Vec<u8>>, StoreError> {
        self.saved(study, trial, true)
    }

    fn drop_checkpoints(&mut self, study: &str) -> Result<(), StoreError> {
        let url = self.url.clone();
        self.transact(|r| {
            let (_, s) = r.study(study, &url)?;
            let unlink: Vec<String> = s
                .checkpoints
                .values()
                .chain(s.progress.values())
                .cloned()
                .collect();
            if unlink.is_empty() {
                return Ok((Change::default(), ()));
            }
            let ops = vec![Op::DropSaved {
                study: study.into(),
            }];
            Ok((Change { ops, unlink }, ()))
        })
    }

    fn import(&mut self, study: &str, events: &[EventKind]) -> Result<(), StoreError> {
        let url = self.url.clone();
        self.transact(|r| {
            r.study(study, &url)?;
            let ops = events
                .iter()
                .zip(r.last_seq + 1..)
                .map(|(kind, seq)| Op::Event {
                    study: study.into(),
                    seq,
                    kind: kind.clone(),
                })
                .collect();
            Ok((Change::ops(ops), ()))
        })
    }
}

#[cfg(test)]
impl JournalStore {
    /// A shorter wait for the lock, so a test of a held lock ends soon.
    fn with_lock_wait(mut self, wait: Duration) -> JournalStore {
        self.lock_wait = wait;
        self
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::store::{LeaseSettings, RunInfo};

    fn new_study(name: &str) -> NewStudy {
        NewStudy {
            name: name.into(),
            info: RunInfo {
                objectives: vec!["loss".into()],
                objective_sources: vec!["1 - validation accuracy".into()],
                default_config: crate::space::Config::new(),
                meta_hash: "abc".into(),
                constraint_reference: BTreeMap::new(),
                config_toml: String::new(),
            },
            leases: LeaseSettings::default(),
            data_fingerprint: None,
            version: "0.1.0".into(),
        }
    }

    fn trial(id: u64) -> Trial {
        let mut config = crate::space::Config::new();
        config.insert("lr", 0.001 * (id + 1) as f64);
        Trial {
            id,
            config,
            budget: 1.0,
            continues: None,
        }
    }

    fn owner(name: &str) -> Owner {
        Owner::this_process(name)
    }

    /// A store in a fresh folder holding study "s".
    fn store(dir: &Path) -> JournalStore {
        let mut store = JournalStore::open(&dir.join("j")).unwrap();
        store.create_study(&new_study("s")).unwrap();
        store
    }

    fn claim_new(store: &mut JournalStore, id: u64) -> Lease {
        match store
            .claim("s", &owner("w"), 0, &mut |_| {
                Ok(Decision::Run(trial(id), None))
            })
            .unwrap()
        {
            Claim::Run(lease) => lease,
            other => panic!("expected a lease, got {other:?}"),
        }
    }

    fn append_raw(store: &JournalStore, bytes: &[u8]) {
        let mut f = OpenOptions::new().append(true).open(store.log()).unwrap();
        f.write_all(bytes).unwrap();
    }

    #[test]
    fn a_torn_last_line_is_ignored_and_cut_before_the_next_append() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = store(dir.path());
        let lease = claim_new(&mut store, 0);
        let whole = fs::read(store.log()).unwrap();
        // A writer killed half-way through its line.
        append_raw(&store, br#"{"ops":[{"op":"event","study":"s","seq":9,"ki"#);

        let mut fresh = JournalStore::open(&dir.path().join("j")).unwrap();
        assert_eq!(
            fresh.events("s", 0).unwrap().len(),
            1,
            "the torn line was read"
        );
        assert_eq!(fresh.running("s").unwrap().len(), 1);

        let line = TrialLine::success(0, trial(0).config, 1.0, vec![0.5]);
        assert!(store.finish(&lease, &line, Some(b"state")).unwrap());
        let after = fs::read(store.log()).unwrap();
        assert!(
            after.starts_with(&whole),
            "the lines before the fragment changed"
        );
        assert!(after.ends_with(b"\n"));
        assert!(
            !after.windows(4).any(|w| w == br#""ki""#),
            "the fragment was not cut off"
        );
        for (i, l) in after
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .enumerate()
        {
            serde_json::from_slice::<Line>(l)
                .unwrap_or_else(|e| panic!("line {} unreadable after the append: {e}", i + 1));
        }
        // Both the handle that read up to the fragment and a new one see the finish.
        for s in [
            &mut fresh,
            &mut JournalStore::open(&dir.path().join("j")).unwrap(),
        ] {
            let ev = s.events("s", 0).unwrap();
            assert!(
                matches!(
                    &ev[..],
                    [
                        _,
                        Event {
                            kind: EventKind::Tell { .. },
                            ..
                        }
                    ]
                ),
                "{ev:?}"
            );
            assert_eq!(s.checkpoint("s", 0).unwrap(), Some(b"state".to_vec()));
            assert!(s.running("s").unwrap().is_empty());
        }
    }

    #[test]
    fn a_stale_lock_is_broken_and_a_live_one_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = store(dir.path()).with_lock_wait(Duration::from_millis(300));
        let lock = store.lock_path();

        // A live holder: waited for, then a clear error naming the folder; its lock is kept.
        fs::write(&lock, "otherhost pid 7 at 0 nonce x\n").unwrap();
        let e = store.create_study(&new_study("t")).unwrap_err().to_string();
        assert!(
            e.contains(&store.url) && e.contains("lock") && e.contains("otherhost"),
            "{e}"
        );
        assert!(lock.exists(), "a live lock was broken");

        // The holder died: its lock ages past STALE_LOCK and is broken.
        let old = SystemTime::now() - STALE_LOCK - Duration::from_secs(5);
        File::options()
            .write(true)
            .open(&lock)
            .unwrap()
            .set_modified(old)
            .unwrap();
        // Several writers meet the dead lock at once: one breaks it, all get their turn.
        let writers: Vec<_> = (0..4)
            .map(|i| {
                let mut h = store.connect_again().unwrap();
                thread::spawn(move || h.create_study(&new_study(&format!("t{i}"))))
            })
            .collect();
        for w in writers {
            w.join().unwrap().unwrap();
        }
        let mut names = store.studies().unwrap();
        names.sort();
        assert_eq!(names, ["s", "t0", "t1", "t2", "t3"]);
        let reread = JournalStore::open(&dir.path().join("j"))
            .unwrap()
            .studies()
            .unwrap();
        assert_eq!(reread.len(), 5, "the log read afresh: {reread:?}");
        assert!(!lock.exists(), "the lock was not released");
        let left: Vec<_> = fs::read_dir(dir.path().join("j"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(LOCK))
            .collect();
        assert!(left.is_empty(), "lock files left behind: {left:?}");
    }

    #[test]
    fn a_damaged_middle_line_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = store(dir.path());
        for id in 0..3 {
            claim_new(&mut store, id);
        }
        let text = fs::read_to_string(store.log()).unwrap();
        let mut lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "schema, study, three claims");
        lines[2] = r#"{"ops":[{"op":"event","study":"s","#;
        fs::write(store.log(), lines.join("\n") + "\n").unwrap();
        let e = JournalStore::open(&dir.path().join("j")).unwrap_err();
        assert!(
            matches!(&e, StoreError::Corrupt { line: 3, .. }),
            "expected line 3 named, got {e:?}"
        );
        assert!(e.to_string().contains("line 3"), "{e}");

        // A line that reads but cannot have happened is damage too.
        lines[2] = r#"{"ops":[{"op":"release","study":"s","trial":42,"token":"x"}]}"#;
        fs::write(store.log(), lines.join("\n") + "\n").unwrap();
        let e = JournalStore::open(&dir.path().join("j")).unwrap_err();
        assert!(matches!(&e, StoreError::Corrupt { line: 3, .. }), "{e:?}");
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("j");
        fs::create_dir(&folder).unwrap();
        fs::write(
            folder.join(LOG),
            format!(
                "{{\"ops\":[{{\"op\":\"schema\",\"version\":{}}}]}}\n{{\"ops\":[{{\"op\":\"from_the_future\"}}]}}\n",
                SCHEMA_VERSION + 1
            ),
        )
        .unwrap();
        match JournalStore::open(&folder) {
            Err(StoreError::NewerSchema { found, .. }) => assert_eq!(found, SCHEMA_VERSION + 1),
            other => panic!("expected NewerSchema, got {other:?}"),
        }
    }

    #[test]
    fn open_makes_the_folder_only_under_an_existing_parent() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no/such/folder");
        let Err(e) = crate::store::open(&format!("journal://{}", missing.display())) else {
            panic!("a folder under a missing parent was opened");
        };
        let e = e.to_string();
        assert!(
            e.contains("journal://") && e.contains("does not exist"),
            "{e}"
        );
        let file = dir.path().join("f");
        fs::write(&file, "x").unwrap();
        let e = JournalStore::open(&file).unwrap_err().to_string();
        assert!(e.contains("not a folder"), "{e}");
        let mut s =
            crate::store::open(&format!("journal://{}", dir.path().join("new").display())).unwrap();
        assert!(s.studies().unwrap().is_empty());
        assert!(dir.path().join("new").join(LOG).is_file());
    }

    #[test]
    fn saved_states_are_files_deleted_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = store(dir.path());
        let blobs = || {
            fs::read_dir(dir.path().join("j").join(BLOBS))
                .unwrap()
                .count()
        };
        let l0 = claim_new(&mut store, 0);
        assert!(store.save_progress(&l0, b"half").unwrap());
        assert!(store.save_progress(&l0, b"more").unwrap());
        assert_eq!(blobs(), 1, "replaced progress left its file");
        let line = TrialLine::success(0, trial(0).config, 1.0, vec![0.5]);
        assert!(store.finish(&l0, &line, Some(b"done")).unwrap());
        assert_eq!(blobs(), 1, "the finished trial's progress file is kept");
        let mut forged = claim_new(&mut store, 1);
        forged.token = new_token();
        assert!(!store.save_progress(&forged, b"x").unwrap());
        assert_eq!(blobs(), 1, "refused progress left its file");
        store.drop_checkpoints("s").unwrap();
        assert_eq!(blobs(), 0);
        assert_eq!(store.checkpoint("s", 0).unwrap(), None);
    }

    #[test]
    fn two_handles_claiming_at_once_never_share_a_trial() {
        const TRIALS: u64 = 40;
        let dir = tempfile::tempdir().unwrap();
        let mut store = store(dir.path());
        let asks: Vec<EventKind> = (0..TRIALS)
            .map(|id| EventKind::Ask {
                trial: trial(id),
                state: None,
            })
            .collect();
        store.import("s", &asks).unwrap();
        // Two handles share this one's replica, the third reads the log from the start.
        let handles: Vec<Box<dyn Store>> = vec![
            store.connect_again().unwrap(),
            store.connect_again().unwrap(),
            Box::new(JournalStore::open(&dir.path().join("j")).unwrap()),
        ];
        let threads: Vec<_> = handles
            .into_iter()
            .enumerate()
            .map(|(w, mut h)| {
                thread::spawn(move || {
                    let mut got = Vec::new();
                    loop {
                        let claim = h
                            .claim("s", &owner(&format!("w{w}")), 0, &mut |_| {
                                Ok(Decision::Done)
                            })
                            .unwrap();
                        match claim {
                            Claim::Run(lease) => {
                                // Half are handed back, to be claimed again by either.
                                if lease.attempt == 1 && lease.trial.id % 2 == 0 {
                                    assert!(h.release(&lease).unwrap());
                                } else {
                                    got.push((lease.trial.id, lease.token));
                                }
                            }
                            Claim::Done => return got,
                            Claim::Wait => panic!("the decide never waits"),
                        }
                    }
                })
            })
            .collect();
        let mut ids = Vec::new();
        let mut tokens = BTreeSet::new();
        for t in threads {
            for (id, token) in t.join().unwrap() {
                ids.push(id);
                assert!(tokens.insert(token), "a token handed out twice");
            }
        }
        ids.sort_unstable();
        assert_eq!(
            ids,
            (0..TRIALS).collect::<Vec<_>>(),
            "each trial held by one worker"
        );
        let running = store.running("s").unwrap();
        assert_eq!(running.len(), TRIALS as usize);
        assert!(store.queued("s").unwrap().is_empty());
    }
}
