//! `dsnn-hpo worker` processes on one study, as users start them: several at once, some killed
//! (kill -9) in the middle of trials and replaced, one stopped (SIGSTOP) past its grace period.
//! The objective is a command that sleeps, so the test measures the coordination, not training.
//! PostgreSQL needs `DSNN_HPO_TEST_POSTGRES`; SQLite and the journal run everywhere.

#![cfg(feature = "dsnn")]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dsnn_hpo::store::postgres::TestSchemas;
use dsnn_hpo::store::{self, EventKind, TrialStatus};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_dsnn-hpo"))
}

/// A study of a sleeping command objective: each trial sleeps `per_epoch` s per budget unit.
fn write_config(dir: &Path, trials: usize, per_epoch: f64, grace_s: f64) -> std::path::PathBuf {
    let path = dir.join("study.toml");
    let text = format!(
        r#"name = "sleepy"
[objective]
kind = "command"
shell = "python3 -c \"import json,sys,time; t=json.loads(sys.stdin.readline()); time.sleep({per_epoch}*t['budget']); x=t['config']['x']; print(json.dumps({{'loss': (1-x)**2 + 1/(1+t['budget']), 'energy': x*t['budget']}}))\""
names = ["loss", "energy"]
timeout_s = 60

[search]
trials = {trials}
seed = 3

[fidelity]
min_epochs = 1
max_epochs = 9
eta = 3

[study]
heartbeat_s = 0.25
grace_s = {grace_s}
max_retries = 2

[[space]]
name = "x"
type = "float"
low = 0.0
high = 1.0
default = 0.5
"#
    );
    std::fs::write(&path, text).expect("write config");
    path
}

