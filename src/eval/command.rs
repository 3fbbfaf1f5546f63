//! A user's program as the objective: one process per trial.
//!
//! The process gets one JSON line on stdin,
//! `{"config": {...}, "budget": 9, "trial_id": 4, "continues": 1}` (`budget` is written as an integer
//! when it is whole; `continues` is the earlier trial of the same configuration, or null), and must print
//! a JSON object with one number per objective on stdout, e.g. `{"loss": 0.3, "energy": 1.2}`. Other keys
//! are ignored; when stdout holds more than the object (log lines), its last non-empty line is used.
//!
//! A non-zero exit, a timeout (the process, and on Unix its whole process group, is killed) or output
//! without every objective is `Outcome::Failed`, with the last 2 KB of stderr in the reason. Only a command
//! that cannot be started at all is an error, since no later trial would fare better.
//!
//! The command runs without a shell unless built with [`CommandObjective::shell`].
//!
//! A long trial may save how far it got, so that after a crash or a preemption another attempt
//! of it (on any machine of the study) continues instead of starting over: `$DSNN_HPO_PROGRESS`
//! names the trial's progress folder (set when the run has a checkpoint folder). Write each save
//! as a subfolder named by a number (e.g. the epochs done), complete it under another name first
//! and rename it into place, and never change it afterwards (see [`crate::store::progress`]).
//! At start, the highest-numbered subfolder, if any, is where an earlier attempt got to.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::opt::{Outcome, Trial};

use super::{EvalError, Evaluator};

/// Bytes of stderr quoted in a failure reason.
const STDERR_TAIL: usize = 2048;
/// Bytes of stdout kept (the tail; the result is at the end).
const STDOUT_KEEP: usize = 1 << 20;
/// How long to wait for output pipes after the process ended: a background grandchild may hold them.
const PIPE_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct CommandObjective {
    argv: Vec<String>,
    objectives: Vec<String>,
    timeout: Option<Duration>,
    workdir: Option<PathBuf>,
    /// Where trials' progress folders go (`$DSNN_HPO_PROGRESS`).
    checkpoints: Option<PathBuf>,
}

impl CommandObjective {
    /// `argv[0]` is the program, the rest its arguments; `objectives` name the keys read from stdout.
    pub fn new(argv: Vec<String>, objectives: Vec<String>) -> Result<Self, EvalError> {
        if argv.is_empty() || argv[0].is_empty() {
            return Err(EvalError::Config(
                "the objective command is empty; give a program to run".into(),
            ));
        }
        if objectives.is_empty() {
            return Err(EvalError::Config(
                "the objective command needs at least one objective name".into(),
            ));
        }
        Ok(CommandObjective {
            argv,
            objectives,
            timeout: None,
            workdir: None,
            checkpoints: None,
        })
    }

    /// Runs `command_line` through the system shell (`sh -c`, or `cmd /C` on Windows), for users who
    /// want pipes or variables.
    pub fn shell(command_line: &str, objectives: Vec<String>) -> Result<Self, EvalError> {
        let argv = if cfg!(windows) {
            vec![
                "cmd".to_string(),
                "/C".to_string(),
                command_line.to_string(),
            ]
        } else {
            vec!["sh".to_string(), "-c".to_string(), command_line.to_string()]
        };
        Self::new(argv, objectives)
    }

    /// Kills a trial that runs longer than `timeout`.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    pub fn with_workdir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.workdir = Some(dir.into());
        self
    }

    /// Gives each trial a progress folder under `dir` (see the module doc).
    pub fn with_progress(mut self, dir: impl Into<PathBuf>) -> Self {
        self.checkpoints = Some(dir.into());
        self
    }

    fn payload(trial: &Trial) -> String {
        let budget = if trial.budget.fract() == 0.0 && trial.budget.abs() < 9.0e15 {
            json!(trial.budget as i64)
        } else {
            json!(trial.budget)
        };
        json!({
            "config": trial.config,
            "budget": budget,
            "trial_id": trial.id,
            "continues": trial.continues,
        })
        .to_string()
    }

    /// Reads the objective values from the command's stdout.
    fn parse(&self, stdout: &str) -> Result<Vec<f64>, String> {
        let trimmed = stdout.trim();
        let value: serde_json::Value = serde_json::from_str(trimmed)
            .or_else(|_| {
                let last = trimmed
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or("");
                serde_json::from_str(last.trim())
            })
            .map_err(|e| format!("stdout is not a JSON object ({e}): {}", tail(trimmed, 200)))?;
        let object = value
            .as_object()
            .ok_or_else(|| format!("stdout is JSON but not an object: {}", tail(trimmed, 200)))?;
        self.objectives
            .iter()
            .map(|name| match object.get(name) {
                Some(v) => v
                    .as_f64()
                    .ok_or_else(|| format!("objective \"{name}\" is {v}, expected a number")),
                None => Err(format!(
                    "output has no objective \"{name}\" (keys: {:?})",
                    object.keys().collect::<Vec<_>>()
                )),
            })
            .collect()
    }
}

