//! `dsnn-hpo optimize` end to end on tiny budgets: a full run, a run killed and resumed, and
//! bad configurations.
#![cfg(feature = "dsnn")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use dsnn_hpo::store::BASELINE_IDS;
use dsnn_hpo::store::{TrialStatus, read_trials};

const TINY: &str = r#"
name = "tiny"
[data]
kind = "bundled"
limit_train = 500
validation_fraction = 0.2
[train]
model = "small-cnn"
optimizer = "sgd"
lr = 0.05
batch_size = 100
[search]
trials = 7
seed = 3
[fidelity]
min_epochs = 1
max_epochs = 3
eta = 3
[objectives]
loss = "error"
energy = "inference"
energy_model = "opcount"
"#;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_dsnn-hpo"))
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("run dsnn-hpo")
}

/// `optimize --config cfg --run-dir dir --quiet extra...`, which must succeed.
fn optimize_ok(cfg: &Path, dir: &Path, extra: &[&str]) {
    let mut args = vec![
        "optimize",
        "--config",
        cfg.to_str().unwrap(),
        "--run-dir",
        dir.to_str().unwrap(),
        "--quiet",
    ];
    args.extend_from_slice(extra);
    let o = run(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn write_config(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("tiny.toml");
    std::fs::write(&p, text).unwrap();
    p
}

/// Starts `args --run-dir dir` and kills it once `n` trials are logged (or it ends, or two
/// minutes pass).
fn kill_after(args: &[&str], dir: &Path, n: usize) {
    let mut child = bin()
        .args(args)
        .arg("--run-dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        let done = read_trials(dir).map(|t| t.len()).unwrap_or(0);
        if done >= n || start.elapsed() > Duration::from_secs(120) {
            break;
        }
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// What must repeat exactly between runs: everything but timings and measured energy.
fn essence(dir: &Path) -> Vec<(u64, String, u64, Vec<u64>)> {
    read_trials(dir)
        .unwrap()
        .into_iter()
        .map(|t| {
            (
                t.id,
                serde_json::to_string(&t.config).unwrap(),
                t.budget.to_bits(),
                t.objectives.iter().map(|v| v.to_bits()).collect(),
            )
        })
        .collect()
}

#[test]
fn a_killed_run_resumes_without_losing_or_repeating_trials() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write_config(tmp.path(), TINY);
    let cfg_s = cfg.to_str().unwrap();

    // Straight through.
    let straight = tmp.path().join("straight");
    let o = run(&[
        "optimize",
        "--config",
        cfg_s,
        "--run-dir",
        straight.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let expected = essence(&straight);
    assert_eq!(
        expected
            .iter()
            .map(|e| e.0)
            .filter(|id| *id < BASELINE_IDS)
            .collect::<Vec<_>>(),
        (0..7).collect::<Vec<u64>>()
    );
    // The default configuration ends up trained at the largest budget (by the search or as
    // the baseline after it), so the report compares against the default at full budget.
    let run_info = dsnn_hpo::store::read_run_info(&straight).unwrap();
    assert!(
        read_trials(&straight)
            .unwrap()
            .iter()
            .any(|t| t.config == run_info.default_config
                && t.budget == 3.0
                && t.status == TrialStatus::Success),
        "no full-budget default"
    );
    for f in [
        "run.json",
        "front.json",
        "front.csv",
        "emissions.csv",
        "summary.json",
    ] {
        assert!(straight.join(f).exists(), "{f} missing");
    }
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(straight.join("summary.json")).unwrap())
            .unwrap();
    assert_eq!(summary["trials"], 7);
    assert!(summary["search_energy"]["cpu"]["source"].is_string());
    let budgets: Vec<u64> = read_trials(&straight)
        .unwrap()
        .iter()
        .map(|t| t.budget as u64)
        .collect();
    assert!(budgets.contains(&1) && budgets.contains(&3), "{budgets:?}");
    // optimize ends with the front table and its plot.
    let printed = String::from_utf8_lossy(&o.stdout);
    assert!(printed.contains("Pareto front of"), "{printed}");
    assert!(straight.join("front.svg").exists());

    // The report of that run in every format.
    let front_ids: Vec<u64> = summary["front"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    let s = straight.to_str().unwrap();
    let table = run(&["pareto", "--run", s]);
    assert!(table.status.success());
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("<- default"), "{table}");
    let csv = run(&["pareto", "--run", s, "--format", "csv"]);
    assert!(csv.status.success());
    let mut reader = csv::Reader::from_reader(&csv.stdout[..]);
    let headers = reader.headers().unwrap().clone();
    let id_col = headers.iter().position(|h| h == "id").unwrap();
    let front_col = headers.iter().position(|h| h == "on_front").unwrap();
    let mut csv_front: Vec<u64> = reader
        .records()
        .map(|r| r.unwrap())
        .filter(|r| &r[front_col] == "true")
        .map(|r| r[id_col].parse().unwrap())
        .collect();
    csv_front.sort_unstable();
    let mut want = front_ids.clone();
    want.sort_unstable();
    assert_eq!(csv_front, want, "CSV front differs from summary.json");
    let json = run(&["pareto", "--run", s, "--format", "json"]);
    assert!(json.status.success());
    let _: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let svg_path = tmp.path().join("front.svg");
    let plot = run(&["pareto", "--run", s, "--plot", svg_path.to_str().unwrap()]);
    assert!(plot.status.success());
    let svg = std::fs::read_to_string(&svg_path).unwrap();
    let doc = roxmltree::Document::parse(&svg).unwrap();
    let circles = doc
        .descendants()
        .filter(|n| n.has_tag_name("circle"))
        .count();
    // Every successful trial is drawn (plus rings marking the front).
    assert!(
        circles >= expected.len(),
        "{circles} circles for {} trials",
        expected.len()
    );

    // Killed after two finished trials, then resumed.
    let killed = tmp.path().join("killed");
    kill_after(&["optimize", "--config", cfg_s, "--quiet"], &killed, 2);
    let before = read_trials(&killed).unwrap().len();
    assert!(before >= 2, "the run was killed after {before} trials");

    let o = run(&["optimize", "--resume", killed.to_str().unwrap(), "--quiet"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let got = essence(&killed);
    assert_eq!(got, expected, "resumed run differs from the straight one");

    // Starting over in a used directory is refused.
    let o = run(&[
        "optimize",
        "--config",
        cfg_s,
        "--run-dir",
        killed.to_str().unwrap(),
        "--quiet",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--resume"));
}

#[test]
fn every_failed_trial_is_logged_and_an_all_failed_run_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    // A learning rate no network survives: every trial diverges.
    let text = TINY.replace("lr = 0.05", "lr = 0.05\nschedule = \"constant\"")
        + "\n[[space]]\nname = \"lr\"\ntype = \"float\"\nlow = 1e10\nhigh = 1e12\nlog = true\ndefault = 1e11\n";
    let text = text.replace("trials = 7", "trials = 3");
    let cfg = write_config(tmp.path(), &text);
    let dir = tmp.path().join("run");
    let o = run(&[
        "optimize",
        "--config",
        cfg.to_str().unwrap(),
        "--run-dir",
        dir.to_str().unwrap(),
        "--quiet",
        "--set",
        "train.shift_depth=0",
    ]);
    assert_eq!(o.status.code(), Some(2));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("every trial failed"), "{e}");
    let trials = read_trials(&dir).unwrap();
    assert_eq!(trials.len(), 3);
    assert!(trials.iter().all(|t| t.status == TrialStatus::Failed));
    assert!(trials[0].reason.as_deref().unwrap().contains("loss became"));
}

#[test]
fn bad_optimize_configs_name_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    for (extra, needle) in [
        ("[search]\ntrial = 3\n", "unknown field `trial`"),
        (
            "[fidelity]\nmin_epochs = 5\nmax_epochs = 2\n",
            "min_epochs = 5",
        ),
        (
            "[objectives]\nenergy = \"training\"\nenergy_model = \"opcount\"\n",
            "opcount",
        ),
        (
            "[[space]]\nname = \"lr\"\ntype = \"float\"\nlow = 0.5\nhigh = 0.1\n",
            "lr",
        ),
        (
            "[objectives]\nenergy = \"training\"\nenergy_model = \"both\"\n",
            "energy_model = \"both\" with energy = \"training\"",
        ),
        ("[energy]\ntarget_rel_ci = 0.0\n", "target_rel_ci = 0"),
        ("[energy]\ntarget_rel_ci = 1.5\n", "target_rel_ci = 1.5"),
        ("[energy]\nmax_passes = 0\n", "max_passes = 0"),
        (
            "[[constraints]]\nquantity = \"flops\"\nmax = 1.0\n",
            "unknown variant `flops`",
        ),
        (
            "[[constraints]]\nquantity = \"params\"\nmax = -3.0\n",
            "max = -3",
        ),
        (
            "[[constraints]]\nquantity = \"accuracy\"\n",
            "neither min nor max",
        ),
        (
            "[[space]]\nname = \"dropout\"\ntype = \"float\"\nlow = 0.0\nhigh = 0.5\n",
            "dropout",
        ),
    ] {
        let base = TINY.split("[search]").next().unwrap().to_string();
        let cfg = write_config(tmp.path(), &(base + extra));
        let dir = tmp.path().join("r");
        let o = run(&[
            "optimize",
            "--config",
            cfg.to_str().unwrap(),
            "--run-dir",
            dir.to_str().unwrap(),
            "--quiet",
        ]);
        assert_eq!(o.status.code(), Some(2), "{extra}");
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(e.contains(needle), "{extra}: {e}");
        assert!(!e.contains("panicked"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn a_command_objective_is_optimized_and_its_failures_logged() {
    if Command::new("python3").arg("--version").output().is_err() {
        eprintln!("skipped: python3 is not installed, the example objective needs it");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = env!("CARGO_MANIFEST_DIR");
    let text = std::fs::read_to_string(format!("{root}/configs/command-objective.toml"))
        .unwrap()
        .replace(
            "examples/objective.py",
            &format!("{root}/examples/objective.py"),
        )
        .replace("trials = 20", "trials = 8");
    let cfg = write_config(tmp.path(), &text);
    let dir = tmp.path().join("run");
    optimize_ok(&cfg, &dir, &[]);
    let (baseline, trials): (Vec<_>, Vec<_>) = read_trials(&dir)
        .unwrap()
        .into_iter()
        .partition(|t| t.baseline);
    assert_eq!(trials.len(), 8);
    // The toy's formula, checked on the default configuration (x = y = 0.5) at its budget, and
    // on the baseline: the default at the largest budget (9), trained after the search.
    let first = &trials[0];
    assert!(first.budget < 9.0);
    assert_eq!(baseline.len(), 1);
    assert_eq!(baseline[0].config, first.config);
    for t in [first, &baseline[0]] {
        let b = t.budget;
        assert!((t.objectives[0] - (0.25 + 1.0 / (1.0 + b))).abs() < 1e-12);
        assert!((t.objectives[1] - (0.5 * b / 9.0 + 0.01)).abs() < 1e-12);
    }
    assert_eq!(baseline[0].budget, 9.0);

    // A command that fails: every trial is logged as failed with its stderr, and the run errs.
    let failing = text.replace(
        &format!("command = [\"python3\", \"{root}/examples/objective.py\"]"),
        "shell = \"echo boom >&2; exit 3\"",
    );
    let cfg = write_config(tmp.path(), &failing);
    let dir = tmp.path().join("failing");
    let o = run(&[
        "optimize",
        "--config",
        cfg.to_str().unwrap(),
        "--run-dir",
        dir.to_str().unwrap(),
        "--quiet",
    ]);
    assert_eq!(o.status.code(), Some(2));
    let trials = read_trials(&dir).unwrap();
    assert_eq!(trials.len(), 8);
    assert!(
        trials[0].reason.as_deref().unwrap().contains("boom"),
        "{:?}",
        trials[0].reason
    );
}

/// Ids of `dir`'s finished trials, in log order.
fn ids(dir: &Path) -> Vec<u64> {
    read_trials(dir).unwrap().iter().map(|t| t.id).collect()
}

#[test]
fn two_workers_finish_every_trial_once_and_a_killed_parallel_run_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write_config(tmp.path(), TINY);
    let cfg_s = cfg.to_str().unwrap();
    let dir = tmp.path().join("par");
    kill_after(
        &["optimize", "--config", cfg_s, "--workers", "2", "--quiet"],
        &dir,
        2,
    );
    let before = ids(&dir);
    assert!(before.len() >= 2, "killed after {before:?}");
    assert!(asked(&dir).len() >= before.len());

    // Resume with one worker: the replay follows the recorded interleaving.
    let o = run(&[
        "optimize",
        "--resume",
        dir.to_str().unwrap(),
        "--workers",
        "1",
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut got = ids(&dir);
    assert_eq!(
        &got[..before.len()],
        &before[..],
        "finished trials were rewritten"
    );
    got.retain(|id| *id < BASELINE_IDS);
    got.sort_unstable();
    assert_eq!(got, (0..7).collect::<Vec<u64>>(), "each trial exactly once");
    let trials = read_trials(&dir).unwrap();
    assert!(trials.iter().all(|t| t.status == TrialStatus::Success));
    // Every promoted trial continued a trial that had finished before it was asked.
    for t in &trials {
        if let Some(p) = t.continued_from {
            let parent = trials.iter().find(|x| x.id == p).unwrap();
            assert!(parent.budget < t.budget, "{p} -> {}", t.id);
        }
    }
    let mut asked = asked(&dir);
    asked.retain(|id| *id < BASELINE_IDS);
    assert_eq!(asked, (0..7).collect::<Vec<u64>>());
}

/// The trial ids of the decisions in a run directory's study store, in log order.
fn asked(dir: &Path) -> Vec<u64> {
    let url = format!("sqlite://{}", dir.join("study.db").display());
    let mut s = dsnn_hpo::store::open(&url).unwrap();
    let name = s.studies().unwrap().remove(0);
    s.events(&name, 0)
        .unwrap()
        .into_iter()
        .filter_map(|e| match e.kind {
            dsnn_hpo::store::EventKind::Ask { trial, .. } => Some(trial.id),
            dsnn_hpo::store::EventKind::Tell { .. } => None,
        })
        .collect()
}

#[test]
fn a_run_directory_of_the_previous_release_is_converted_on_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let root = env!("CARGO_MANIFEST_DIR");
    let text = std::fs::read_to_string(format!("{root}/configs/command-objective.toml"))
        .unwrap()
        .replace(
            "examples/objective.py",
            &format!("{root}/examples/objective.py"),
        )
        .replace("trials = 20", "trials = 10");
    let cfg = write_config(tmp.path(), &text);
    let straight = tmp.path().join("straight");
    optimize_ok(&cfg, &straight, &[]);
    let expected = essence(&straight);
    // The previous release's files: run.json, the first 5 finished trials, and asks.jsonl with
    // one more ask that never finished (killed while running).
    let old = tmp.path().join("old");
    std::fs::create_dir_all(&old).unwrap();
    std::fs::copy(straight.join("run.json"), old.join("run.json")).unwrap();
    let lines: Vec<String> = std::fs::read_to_string(straight.join("trials.jsonl"))
        .unwrap()
        .lines()
        .take(5)
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(old.join("trials.jsonl"), lines.concat()).unwrap();
    let asks: String = (0..6)
        .map(|id| format!("{{\"id\":{id},\"told\":{}}}\n", id.min(5)))
        .collect();
    std::fs::write(old.join("asks.jsonl"), asks).unwrap();
    let o = run(&["optimize", "--resume", old.to_str().unwrap(), "--quiet"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let said = String::from_utf8_lossy(&o.stderr);
    assert!(said.contains("converted to a study store"), "{said}");
    assert_eq!(essence(&old), expected, "the converted run differs");
}

#[test]
fn the_shipped_test_function_config_runs_the_whole_loop() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("zdt1");
    let cfg = concat!(env!("CARGO_MANIFEST_DIR"), "/configs/test-function.toml");
    let o = run(&[
        "optimize",
        "--config",
        cfg,
        "--run-dir",
        dir.to_str().unwrap(),
        "--set",
        "search.trials=25",
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let trials = read_trials(&dir).unwrap();
    assert_eq!(trials.len(), 25);
    for t in &trials {
        // ZDT1 by hand: f1 = x1, g = 1 + 9/5 * sum(x2..x6), f2 = g (1 - sqrt(f1 / g)).
        let x: Vec<f64> = (1..=6)
            .map(|i| t.config.f64(&format!("x{i}")).unwrap())
            .collect();
        let g = 1.0 + 9.0 / 5.0 * x[1..].iter().sum::<f64>();
        let f2 = g * (1.0 - (x[0] / g).sqrt());
        assert!((t.objectives[0] - x[0]).abs() < 1e-12);
        assert!(
            (t.objectives[1] - f2).abs() < 1e-9,
            "{} vs {f2}",
            t.objectives[1]
        );
    }
    // The default (all 0.5) is trial 0; the search finds points that dominate it.
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("better than the default in every objective"),
        "{out}"
    );
}

/// Trials whose objectives are real measurements.
fn measured(dir: &Path) -> Vec<dsnn_hpo::store::TrialLine> {
    read_trials(dir)
        .unwrap()
        .into_iter()
        .filter(|t| t.status != TrialStatus::Failed)
        .collect()
}

#[test]
fn energy_model_both_optimizes_measured_and_opcount_energy_with_repeated_passes() {
    let tmp = tempfile::tempdir().unwrap();
    let text = TINY
        .replace("energy_model = \"opcount\"", "energy_model = \"both\"")
        .replace("trials = 7", "trials = 4");
    let cfg = write_config(tmp.path(), &text);
    let dir = tmp.path().join("run");
    optimize_ok(
        &cfg,
        &dir,
        &[
            "--set",
            "energy.max_passes=4",
            "--set",
            "energy.per_layer=true",
        ],
    );
    let info = dsnn_hpo::store::read_run_info(&dir).unwrap();
    assert_eq!(
        info.objectives,
        ["loss", "inference_kwh", "opcount_inference_kwh"]
    );
    assert!(info.objective_sources[1].contains("measured"));
    assert!(info.objective_sources[2].contains("op-count"));
    let trials = measured(&dir);
    assert!(!trials.is_empty());
    for t in &trials {
        assert_eq!(t.objectives.len(), 3);
        let inference: Vec<_> = t.energy.iter().filter(|r| r.phase == "inference").collect();
        assert_eq!(
            inference.len(),
            2,
            "trial {}: a measured and an op-count record",
            t.id
        );
        let m = inference.iter().find(|r| r.repeat.is_some()).unwrap();
        let op = inference
            .iter()
            .find(|r| r.cpu.source.as_str() == "opcount")
            .unwrap();
        let rep = m.repeat.as_ref().unwrap();
        assert!(rep.passes >= 1 && rep.passes <= 4, "{rep:?}");
        // The objective is the mean pass; the record's energy is every pass (warm-up included).
        // (to 1e-12: serde_json reads floats back to within an ulp)
        assert!((t.objectives[1] - m.pass_kwh()).abs() <= 1e-12 * m.pass_kwh());
        assert!(m.energy_kwh > m.pass_kwh() * rep.passes as f64 * 0.99);
        assert!((t.objectives[2] - op.energy_kwh).abs() <= 1e-12 * op.energy_kwh);
        let metrics = t.metrics.as_ref().unwrap();
        let per_image = metrics.inference_j_per_image.unwrap();
        assert!((per_image - rep.mean_j / 100.0).abs() <= 1e-9 * rep.mean_j);
        assert!(metrics.opcount_j_per_image.unwrap() > 0.0);
        // Asked for: the per-layer split of both views, which adds up to the whole pass.
        let rows = t
            .per_layer
            .as_ref()
            .expect("per-layer energy in the record");
        assert_eq!(rows.len(), 7, "6 layers of the small CNN and `other`");
        let measured: f64 = rows.iter().map(|r| r.measured_j_per_image).sum();
        assert!((measured - per_image).abs() <= 1e-9 * per_image);
        let op: f64 = rows.iter().map(|r| r.opcount_j_per_image).sum();
        assert!((op - metrics.opcount_j_per_image.unwrap()).abs() <= 1e-9 * op);
    }
    // The report shows both views and how well they agree.
    let json = run(&["pareto", "--run", dir.to_str().unwrap(), "--format", "json"]);
    assert!(json.status.success());
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["objectives"].as_array().unwrap().len(), 3);
}

#[test]
fn a_constrained_search_proposes_no_known_violation_and_logs_infeasible_trials() {
    let tmp = tempfile::tempdir().unwrap();
    // At most half the default's weight memory (the default: every layer PS at 5 bits), and an
    // accuracy the tiny budget rarely reaches.
    let text = TINY.replace("trials = 7", "trials = 9")
        + "\n[[constraints]]\nquantity = \"weight_memory_bits\"\nmax = 0.5\nrelative = true\n\
           \n[[constraints]]\nquantity = \"accuracy\"\nmin = 0.6\n";
    let cfg = write_config(tmp.path(), &text);
    let dir = tmp.path().join("run");
    optimize_ok(&cfg, &dir, &[]);
    let info = dsnn_hpo::store::read_run_info(&dir).unwrap();
    let reference = info.constraint_reference[&dsnn_hpo::constraint::Quantity::WeightMemoryBits];
    let all = read_trials(&dir).unwrap();
    let (default, others): (Vec<_>, Vec<_>) = all
        .iter()
        .filter(|t| {
            t.metrics
                .as_ref()
                .is_some_and(|m| m.weight_memory_bits.is_some())
        })
        .partition(|t| t.config == info.default_config);
    // The default is still evaluated (as the baseline) though it violates the memory bound,
    // and its trials are infeasible, naming the bound.
    assert!(!default.is_empty());
    for t in &default {
        assert_eq!(t.status, TrialStatus::Infeasible);
        assert!(
            t.violated
                .iter()
                .any(|v| v.starts_with("weight_memory_bits > max 0.5 x default")),
            "{:?}",
            t.violated
        );
    }
    // No other trial breaks the known-ahead bound: none was ever proposed.
    assert!(!others.is_empty());
    for t in &others {
        let bits = t.metrics.as_ref().unwrap().weight_memory_bits.unwrap() as f64;
        assert!(bits <= 0.5 * reference, "trial {} has {bits} bits", t.id);
        let acc = t.metrics.as_ref().unwrap().valid_accuracy;
        // Measured constraints decide feasibility, and nothing else does.
        assert_eq!(
            t.status == TrialStatus::Infeasible,
            acc < 0.6,
            "trial {}",
            t.id
        );
        if acc < 0.6 {
            assert!(
                t.violated
                    .iter()
                    .any(|v| v.starts_with("accuracy < min 0.6"))
            );
        }
    }
    // Infeasible trials are never on the front.
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    for id in summary["front"].as_array().unwrap() {
        let t = all.iter().find(|t| t.id == id.as_u64().unwrap()).unwrap();
        assert_eq!(
            t.status,
            TrialStatus::Success,
            "trial {} on the front",
            t.id
        );
    }
    assert_eq!(
        summary["infeasible"].as_u64().unwrap() as usize,
        all.iter()
            .filter(|t| t.status == TrialStatus::Infeasible)
            .count()
    );
}

#[test]
fn a_resumed_constrained_run_keeps_the_measured_reference() {
    let tmp = tempfile::tempdir().unwrap();
    // A bound relative to the default's measured inference energy (loose: every design meets
    // it), so the reference is measured before the first trial.
    let text = TINY.replace("trials = 7", "trials = 3")
        + "\n[[constraints]]\nquantity = \"inference_j_per_image\"\nmax = 100.0\nrelative = true\n";
    let cfg = write_config(tmp.path(), &text);
    let dir = tmp.path().join("run");
    optimize_ok(&cfg, &dir, &["--set", "energy.max_passes=2"]);
    let q = dsnn_hpo::constraint::Quantity::InferenceJPerImage;
    let before = dsnn_hpo::store::read_run_info(&dir)
        .unwrap()
        .constraint_reference[&q];
    assert!(before > 0.0 && before.is_finite(), "{before}");
    // Extended on resume: judged against the same reference, not a new measurement.
    let o = run(&[
        "optimize",
        "--resume",
        dir.to_str().unwrap(),
        "--quiet",
        "--set",
        "search.trials=5",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let after = dsnn_hpo::store::read_run_info(&dir)
        .unwrap()
        .constraint_reference[&q];
    // (to 1e-12: serde_json reads floats back to within an ulp)
    assert!(
        (before - after).abs() <= 1e-12 * before,
        "{before} vs {after}"
    );
    let trials = read_trials(&dir).unwrap();
    assert_eq!(trials.iter().filter(|t| t.id < BASELINE_IDS).count(), 5);
    assert!(trials.iter().all(|t| t.status != TrialStatus::Infeasible));
}

#[test]
fn every_shipped_config_loads() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            if let Err(e) = dsnn_hpo::config::RunConfig::load(&path, &[]) {
                panic!("{}: {e}", path.display());
            }
            names.push(path.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
    // The paper's setups among them, with their backbones and budgets.
    for (name, model, budgets) in [
        ("caltech101-mobilenetv2.toml", "mobilenetv2", (2, 20)),
        ("tinyimagenet-resnet20.toml", "resnet20", (4, 15)),
        ("cifar10-vgg19.toml", "vgg19", (10, 50)),
    ] {
        assert!(names.iter().any(|n| n == name), "{name} missing: {names:?}");
        let run = dsnn_hpo::config::RunConfig::load(&dir.join(name), &[]).unwrap();
        assert_eq!(run.train.model.name(), model, "{name}");
        assert_eq!(
            (run.fidelity.min_epochs, run.fidelity.max_epochs),
            budgets,
            "{name}"
        );
    }
}