fn create(url: &str, config: &Path) {
    let out = bin()
        .args([
            "study",
            "create",
            "--storage",
            url,
            "--study",
            "s",
            "--config",
        ])
        .arg(config)
        .output()
        .expect("run study create");
    assert!(
        out.status.success(),
        "study create failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn worker(url: &str) -> Child {
    bin()
        .args(["worker", "--storage", url, "--study", "s", "--quiet"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start worker")
}

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_all(children: Vec<Child>, limit: Duration) -> Vec<String> {
    let t0 = Instant::now();
    let mut stderrs = Vec::new();
    for mut c in children {
        loop {
            if let Some(status) = c.try_wait().expect("wait") {
                let mut err = String::new();
                if let Some(mut e) = c.stderr.take() {
                    use std::io::Read;
                    let _ = e.read_to_string(&mut err);
                }
                assert!(status.success(), "a worker failed ({status}): {err}");
                stderrs.push(err);
                break;
            }
            if t0.elapsed() > limit {
                let _ = c.kill();
                panic!("a worker did not finish within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    stderrs
}

/// Every asked trial finished exactly once, no finish without an ask, no configuration and
/// budget twice; returns the finished trials' ids.
fn check_exactly_once(url: &str, trials: usize) -> BTreeSet<u64> {
    let mut s = store::open(url).expect("open store");
    let events = s.events("s", 0).expect("events");
    let mut asked = BTreeSet::new();
    let mut told: BTreeMap<u64, usize> = BTreeMap::new();
    let mut pairs = BTreeSet::new();
    for e in &events {
        match &e.kind {
            EventKind::Ask { trial, .. } => {
                assert!(asked.insert(trial.id), "trial {} asked twice", trial.id)
            }
            EventKind::Tell { line } => {
                assert!(
                    asked.contains(&line.id),
                    "trial {} finished, never asked",
                    line.id
                );
                *told.entry(line.id).or_default() += 1;
                assert_eq!(
                    line.status,
                    TrialStatus::Success,
                    "trial {}: {:?}",
                    line.id,
                    line.reason
                );
                let key = (
                    serde_json::to_string(&line.config).expect("json"),
                    line.budget.to_bits(),
                );
                assert!(
                    pairs.insert(key),
                    "configuration x budget of trial {} ran twice",
                    line.id
                );
            }
        }
    }
    assert_eq!(
        told.keys().copied().collect::<BTreeSet<_>>(),
        asked,
        "asked but not finished"
    );
    assert!(
        told.values().all(|&n| n == 1),
        "a trial finished twice: {told:?}"
    );
    let optimizer_trials = asked.iter().filter(|&&id| id < store::BASELINE_IDS).count();
    assert_eq!(optimizer_trials, trials, "the study's trial count");
    assert!(s.running("s").expect("running").is_empty());
    assert!(s.queued("s").expect("queued").is_empty());
    asked
}

fn killed_workers_lose_nothing(url: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(dir.path(), 24, 0.15, 30.0);
    create(url, &config);
    let mut workers: Vec<Child> = (0..4).map(|_| worker(url)).collect();
    let mut s = store::open(url).expect("open store");
    // Kill two workers while each holds a trial.
    let mut victims = Vec::new();
    wait_until(
        "two workers running trials",
        Duration::from_secs(60),
        || {
            let running = s.running("s").expect("running");
            victims = workers
                .iter()
                .enumerate()
                .filter(|(_, w)| running.iter().any(|r| r.lease.owner.pid == w.id()))
                .map(|(k, _)| k)
                .take(2)
                .collect();
            victims.len() == 2
        },
    );
    let held: Vec<u64> = s
        .running("s")
        .expect("running")
        .into_iter()
        .filter(|r| {
            victims
                .iter()
                .any(|&k| workers[k].id() == r.lease.owner.pid)
        })
        .map(|r| r.lease.trial.id)
        .collect();
    for &k in victims.iter().rev() {
        let mut w = workers.remove(k);
        w.kill().expect("kill -9");
        w.wait().expect("reap");
    }
    // Replacements; they hand the dead processes' trials back at once (same host).
    workers.push(worker(url));
    workers.push(worker(url));
    wait_all(workers, Duration::from_secs(180));
    let finished = check_exactly_once(url, 24);
    for id in held {
        assert!(
            finished.contains(&id),
            "trial {id} of a killed worker never finished"
        );
    }
}

#[test]
fn sqlite_workers_killed_mid_trial_lose_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("study.db").display());
    killed_workers_lose_nothing(&url);
}

#[test]
fn journal_workers_killed_mid_trial_lose_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("journal://{}", dir.path().join("journal").display());
    killed_workers_lose_nothing(&url);
}

#[test]
fn postgres_workers_killed_mid_trial_lose_nothing() {
    let Some(db) = TestSchemas::from_env() else {
        return;
    };
    killed_workers_lose_nothing(&db.fresh_url());
}

/// A trial whose worker is killed after some epochs continues, on the next worker, from the
/// progress the killed one saved through the store (the workers share no folder), not from
/// epoch 0; the progress is gone from the store once the trial finished.
/// A study of two 8-epoch trials of a command that saves its progress after every epoch and
/// logs `trial epoch pid` per epoch trained to the returned file (`dir` holds both).
fn progress_study(url: &str, dir: &Path) -> std::path::PathBuf {
    let log = dir.join("epochs.log");
    let script = dir.join("objective.py");
    // One line per epoch trained: trial, epoch, process.
    std::fs::write(
        &script,
        r#"import json, os, sys, time
t = json.loads(sys.stdin.readline())
p = os.environ["DSNN_HPO_PROGRESS"]
done = [int(g) for g in os.listdir(p) if g.isdigit()]
start = max(done) if done else 0
for e in range(start, int(t["budget"])):
    time.sleep(0.4)
    tmp = os.path.join(p, "%d.tmp" % (e + 1))
    os.makedirs(tmp)
    os.rename(tmp, os.path.join(p, str(e + 1)))
    with open(sys.argv[1], "a") as f:
        f.write("%d %d %d\n" % (t["trial_id"], e + 1, os.getpid()))
x = t["config"]["x"]
print(json.dumps({"loss": (1 - x) ** 2, "energy": x}))
"#,
    )
    .expect("write script");
    let config = dir.join("study.toml");
    std::fs::write(
        &config,
        format!(
            r#"name = "progress"
[objective]
kind = "command"
command = ["python3", "{}", "{}"]
names = ["loss", "energy"]
timeout_s = 60
[search]
trials = 2
seed = 1
[fidelity]
min_epochs = 8
max_epochs = 8
[study]
heartbeat_s = 0.2
grace_s = 30
[[space]]
name = "x"
type = "float"
low = 0.0
high = 1.0
default = 0.5
"#,
            script.display(),
            log.display()
        ),
    )
    .expect("write config");
    create(url, &config);
    log
}

/// The lines of a [`progress_study`] log: (trial, epoch, process).
fn epoch_lines(log: &Path) -> Vec<(u64, u64, u64)> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let v: Vec<u64> = l.split(' ').filter_map(|x| x.parse().ok()).collect();
            (v.len() == 3).then(|| (v[0], v[1], v[2]))
        })
        .collect()
}

fn a_killed_trial_continues_its_progress(url: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = progress_study(url, dir.path());
    let lines = || epoch_lines(&log);
    let mut a = worker(url);
    wait_until(
        "3 epochs of the first trial",
        Duration::from_secs(60),
        || {
            if let Some(status) = a.try_wait().expect("wait") {
                let mut err = String::new();
                if let Some(mut e) = a.stderr.take() {
                    use std::io::Read;
                    let _ = e.read_to_string(&mut err);
                }
                let lines = store::open(url)
                    .and_then(|mut s| store::finished_lines(s.as_mut(), "s"))
                    .expect("lines");
                panic!("the worker ended early ({status}): {err} {lines:?}");
            }
            lines().len() >= 3
        },
    );
    let (victim, _, first_pid) = lines()[0];
    // A few heartbeats, so the newest progress reached the store.
    std::thread::sleep(Duration::from_millis(800));
    a.kill().expect("kill -9");
    a.wait().expect("reap");
    let killed_at = lines()
        .iter()
        .filter(|(t, _, p)| *t == victim && *p == first_pid)
        .map(|(_, e, _)| *e)
        .max()
        .expect("epochs before the kill");
    let b = worker(url);
    wait_all(vec![b], Duration::from_secs(120));
    check_exactly_once(url, 2);
    let resumed: Vec<u64> = lines()
        .iter()
        .filter(|(t, _, p)| *t == victim && *p != first_pid)
        .map(|(_, e, _)| *e)
        .collect();
    assert!(
        !resumed.is_empty() && resumed[0] > 1 && resumed[0] + 2 >= killed_at,
        "trial {victim} killed after epoch {killed_at} went on from epochs {resumed:?}"
    );
    assert_eq!(resumed.last(), Some(&8));
    let mut s = store::open(url).expect("open store");
    assert_eq!(s.progress("s", victim).expect("progress"), None);
}

/// A worker given a folder that still holds a killed run's progress of the same trial ids (a
/// folder named again, or the default one when a later process got the same id) does not
/// continue it: the store has no progress for these trials, so each trains from epoch 0.
#[test]
fn a_fresh_trial_ignores_progress_left_in_the_local_folder() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("study.db").display());
    let log = progress_study(&url, dir.path());
    let checkpoints = dir.path().join("checkpoints");
    for trial in 0..2 {
        for epoch in 1..=8 {
            std::fs::create_dir_all(checkpoints.join(format!("{trial}.progress/{epoch}")))
                .expect("stale progress");
        }
    }
    let w = bin()
        .args([
            "worker",
            "--storage",
            &url,
            "--study",
            "s",
            "--quiet",
            "--checkpoints",
        ])
        .arg(&checkpoints)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start worker");
    wait_all(vec![w], Duration::from_secs(120));
    check_exactly_once(&url, 2);
    for trial in 0..2 {
        let epochs: Vec<u64> = epoch_lines(&log)
            .iter()
            .filter(|(t, _, _)| *t == trial)
            .map(|(_, e, _)| *e)
            .collect();
        assert_eq!(epochs, (1..=8).collect::<Vec<u64>>(), "trial {trial}");
    }
}