impl Evaluator for CommandObjective {
    fn objective_names(&self) -> Vec<String> {
        self.objectives.clone()
    }

    fn objective_sources(&self) -> Vec<String> {
        self.objectives
            .iter()
            .map(|n| format!("{n} as printed by the objective command"))
            .collect()
    }

    fn evaluate(&mut self, trial: &Trial) -> Result<Outcome, EvalError> {
        let mut command = Command::new(&self.argv[0]);
        command
            .args(&self.argv[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(dir) = &self.workdir {
            command.current_dir(dir);
        }
        if let Some(root) = &self.checkpoints {
            let dir = crate::store::progress::dir(root, trial.id);
            std::fs::create_dir_all(&dir).map_err(|source| EvalError::Io {
                context: format!(
                    "cannot create the trial's progress folder {}",
                    dir.display()
                ),
                source,
            })?;
            command.env("DSNN_HPO_PROGRESS", &dir);
        }
        #[cfg(unix)]
        {
            use std::os::unix::process::CommandExt;
            // Own process group, so a timeout also ends what the command started.
            command.process_group(0);
        }
        let mut child = command.spawn().map_err(|source| EvalError::Spawn {
            program: self.argv[0].clone(),
            source,
        })?;

        let payload = Self::payload(trial);
        let stdin = child.stdin.take();
        // A writer thread: a command that never reads stdin must not block us on a full pipe.
        let writer = thread::spawn(move || {
            if let Some(mut stdin) = stdin {
                // A command may exit without reading its input; that is its business, not an error.
                let _ = stdin
                    .write_all(payload.as_bytes())
                    .and_then(|()| stdin.write_all(b"\n"));
            }
        });
        let (done_tx, done_rx) = mpsc::channel();
        let stdout = spawn_reader(child.stdout.take(), STDOUT_KEEP, done_tx.clone());
        let stderr = spawn_reader(child.stderr.take(), 64 * 1024, done_tx);

        let status =
            wait_with_timeout(&mut child, self.timeout).map_err(|source| EvalError::Io {
                context: format!("waiting for trial {}'s command", trial.id),
                source,
            })?;
        let deadline = Instant::now() + PIPE_GRACE;
        for _ in 0..2 {
            let left = deadline.saturating_duration_since(Instant::now());
            if done_rx.recv_timeout(left).is_err() {
                break;
            }
        }
        let _ = writer.join();
        let out = take_text(&stdout);
        let err = take_text(&stderr);

        let reason = match status {
            None => format!(
                "timed out after {:.1} s and was killed",
                self.timeout.map_or(0.0, |t| t.as_secs_f64())
            ),
            Some(s) if !s.success() => describe_exit(s),
            Some(_) => match self.parse(&out) {
                Ok(objectives) => return Ok(Outcome::Success { objectives }),
                Err(why) => why,
            },
        };
        let stderr_tail = tail(err.trim_end(), STDERR_TAIL);
        let reason = if stderr_tail.is_empty() {
            reason
        } else {
            format!("{reason}; stderr (last {STDERR_TAIL} bytes):\n{stderr_tail}")
        };
        Ok(Outcome::Failed { reason })
    }
}

fn describe_exit(status: ExitStatus) -> String {
    match status.code() {
        Some(code) => format!("command exited with status {code}"),
        None => format!("command was terminated by a signal ({status})"),
    }
}

/// Collects a pipe into a shared buffer (keeping its last `keep` bytes) and signals when it closes.
fn spawn_reader<R: Read + Send + 'static>(
    pipe: Option<R>,
    keep: usize,
    done: mpsc::Sender<()>,
) -> Arc<Mutex<Vec<u8>>> {
    let buffer = Arc::new(Mutex::new(Vec::new()));
    let shared = Arc::clone(&buffer);
    thread::spawn(move || {
        if let Some(mut pipe) = pipe {
            let mut chunk = [0u8; 8192];
            while let Ok(n) = pipe.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                if let Ok(mut buf) = shared.lock() {
                    buf.extend_from_slice(&chunk[..n]);
                    if buf.len() > 2 * keep {
                        let cut = buf.len() - keep;
                        buf.drain(..cut);
                    }
                }
            }
        }
        let _ = done.send(());
    });
    buffer
}