#[test]
fn sqlite_killed_trial_continues_its_progress() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("study.db").display());
    a_killed_trial_continues_its_progress(&url);
}

#[test]
fn journal_killed_trial_continues_its_progress() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("journal://{}", dir.path().join("journal").display());
    a_killed_trial_continues_its_progress(&url);
}

#[test]
fn postgres_killed_trial_continues_its_progress() {
    let Some(db) = TestSchemas::from_env() else {
        return;
    };
    a_killed_trial_continues_its_progress(&db.fresh_url());
}

/// A worker stopped past the grace period loses its trial to another, and its late result is
/// refused when it wakes.
fn stopped_worker_is_fenced(url: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    // Trials long enough (budget 1: 2 s) to stop a worker inside one.
    let config = write_config(dir.path(), 4, 2.0, 1.0);
    create(url, &config);
    let a = worker(url);
    let mut s = store::open(url).expect("open store");
    let mut trial = None;
    wait_until("the worker to run a trial", Duration::from_secs(60), || {
        trial = s
            .running("s")
            .expect("running")
            .into_iter()
            .find(|r| r.lease.owner.pid == a.id())
            .map(|r| r.lease.trial.id);
        trial.is_some()
    });
    let trial = trial.expect("a running trial");
    let pid = a.id().to_string();
    let signal = |sig: &str| {
        let ok = Command::new("kill")
            .args([sig, &pid])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill {sig} {pid}");
    };
    signal("-STOP");
    // Past the grace period another worker takes the trial over and finishes it.
    let b = worker(url);
    wait_until(
        "the trial to be finished by the other worker",
        Duration::from_secs(60),
        || {
            store::finished_lines(s.as_mut(), "s")
                .expect("lines")
                .iter()
                .any(|l| l.id == trial)
        },
    );
    signal("-CONT");
    let stderrs = wait_all(vec![a, b], Duration::from_secs(180));
    assert!(
        stderrs[0].contains(&format!("trial {trial}: result refused")),
        "the stopped worker's late result was not refused: {}",
        stderrs[0]
    );
    check_exactly_once(url, 4);
}

#[test]
fn sqlite_stopped_worker_is_fenced() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("study.db").display());
    stopped_worker_is_fenced(&url);
}

#[test]
fn journal_stopped_worker_is_fenced() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("journal://{}", dir.path().join("journal").display());
    stopped_worker_is_fenced(&url);
}

#[test]
fn postgres_stopped_worker_is_fenced() {
    let Some(db) = TestSchemas::from_env() else {
        return;
    };
    stopped_worker_is_fenced(&db.fresh_url());
}

/// Bad stores and studies are errors that name the URL (password hidden) and what to do.
#[test]
fn bad_stores_and_studies_are_named_errors() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("study.db").display());
    let config = write_config(dir.path(), 4, 0.0, 30.0);
    create(&url, &config);
    let fail = |args: &[&str]| {
        let out = bin().args(args).output().expect("run");
        assert_eq!(out.status.code(), Some(2), "{args:?} should fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let e = fail(&["worker", "--storage", &url, "--study", "nope"]);
    assert!(
        e.contains("no study named \"nope\"") && e.contains("s"),
        "{e}"
    );
    let e = fail(&["pareto", "--storage", &url, "--study", "nope"]);
    assert!(e.contains("no study named \"nope\""), "{e}");
    let e = fail(&["study", "list", "--storage", "mysql://bob:pw@h/db"]);
    assert!(
        e.contains("unknown scheme \"mysql\"") && !e.contains("pw"),
        "{e}"
    );
    let missing = dir.path().join("no/such/folder/x.db");
    let e = fail(&[
        "study",
        "list",
        "--storage",
        &format!("sqlite://{}", missing.display()),
    ]);
    assert!(e.contains("no/such/folder"), "{e}");
    // The same name twice is refused.
    let out = bin()
        .args([
            "study",
            "create",
            "--storage",
            &url,
            "--study",
            "s",
            "--config",
        ])
        .arg(&config)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    // A wrong password: the URL in the message has it hidden.
    if let Some(db) = TestSchemas::from_env() {
        let base = db.base_url();
        if let Some(rest) = base.strip_prefix("postgresql://root@") {
            let bad = format!("postgresql://nosuchuser:secret@{rest}");
            let e = fail(&["study", "list", "--storage", &bad]);
            assert!(
                e.contains("nosuchuser:***@") && !e.contains("secret"),
                "{e}"
            );
        }
    }
    // A finished study's list and show.
    let w = worker(&url);
    wait_all(vec![w], Duration::from_secs(120));
    let out = bin()
        .args(["study", "show", "--storage", &url, "--study", "s"])
        .output()
        .expect("run");
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("finished (0 failed, 0 infeasible), 0 running, 0 queued"),
        "{shown}"
    );
}

/// DSNN training through workers: a promotion continues a saved state that another process
/// (now gone, its local folder removed) left in the store.
#[test]
fn a_promotion_continues_a_state_saved_by_another_worker_through_the_store() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("study.db").display());
    let config = dir.path().join("tiny.toml");
    std::fs::write(
        &config,
        r#"name = "tiny"
[data]
kind = "bundled"
limit_train = 300
validation_fraction = 0.2
[train]
model = "small-cnn"
batch_size = 100
[search]
trials = 5
seed = 3
[fidelity]
min_epochs = 1
max_epochs = 3
eta = 3
[objectives]
energy_model = "opcount"
"#,
    )
    .expect("write config");
    create(&url, &config);
    // Worker A trains the three 1-epoch trials, then stops; its saved states live on in the store.
    let run = |extra: &[&str]| {
        let out = bin()
            .args(["worker", "--storage", &url, "--study", "s", "--quiet"])
            .args(extra)
            .output()
            .expect("run worker");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&["--max-trials", "3"]);
    let mut s = store::open(&url).expect("open store");
    let first = store::finished_lines(s.as_mut(), "s").expect("lines");
    assert_eq!(first.len(), 3);
    assert!(first.iter().all(|l| l.budget == 1.0));
    // Worker B, another process with another local folder, runs the promotion.
    run(&[]);
    let lines = store::finished_lines(s.as_mut(), "s").expect("lines");
    let promoted: Vec<_> = lines
        .iter()
        .filter(|l| l.continued_from.is_some())
        .collect();
    assert!(!promoted.is_empty(), "no promotion");
    for l in promoted {
        assert_eq!(l.status, TrialStatus::Success, "{:?}", l.reason);
        let m = l.metrics.as_ref().expect("metrics");
        assert_eq!(
            (m.start_epoch, m.epochs_trained),
            (1, 3),
            "trial {} did not continue its parent's saved state",
            l.id
        );
    }
    // The study is done: no saved state is kept.
    for l in &lines {
        assert!(s.checkpoint("s", l.id).expect("checkpoint").is_none());
    }
}