fn take_text(buffer: &Arc<Mutex<Vec<u8>>>) -> String {
    match buffer.lock() {
        Ok(buf) => String::from_utf8_lossy(&buf).into_owned(),
        Err(poisoned) => String::from_utf8_lossy(&poisoned.into_inner()).into_owned(),
    }
}

/// The last `max` bytes of `text`, cut at a character boundary.
fn tail(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// `Some(status)` when the process ended, `None` when it ran past `timeout` and was killed.
fn wait_with_timeout(
    child: &mut Child,
    timeout: Option<Duration>,
) -> std::io::Result<Option<ExitStatus>> {
    let Some(timeout) = timeout else {
        return child.wait().map(Some);
    };
    let start = Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        let elapsed = start.elapsed();
        if elapsed >= timeout {
            kill_tree(child);
            child.wait()?;
            return Ok(None);
        }
        thread::sleep(pause.min(timeout - elapsed));
        pause = (pause * 2).min(Duration::from_millis(25));
    }
}

fn kill_tree(child: &mut Child) {
    #[cfg(unix)]
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: kill(2) takes no pointers; a negative pid signals the process group that
        // `process_group(0)` made for this child, whose id equals the child's pid.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
    // Already dead is fine: the group kill above, or the process ended on its own.
    let _ = child.kill();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::space::Config;

    fn trial(budget: f64) -> Trial {
        let mut config = Config::new();
        config.insert("lr", 0.1);
        config.insert("opt", "sgd");
        Trial {
            id: 7,
            config,
            budget,
            continues: Some(3),
        }
    }

    #[test]
    fn payload_writes_whole_budgets_as_integers() {
        assert_eq!(
            CommandObjective::payload(&trial(9.0)),
            r#"{"budget":9,"config":{"lr":0.1,"opt":"sgd"},"continues":3,"trial_id":7}"#
        );
        assert!(CommandObjective::payload(&trial(2.5)).contains(r#""budget":2.5"#));
    }

    #[test]
    fn parses_object_or_last_line() {
        let c =
            CommandObjective::new(vec!["x".into()], vec!["loss".into(), "energy".into()]).unwrap();
        assert_eq!(
            c.parse(r#"{"loss": 0.3, "energy": 1.2, "extra": "x"}"#),
            Ok(vec![0.3, 1.2])
        );
        assert_eq!(
            c.parse("epoch 1\nepoch 2\n{\"energy\": 2, \"loss\": 0.5}\n"),
            Ok(vec![0.5, 2.0])
        );
        assert!(
            c.parse(r#"{"loss": 0.3}"#)
                .unwrap_err()
                .contains("no objective \"energy\"")
        );
        assert!(
            c.parse(r#"{"loss": null, "energy": 1}"#)
                .unwrap_err()
                .contains("expected a number")
        );
        assert!(c.parse("[1, 2]").unwrap_err().contains("not an object"));
        assert!(c.parse("").is_err());
    }

    #[test]
    fn tail_respects_char_boundaries() {
        assert_eq!(tail("abcdef", 3), "def");
        assert_eq!(tail("ééé", 3), "é");
        assert_eq!(tail("ab", 3), "ab");
    }

    #[test]
    fn empty_command_is_rejected() {
        assert!(CommandObjective::new(vec![], vec!["loss".into()]).is_err());
        assert!(CommandObjective::new(vec!["x".into()], vec![]).is_err());
    }
}