/// SIGTERM (what SLURM sends before preemption) hands the running trial back at once: the
/// worker exits without waiting for it, and the trial is queued for the next worker.
/// A DSNN trial whose worker is killed mid-training continues, in another worker with another
/// local folder, from the newest epoch its progress reached the store with, and ends with
/// exactly the result of the same trial trained without interruption.
#[test]
fn a_killed_dsnn_trial_resumes_from_its_progress_with_the_same_result() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("tiny.toml");
    std::fs::write(
        &config,
        r#"name = "tiny"
[data]
kind = "bundled"
limit_train = 300
validation_fraction = 0.2
[train]
model = "small-cnn"
batch_size = 50
[search]
trials = 1
seed = 3
[fidelity]
min_epochs = 8
max_epochs = 8
[objectives]
energy_model = "opcount"
[study]
heartbeat_s = 0.2
"#,
    )
    .expect("write config");
    let straight_url = format!("sqlite://{}", dir.path().join("straight.db").display());
    create(&straight_url, &config);
    let out = bin()
        .args([
            "worker",
            "--storage",
            &straight_url,
            "--study",
            "s",
            "--quiet",
        ])
        .output()
        .expect("run worker");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut s = store::open(&straight_url).expect("open store");
    let straight = store::finished_lines(s.as_mut(), "s").expect("lines");

    let url = format!("sqlite://{}", dir.path().join("killed.db").display());
    create(&url, &config);
    let mut a = worker(&url);
    let mut s = store::open(&url).expect("open store");
    let unpacked = dir.path().join("seen.progress");
    let mut generation = 0;
    wait_until(
        "progress after 2 epochs in the store",
        Duration::from_secs(120),
        || {
            if let Some(bytes) = s.progress("s", 0).expect("progress") {
                generation = store::progress::unpack(&bytes, &unpacked)
                    .expect("unpack")
                    .unwrap_or(0);
            }
            generation >= 2
        },
    );
    a.kill().expect("kill -9");
    a.wait().expect("reap");
    let b = worker(&url);
    wait_all(vec![b], Duration::from_secs(180));
    let lines = store::finished_lines(s.as_mut(), "s").expect("lines");
    assert_eq!(lines.len(), 1);
    let m = lines[0].metrics.as_ref().expect("metrics");
    assert!(
        m.start_epoch >= 2 && m.start_epoch < 8 && m.epochs_trained == 8,
        "the killed trial (progress at epoch {generation} or later) went on from epoch {} to {}",
        m.start_epoch,
        m.epochs_trained
    );
    assert_eq!(
        lines[0].status,
        TrialStatus::Success,
        "{:?}",
        lines[0].reason
    );
    assert_eq!(lines[0].objectives, straight[0].objectives);
    let sm = straight[0].metrics.as_ref().expect("metrics");
    assert_eq!(m.valid_loss, sm.valid_loss);
    assert!(s.progress("s", 0).expect("progress").is_none());
}

#[test]
fn sigterm_hands_the_running_trial_back_at_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("study.db").display());
    // Trials of 20 s and more: the worker must not wait for one.
    let config = write_config(dir.path(), 3, 20.0, 600.0);
    create(&url, &config);
    let mut a = worker(&url);
    let mut s = store::open(&url).expect("open store");
    wait_until("a running trial", Duration::from_secs(60), || {
        !s.running("s").expect("running").is_empty()
    });
    let ok = Command::new("kill")
        .args(["-TERM", &a.id().to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok);
    let t0 = Instant::now();
    let status = loop {
        if let Some(st) = a.try_wait().expect("wait") {
            break st;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the worker did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(130), "exit status after SIGTERM");
    assert!(s.running("s").expect("running").is_empty());
    assert_eq!(s.queued("s").expect("queued").len(), 1, "handed back");
    assert!(
        store::finished_lines(s.as_mut(), "s")
            .expect("lines")
            .is_empty()
    );
}
