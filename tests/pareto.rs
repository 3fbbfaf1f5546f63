//! `dsnn-hpo pareto` on run directories written here: several budgets, a failed trial, the
//! default configuration, two and three objectives; table, CSV, JSON, SVG and bad input.

use std::path::Path;
use std::process::{Command, Output};

use dsnn_hpo::energy::{ComponentEnergy, EnergyRecord, RepeatStats, SourceKind};
use dsnn_hpo::space::{Config, Value};
use dsnn_hpo::store::{Metrics, RunInfo, TrialLine, TrialLog, TrialStatus, write_run_info};

const LOSS_SOURCE: &str = "1 - validation top-1 accuracy";
const INFERENCE_SOURCE: &str = "one inference pass over the validation split, measured by the energy meter (source per component in each record)";
const TRAINING_SOURCE: &str = "the trial's training, continued-from epochs included, measured by the energy meter (source per component in each record)";

fn config(optimizer: &str, lr: f64, bits: i64) -> Config {
    [
        ("optimizer", Value::Str(optimizer.into())),
        ("lr", Value::Float(lr)),
        ("weight_bits", Value::Int(bits)),
    ]
    .into_iter()
    .collect()
}

fn record(phase: &str, gpu: SourceKind) -> EnergyRecord {
    let c = |kind, j| ComponentEnergy::new(kind, j, 2.0);
    EnergyRecord {
        phase: phase.into(),
        timestamp: "2026-01-01T00:00:00.000Z".into(),
        start_unix_s: 0.0,
        duration_s: 2.0,
        cpu: c(SourceKind::Rapl, 10.0),
        gpu: c(gpu, if gpu == SourceKind::None { 0.0 } else { 20.0 }),
        ram: c(SourceKind::Estimate, 1.0),
        energy_j: 31.0,
        energy_kwh: 31.0 / 3.6e6,
        emissions_kg: 0.0,
        emissions_rate_kg_per_s: 0.0,
        intensity_g_per_kwh: 475.0,
        pue: 1.0,
        country_iso_code: None,
        country_name: None,
        cpu_model: "test cpu".into(),
        cpu_count: 2,
        gpu_models: Vec::new(),
        ram_total_gib: 8.0,
        share: None,
        repeat: None,
    }
}

fn ok(id: u64, config: &Config, budget: f64, objectives: &[f64]) -> TrialLine {
    TrialLine {
        energy: vec![
            record("train", SourceKind::None),
            record("inference", SourceKind::None),
        ],
        ..TrialLine::success(id, config.clone(), budget, objectives.to_vec())
    }
}

fn failed(id: u64, config: &Config, budget: f64, reason: &str) -> TrialLine {
    TrialLine {
        status: TrialStatus::Failed,
        reason: Some(reason.into()),
        objectives: Vec::new(),
        energy: vec![record("train", SourceKind::None)],
        ..ok(id, config, budget, &[])
    }
}

fn write_run(dir: &Path, objectives: &[(&str, &str)], default: &Config, lines: &[TrialLine]) {
    write_run_info(
        dir,
        &RunInfo {
            objectives: objectives.iter().map(|o| o.0.to_string()).collect(),
            objective_sources: objectives.iter().map(|o| o.1.to_string()).collect(),
            default_config: default.clone(),
            meta_hash: "0".into(),
            config_toml: String::new(),
            constraint_reference: Default::default(),
        },
    )
    .unwrap();
    let mut log = TrialLog::open(dir).unwrap();
    for l in lines {
        log.append(l).unwrap();
    }
}

/// Two objectives. Configurations at their highest budget: A (the default) trial 6 at 9,
/// B trial 7 at 9, C trial 2 at 1, E trial 8 at 9, F trial 9 at 9; D only failed.
/// Front: 7 (0.16, 2.5e-3), 8 (0.24, 1.2e-3), 2 (0.60, 1.0e-3). The default (0.20, 4.0e-3)
/// is dominated by 7. At the default's budget 9: loss 0.16 vs 0.20 = 20.0% lower, energy
/// 1.2e-3 vs 4.0e-3 = 70.0% less (trial 2's 1.0e-3 is at budget 1 and not compared).
fn two_objective_run(dir: &Path) -> usize {
    let a = config("sgd", 0.1, 5);
    let b = config("adam", 0.01, 3);
    let c = config("sgd", 0.05, 4);
    let d = config("rmsprop", 0.2, 2);
    let e = config("sgd", 0.02, 2);
    let f = config("adam", 0.001, 5);
    let mut lines = vec![
        ok(0, &a, 1.0, &[0.50, 4.0e-3]),
        ok(1, &b, 1.0, &[0.45, 2.0e-3]),
        ok(2, &c, 1.0, &[0.60, 1.0e-3]),
        failed(3, &d, 1.0, "training diverged at step 12 (loss NaN)"),
        ok(4, &a, 3.0, &[0.30, 4.0e-3]),
        ok(5, &b, 3.0, &[0.25, 2.0e-3]),
        ok(6, &a, 9.0, &[0.20, 4.0e-3]),
        ok(7, &b, 9.0, &[0.16, 2.5e-3]),
        ok(8, &e, 9.0, &[0.24, 1.2e-3]),
        ok(9, &f, 9.0, &[0.22, 5.0e-3]),
    ];
    lines[4].continued_from = Some(0);
    lines[8].energy[1] = record("inference", SourceKind::Nvml);
    write_run(
        dir,
        &[("loss", LOSS_SOURCE), ("inference_kwh", INFERENCE_SOURCE)],
        &a,
        &lines,
    );
    lines
        .iter()
        .filter(|l| l.status == TrialStatus::Success)
        .count()
}

/// Three objectives; the default (trial 0) reached only budget 1 and is on the front.
/// Front: 0, 3 (0.30, 3e-3, 6e-5), 4 (0.35, 2e-3, 5e-3); trial 5 is dominated by 3.
/// No other front point has budget 1, so 3 and 4 (budget 3) are compared: loss 0.30 vs 0.50 =
/// 40.0% lower, inference 2e-3 vs 4e-3 = 50.0% less; training is not improved.
fn three_objective_run(dir: &Path) -> usize {
    let a = config("sgd", 0.1, 5);
    let b = config("adam", 0.01, 3);
    let c = config("sgd", 0.05, 4);
    let d = config("adamw", 0.2, 2);
    let lines = vec![
        ok(0, &a, 1.0, &[0.50, 4e-3, 1e-5]),
        ok(1, &b, 1.0, &[0.40, 3e-3, 2e-5]),
        ok(2, &c, 1.0, &[0.60, 5e-3, 1e-5]),
        ok(3, &b, 3.0, &[0.30, 3e-3, 6e-5]),
        ok(4, &c, 3.0, &[0.35, 2e-3, 5e-3]),
        ok(5, &d, 3.0, &[0.45, 6e-3, 1e-2]),
        failed(6, &a, 3.0, "out of memory"),
    ];
    write_run(
        dir,
        &[
            ("loss", LOSS_SOURCE),
            ("inference_kwh", INFERENCE_SOURCE),
            ("training_kwh", TRAINING_SOURCE),
        ],
        &a,
        &lines,
    );
    6
}

fn pareto(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dsnn-hpo"))
        .arg("pareto")
        .args(args)
        .output()
        .expect("run dsnn-hpo")
}

fn stdout_of(o: &Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn table_is_sorted_by_loss_marks_the_default_and_states_the_improvements() {
    let dir = tempfile::tempdir().unwrap();
    two_objective_run(dir.path());
    let text = stdout_of(&pareto(&["--run", path_str(dir.path())]));
    let lines: Vec<&str> = text.lines().collect();
    let header = lines
        .iter()
        .position(|l| l.trim_start().starts_with("id"))
        .unwrap();
    for column in [
        "budget",
        "optimizer",
        "lr",
        "weight_bits",
        "loss [1]",
        "inference_kwh [2]",
        "energy sources",
    ] {
        assert!(
            lines[header].contains(column),
            "{column} missing in {}",
            lines[header]
        );
    }
    let ids: Vec<&str> = lines[header + 1..]
        .iter()
        .take_while(|l| !l.trim().is_empty())
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(ids, ["7", "6", "8", "2"], "{text}");
    let default_row = lines[header + 2];
    assert!(
        default_row.contains("<- default (not on the front)"),
        "{default_row}"
    );
    assert!(!lines[header + 1].contains("default"));
    assert!(
        lines[header + 3].contains("rapl+estimate+nvml"),
        "{}",
        lines[header + 3]
    );
    // A run from before per-image metrics and repeated measurement: both per-image columns
    // are "-", no ± anywhere, and the rank agreement says why it is missing.
    let cells: Vec<&str> = lines[header + 1].split_whitespace().collect();
    assert_eq!(
        cells[7..],
        ["-", "-", "rapl+estimate"],
        "{}",
        lines[header + 1]
    );
    assert!(!text.contains('±'), "{text}");
    assert!(!text.contains("infeasible"), "{text}");
    assert!(
        text.contains("rank agreement of measured vs op-count inference energy: not computed: no measured trial records both"),
        "{text}"
    );
    assert!(text.contains("[m] measured inference energy per image, joules: mean of repeated validation passes; meters: not recorded"), "{text}");
    assert!(text.contains(&format!("[1] loss: {LOSS_SOURCE}")), "{text}");
    assert!(
        text.contains(&format!("[2] inference_kwh: {INFERENCE_SOURCE}")),
        "{text}"
    );
    assert!(
        text.contains("3 of 5 configurations (10 trials, 1 failed)"),
        "{text}"
    );
    assert!(
        text.contains(
            "compared at budget 9: the default's highest budget, which 2 of 3 front points reached"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "Best improvements: 20.0% lower loss, 70.0% less energy than the default DSNN."
        ),
        "{text}"
    );
    assert!(
        text.contains("better than the default in every objective at once: trial 7"),
        "{text}"
    );
}

#[test]
fn csv_reads_back_with_sources_and_the_default_flagged() {
    let dir = tempfile::tempdir().unwrap();
    two_objective_run(dir.path());
    let text = stdout_of(&pareto(&["--run", path_str(dir.path()), "--format", "csv"]));
    let mut r = csv::Reader::from_reader(text.as_bytes());
    let header: Vec<String> = r.headers().unwrap().iter().map(String::from).collect();
    assert_eq!(
        header,
        [
            "id",
            "budget",
            "optimizer",
            "lr",
            "weight_bits",
            "loss",
            "loss_source",
            "inference_kwh",
            "inference_kwh_ci95_rel",
            "inference_kwh_source",
            "on_front",
            "is_default",
            "energy_sources",
            "inference_j_per_image",
            "inference_j_per_image_source",
            "opcount_j_per_image",
            "opcount_j_per_image_source",
            "status",
            "violated"
        ]
    );
    let rows: Vec<csv::StringRecord> = r.records().map(Result::unwrap).collect();
    let ids: Vec<&str> = rows.iter().map(|r| &r[0]).collect();
    assert_eq!(ids, ["7", "6", "8", "2"]);
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    for row in &rows {
        let is_default = &row[col("is_default")] == "true";
        assert_eq!(is_default, &row[0] == "6");
        assert_eq!(
            &row[col("on_front")],
            if is_default { "false" } else { "true" }
        );
        assert_eq!(&row[col("loss_source")], LOSS_SOURCE);
        // An old-format run (no repeat, no per-image metrics): the new columns are empty.
        for empty in [
            "inference_kwh_ci95_rel",
            "inference_j_per_image",
            "inference_j_per_image_source",
            "opcount_j_per_image",
            "opcount_j_per_image_source",
            "violated",
        ] {
            assert_eq!(&row[col(empty)], "", "{empty}");
        }
        assert_eq!(&row[col("status")], "success");
        assert_eq!(&row[col("inference_kwh_source")], INFERENCE_SOURCE);
    }
    assert_eq!(rows[0][col("loss")].parse::<f64>().unwrap(), 0.16);
    assert_eq!(
        rows[3][col("inference_kwh")].parse::<f64>().unwrap(),
        1.0e-3
    );
    assert_eq!(&rows[3][col("budget")], "1");
    assert_eq!(&rows[1][col("optimizer")], "sgd");
    assert_eq!(
        &rows[2][col("energy_sources")],
        "train:cpu=rapl,gpu=none,ram=estimate;inference:cpu=rapl,gpu=nvml,ram=estimate"
    );
}

#[test]
fn json_holds_rows_default_comparison_and_sources() {
    let dir = tempfile::tempdir().unwrap();
    two_objective_run(dir.path());
    let text = stdout_of(&pareto(&[
        "--run",
        path_str(dir.path()),
        "--format",
        "json",
    ]));
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["objectives"][1]["name"], "inference_kwh");
    assert_eq!(v["objectives"][1]["source"], INFERENCE_SOURCE);
    let ids: Vec<u64> = v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [7, 6, 8, 2]);
    assert_eq!(v["rows"][1]["is_default"], true);
    assert_eq!(v["rows"][1]["config"]["weight_bits"], 5);
    assert_eq!(v["rows"][2]["energy_sources"][1]["gpu"], "nvml");
    assert_eq!(v["default"]["status"], "evaluated");
    assert_eq!(v["default"]["trial"], 6);
    let c = &v["comparison"];
    assert_eq!(c["default_budget"], 9.0);
    assert_eq!(c["same_budget"], true);
    let pct: Vec<f64> = c["improvements"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["percent"].as_f64().unwrap())
        .collect();
    assert!(
        (pct[0] - 20.0).abs() < 1e-9 && (pct[1] - 70.0).abs() < 1e-9,
        "{pct:?}"
    );
    assert_eq!(c["improvements"][1]["trial"], 8);
    assert_eq!(
        c["headline"],
        "20.0% lower loss, 70.0% less energy than the default DSNN"
    );
    assert_eq!(v["trials"], 10);
    assert_eq!(v["failed"], 1);
    assert_eq!(v["infeasible"], 0);
    assert_eq!(v["rows"][0]["ci95_rel"], serde_json::json!([null, null]));
    assert!(v["rows"][0]["inference_j_per_image"].is_null());
    assert!(v["rank_agreement"]["tau_b"].is_null());
}

fn circles(svg: &str, radius: u32) -> usize {
    let doc = roxmltree::Document::parse(svg).expect("the plot is well-formed XML");
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    doc.descendants()
        .filter(|n| n.tag_name().name() == "circle")
        .filter(|n| n.attribute("r") == Some(&radius.to_string()))
        .count()
}

#[test]
fn plot_draws_a_point_per_successful_trial_the_front_and_the_default() {
    let dir = tempfile::tempdir().unwrap();
    let successes = two_objective_run(dir.path());
    let plot = dir.path().join("front.svg");
    let text = stdout_of(&pareto(&[
        "--run",
        path_str(dir.path()),
        "--plot",
        path_str(&plot),
    ]));
    assert!(text.contains("Plot: "), "{text}");
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert_eq!(
        circles(&svg, dsnn_hpo::report::svg::TRIAL_RADIUS),
        successes
    );
    assert_eq!(circles(&svg, dsnn_hpo::report::svg::FRONT_RADIUS), 3);
    assert!(svg.contains("default"));
    assert!(
        svg.contains("inference_kwh [2]"),
        "axis label with the objective"
    );
    assert!(
        svg.contains("one inference pass over the validation split"),
        "its source"
    );
    assert!(
        !svg.contains("log scale"),
        "4 mJ/1 mJ spans less than two decades"
    );
}

#[test]
fn three_objectives_compare_other_budgets_and_plot_log_energy() {
    let dir = tempfile::tempdir().unwrap();
    let successes = three_objective_run(dir.path());
    let plot = dir.path().join("front.svg");
    let text = stdout_of(&pareto(&[
        "--run",
        path_str(dir.path()),
        "--plot",
        path_str(&plot),
    ]));
    let lines: Vec<&str> = text.lines().collect();
    let header = lines
        .iter()
        .position(|l| l.trim_start().starts_with("id"))
        .unwrap();
    let ids: Vec<&str> = lines[header + 1..]
        .iter()
        .take_while(|l| !l.trim().is_empty())
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(ids, ["3", "4", "0"], "{text}");
    assert!(
        lines[header + 3].ends_with("<- default"),
        "{}",
        lines[header + 3]
    );
    assert!(text.contains("[3] training_kwh: "), "{text}");
    assert!(
        text.contains("no other front point has the default's budget 1: front points at budget 3 compared with the default at 1"),
        "{text}"
    );
    assert!(
        text.contains("Best improvements: 40.0% lower loss, 50.0% less energy (inference_kwh) than the default DSNN."),
        "{text}"
    );
    assert!(
        text.contains("training_kwh: no compared front point is lower"),
        "{text}"
    );
    let svg = std::fs::read_to_string(&plot).unwrap();
    // One panel per energy objective against loss.
    assert_eq!(
        circles(&svg, dsnn_hpo::report::svg::TRIAL_RADIUS),
        2 * successes
    );
    assert!(
        svg.contains("training_kwh [3], log scale"),
        "1e-5..1e-2 spans three decades"
    );
    assert!(svg.contains("inference_kwh [2]:"), "linear, 2e-3..6e-3");
}

#[test]
fn a_default_never_evaluated_is_said_not_failed() {
    let dir = tempfile::tempdir().unwrap();
    let lines = vec![
        ok(0, &config("adam", 0.01, 3), 1.0, &[0.4, 1e-3]),
        ok(1, &config("sgd", 0.05, 4), 1.0, &[0.3, 2e-3]),
    ];
    write_run(
        dir.path(),
        &[("loss", LOSS_SOURCE), ("inference_kwh", INFERENCE_SOURCE)],
        &config("sgd", 0.1, 5),
        &lines,
    );
    let text = stdout_of(&pareto(&["--run", path_str(dir.path())]));
    assert!(text.contains("never evaluated"), "{text}");
    let json = stdout_of(&pareto(&[
        "--run",
        path_str(dir.path()),
        "--format",
        "json",
    ]));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["default"]["status"], "not_evaluated");
    assert!(v["comparison"].is_null());
}

/// Runs `pareto` expecting failure; returns stderr.
fn error_of(args: &[&str]) -> String {
    let o = pareto(args);
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(2), "stderr: {stderr}");
    assert!(o.stdout.is_empty(), "nothing on stdout");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

#[test]
fn bad_run_directories_exit_2_naming_the_file_and_what_is_expected() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-run");
    let e = error_of(&["--run", path_str(&missing)]);
    assert!(
        e.contains("no-such-run: no such directory; expected a run directory"),
        "{e}"
    );

    // trials.jsonl without run.json.
    let only_trials = dir.path().join("only-trials");
    std::fs::create_dir(&only_trials).unwrap();
    std::fs::write(only_trials.join("trials.jsonl"), "").unwrap();
    let e = error_of(&["--run", path_str(&only_trials)]);
    assert!(
        e.contains("only-trials/run.json: not found; expected the run file"),
        "{e}"
    );

    // run.json without trials.jsonl.
    let only_run = dir.path().join("only-run");
    std::fs::create_dir(&only_run).unwrap();
    two_objective_run(&only_run);
    std::fs::remove_file(only_run.join("trials.jsonl")).unwrap();
    let e = error_of(&["--run", path_str(&only_run)]);
    assert!(
        e.contains("only-run/trials.jsonl: not found; expected the trial log"),
        "{e}"
    );

    // run.json that is not one.
    std::fs::write(only_run.join("run.json"), "{\"objectives\": 3}").unwrap();
    let e = error_of(&["--run", path_str(&only_run)]);
    assert!(
        e.contains("only-run/run.json: not a dsnn-hpo run file"),
        "{e}"
    );
}

#[test]
fn a_corrupt_log_line_is_named() {
    let dir = tempfile::tempdir().unwrap();
    two_objective_run(dir.path());
    let path = dir.path().join("trials.jsonl");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines[2] = "{\"id\": 2, \"config\": {\"lr\": 0.1}, \"budget\": \"nine\"}";
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    let e = error_of(&["--run", path_str(dir.path())]);
    assert!(e.contains("trials.jsonl line 3: "), "{e}");
    assert!(e.contains("expected one JSON trial record per line"), "{e}");
}

#[test]
fn a_run_without_a_successful_trial_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let a = config("sgd", 0.1, 5);
    write_run(
        dir.path(),
        &[("loss", LOSS_SOURCE), ("inference_kwh", INFERENCE_SOURCE)],
        &a,
        &[
            failed(0, &a, 1.0, "training diverged"),
            failed(1, &a, 1.0, "out of memory"),
        ],
    );
    let e = error_of(&["--run", path_str(dir.path())]);
    assert!(
        e.contains("trials.jsonl: none of its 2 trials succeeded (trial 0 failed: training diverged); expected at least one successful or infeasible trial"),
        "{e}"
    );
    // A constrained run whose measured trials all broke a bound still has a report: an empty
    // front, and why.
    std::fs::remove_file(dir.path().join("trials.jsonl")).unwrap();
    write_run(
        dir.path(),
        &[("loss", LOSS_SOURCE), ("inference_kwh", INFERENCE_SOURCE)],
        &a,
        &[
            failed(0, &a, 1.0, "training diverged"),
            infeasible(
                ok(1, &a, 1.0, &[0.5, 1e-6]),
                &["accuracy < min 0.8 (got 0.5)"],
            ),
        ],
    );
    let o = pareto(&["--run", path_str(dir.path())]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = stdout_of(&o);
    assert!(text.contains("0 of "), "{text}");
    assert!(text.contains("accuracy < min 0.8: 1"), "{text}");
    // An empty log says so too.
    std::fs::write(dir.path().join("trials.jsonl"), "").unwrap();
    let e = error_of(&["--run", path_str(dir.path())]);
    assert!(
        e.contains("trials.jsonl: holds no finished trial yet"),
        "{e}"
    );
}

#[test]
fn an_unwritable_plot_path_is_named() {
    let dir = tempfile::tempdir().unwrap();
    two_objective_run(dir.path());
    let plot = dir.path().join("no-such-dir").join("front.svg");
    let e = error_of(&["--run", path_str(dir.path()), "--plot", path_str(&plot)]);
    assert!(e.contains("cannot write"), "{e}");
    assert!(e.contains("no-such-dir/front.svg"), "{e}");
}

#[test]
fn objective_counts_that_disagree_with_run_json_are_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let a = config("sgd", 0.1, 5);
    write_run(
        dir.path(),
        &[("loss", LOSS_SOURCE), ("inference_kwh", INFERENCE_SOURCE)],
        &a,
        &[ok(0, &a, 1.0, &[0.4, 1e-3, 5.0])],
    );
    let e = error_of(&["--run", path_str(dir.path())]);
    assert!(
        e.contains("trial 0 has 3 objective values but run.json names 2"),
        "{e}"
    );
}

const MEASURED_SOURCE: &str = "one inference pass over the validation split, measured by the energy meter, mean of repeated passes with its 95% CI (source per component in each record)";
const OPCOUNT_SOURCE: &str =
    "one inference pass over the validation split, op-count model (source opcount)";
const OPCOUNT_MODEL: &str = "op-count model (Horowitz ISSCC 2014, 45 nm)";
/// Validation images per pass in [`dsnn`] trials.
const IMAGES: f64 = 1000.0;
const ACCURACY: &str = "accuracy < min 0.8";
const MEMORY: &str = "weight_memory_bits > max 0.5 x default (5000)";

/// A DSNN trial as `optimize` now writes it with `energy_model = "both"`: the training record,
/// the measured inference record (repeated passes, relative CI `rel`, meters `estimate`), the
/// op-count record, metrics with both per-image energies, and objectives loss, measured and
/// op-count inference kWh per validation pass (`meas` and `op` in joules per image).
fn dsnn(
    id: u64,
    config: &Config,
    budget: f64,
    loss: f64,
    meas: f64,
    op: f64,
    rel: f64,
) -> TrialLine {
    let pass_j = meas * IMAGES;
    let mut measured = EnergyRecord {
        cpu: ComponentEnergy::new(SourceKind::Estimate, pass_j * 5.0, 5.0),
        gpu: ComponentEnergy::new(SourceKind::None, 0.0, 5.0),
        ram: ComponentEnergy::new(SourceKind::Estimate, 0.0, 5.0),
        energy_j: pass_j * 5.0,
        energy_kwh: pass_j * 5.0 / 3.6e6,
        ..record("inference", SourceKind::None)
    };
    measured.repeat = Some(RepeatStats {
        passes: 5,
        warmup_passes: 1,
        mean_j: pass_j,
        sd_j: pass_j * rel / 1.24,
        autocorrelation: 0.0,
        effective_passes: 5.0,
        ci95_half_j: pass_j * rel,
        rel_ci95: rel,
        min_j: pass_j * 0.98,
        max_j: pass_j * 1.02,
        target_rel_ci: 0.05,
        target_met: true,
        samples_j: Vec::new(),
    });
    let op_j = op * IMAGES;
    let opcount = EnergyRecord {
        duration_s: 0.0,
        cpu: ComponentEnergy::new(SourceKind::Opcount, op_j, 0.0),
        gpu: ComponentEnergy::new(SourceKind::None, 0.0, 0.0),
        ram: ComponentEnergy::new(SourceKind::Opcount, 0.0, 0.0),
        energy_j: op_j,
        energy_kwh: op_j / 3.6e6,
        cpu_model: OPCOUNT_MODEL.into(),
        ..record("inference", SourceKind::None)
    };
    TrialLine {
        metrics: Some(Metrics {
            valid_accuracy: 1.0 - loss,
            epochs_trained: budget as usize,
            inference_j_per_image: Some(meas),
            opcount_j_per_image: Some(op),
            params: Some(1000),
            weight_memory_bits: Some(4000),
            ..Metrics::default()
        }),
        energy: vec![record("train", SourceKind::None), measured, opcount],
        ..TrialLine::success(
            id,
            config.clone(),
            budget,
            vec![loss, pass_j / 3.6e6, op_j / 3.6e6],
        )
    }
}

fn infeasible(mut t: TrialLine, violated: &[&str]) -> TrialLine {
    t.status = TrialStatus::Infeasible;
    t.violated = violated.iter().map(|v| v.to_string()).collect();
    t
}

/// `energy_model = "both"` with `[[constraints]]`: budget 3 holds successes 1 and 2, and
/// infeasible trials 3, 4 (the default), 5 and 6. Trial 3 (loss 0.05, least energy of all)
/// and 5 (0.15) would dominate the front; infeasible, they must not be on it. Front: 1 and 2;
/// the default 4 is reported beside them, marked infeasible. Violations: memory 3 trials
/// (3, 5, 6), accuracy 2 (4, 6). Trial 0 (budget 1) and the failed 7 are not in the rank
/// agreement.
fn constrained_run(dir: &Path) {
    let a = config("sgd", 0.1, 5);
    let b = config("adam", 0.01, 3);
    let c = config("sgd", 0.05, 4);
    let d = config("adamw", 0.2, 8);
    let e = config("sgd", 0.3, 8);
    let f = config("adam", 0.3, 8);
    let g = config("rmsprop", 0.2, 2);
    let lines = vec![
        dsnn(0, &b, 1.0, 0.50, 9e-6, 1e-6, 0.04),
        dsnn(1, &b, 3.0, 0.20, 4e-6, 2e-6, 0.013),
        dsnn(2, &c, 3.0, 0.30, 2e-6, 1e-6, 0.02),
        infeasible(
            dsnn(3, &d, 3.0, 0.05, 1e-6, 0.5e-6, 0.01),
            &[&format!("{MEMORY} (got 8000)")],
        ),
        infeasible(
            dsnn(4, &a, 3.0, 0.22, 5e-6, 2e-6, 0.05),
            &[&format!("{ACCURACY} (got 0.78)")],
        ),
        infeasible(
            dsnn(5, &e, 3.0, 0.15, 1.5e-6, 3e-6, 0.03),
            &[&format!("{MEMORY} (got 8000)")],
        ),
        infeasible(
            dsnn(6, &f, 3.0, 0.25, 6e-6, 4e-6, 0.03),
            &[
                &format!("{ACCURACY} (got 0.75)"),
                &format!("{MEMORY} (got 8000)"),
            ],
        ),
        failed(7, &g, 3.0, "out of memory"),
    ];
    write_run(
        dir,
        &[
            ("loss", LOSS_SOURCE),
            ("inference_kwh", MEASURED_SOURCE),
            ("opcount_inference_kwh", OPCOUNT_SOURCE),
        ],
        &a,
        &lines,
    );
}

/// Kendall tau-b at budget 3 over trials 1-6 (successful and infeasible), measured x against
/// op-count y (microjoules per image). Sorted by x: (1, 0.5) (1.5, 3) (2, 1) (4, 2) (5, 2)
/// (6, 4); no ties in x, y = 0.5 3 1 2 2 4. Of the 15 pairs: 0.5 is below all five later
/// values (5 concordant); 3 is above 1, 2, 2 (3 discordant) and below 4 (1 concordant); 1 is
/// below 2, 2, 4 (3 concordant); 2 ties 2 (one tie in y) and is below 4; 2 is below 4
/// (2 concordant). C = 11, D = 3, ties in y n2 = 1, in x n1 = 0:
/// tau-b = (11 - 3) / sqrt((15 - 0) x (15 - 1)) = 8 / sqrt(210) = 0.55205.
const EXPECTED_TAU: f64 = 0.552_052_447_473_883_7;

#[test]
fn constrained_run_keeps_infeasible_trials_off_the_front_and_counts_them() {
    assert!((EXPECTED_TAU - 8.0 / 210f64.sqrt()).abs() < 1e-12);
    let dir = tempfile::tempdir().unwrap();
    constrained_run(dir.path());
    let text = stdout_of(&pareto(&["--run", path_str(dir.path())]));
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        // Configurations count successful ones only (B and C).
        text.contains("2 of 2 configurations (8 trials, 1 failed, 4 infeasible)"),
        "{text}"
    );
    let header = lines
        .iter()
        .position(|l| l.trim_start().starts_with("id"))
        .unwrap();
    for column in [
        "loss [1]",
        "inference_kwh [2]",
        "opcount_inference_kwh [3]",
        "measured J/img [m]",
        "opcount J/img [o]",
    ] {
        assert!(
            lines[header].contains(column),
            "{column}: {}",
            lines[header]
        );
    }
    let rows: Vec<&str> = lines[header + 1..]
        .iter()
        .copied()
        .take_while(|l| !l.trim().is_empty())
        .collect();
    let ids: Vec<&str> = rows
        .iter()
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    // 3 and 5 would dominate 1 and 2 but are infeasible; 4 is the (infeasible) default.
    assert_eq!(ids, ["1", "4", "2"], "{text}");
    // Trial 1: 4 µJ x 1000 images = 4 mJ = 1.111e-9 kWh, CI 1.3%; the op-count objective has
    // no interval; both per-image views follow.
    let cells: Vec<&str> = rows[0].split_whitespace().collect();
    assert!(
        cells
            .windows(5)
            .any(|w| w == ["1.111e-9", "±1.3%", "5.556e-10", "4.000e-6", "2.000e-6"]),
        "{}",
        rows[0]
    );
    assert!(rows[2].contains("±2.0%"), "{}", rows[2]);
    assert!(
        rows[1].ends_with(&format!("<- default (infeasible: {ACCURACY} (got 0.78))")),
        "{}",
        rows[1]
    );
    assert!(
        text.contains(
            "[m] measured inference energy per image, joules: mean of repeated validation passes; meters: estimate"
        ),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "[o] op-count inference energy per image, joules: opcount, {OPCOUNT_MODEL}"
        )),
        "{text}"
    );
    assert!(
        text.contains("±: half-width of the 95% confidence interval"),
        "{text}"
    );
    assert!(
        text.contains(
            "rank agreement of measured vs op-count inference energy: Kendall tau-b = 0.55 over 6 trials at budget 3."
        ),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "infeasible (never on the front): 4 trials: {MEMORY}: 3; {ACCURACY}: 2"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "Default DSNN: trial 4 at budget 3 (loss 0.2200, inference_kwh 1.389e-9, opcount_inference_kwh 5.556e-10), infeasible ({ACCURACY} (got 0.78)), not on the front."
        )),
        "{text}"
    );
    // The infeasible default is still compared against: 0.20 vs 0.22, 2 vs 5, 1 vs 2 µJ.
    assert!(
        text.contains("Best improvements: 9.1% lower loss, 60.0% less energy (inference_kwh), 50.0% less energy (opcount_inference_kwh) than the default DSNN."),
        "{text}"
    );

    let json = stdout_of(&pareto(&[
        "--run",
        path_str(dir.path()),
        "--format",
        "json",
    ]));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["infeasible"], 4);
    assert_eq!(v["violations"][0]["constraint"], MEMORY);
    assert_eq!(v["violations"][0]["trials"], 3);
    assert_eq!(v["violations"][1]["constraint"], ACCURACY);
    assert_eq!(v["violations"][1]["trials"], 2);
    let on_front: Vec<u64> = v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["on_front"] == true)
        .map(|r| r["id"].as_u64().unwrap())
        .collect();
    assert_eq!(on_front, [1, 2]);
    assert_eq!(
        v["rows"][0]["ci95_rel"],
        serde_json::json!([null, 0.013, null])
    );
    assert_eq!(v["rows"][0]["inference_j_per_image"], 4e-6);
    assert_eq!(v["rows"][0]["opcount_j_per_image"], 2e-6);
    assert_eq!(v["rows"][0]["inference_j_per_image_source"], "estimate");
    assert_eq!(v["rows"][0]["opcount_j_per_image_source"], "opcount");
    assert_eq!(v["rows"][1]["status"], "infeasible");
    assert_eq!(
        v["rows"][1]["violated"][0],
        format!("{ACCURACY} (got 0.78)")
    );
    assert_eq!(v["default"]["trial"], 4);
    assert_eq!(
        v["default"]["violated"][0],
        format!("{ACCURACY} (got 0.78)")
    );
    assert_eq!(v["objectives"][1]["measured_inference"], true);
    assert_eq!(v["objectives"][2]["measured_inference"], false);
    let ra = &v["rank_agreement"];
    assert!(
        (ra["tau_b"].as_f64().unwrap() - EXPECTED_TAU).abs() < 1e-9,
        "{ra}"
    );
    assert_eq!(ra["trials"], 6);
    assert_eq!(ra["budget"], 3.0);

    let csv_text = stdout_of(&pareto(&["--run", path_str(dir.path()), "--format", "csv"]));
    let mut r = csv::Reader::from_reader(csv_text.as_bytes());
    let header: Vec<String> = r.headers().unwrap().iter().map(String::from).collect();
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    assert!(!header.iter().any(|h| h == "opcount_inference_kwh_ci95_rel"));
    let rows: Vec<csv::StringRecord> = r.records().map(Result::unwrap).collect();
    assert_eq!(&rows[0][col("inference_kwh_ci95_rel")], "0.013");
    assert_eq!(
        rows[0][col("opcount_j_per_image")].parse::<f64>().unwrap(),
        2e-6
    );
    assert_eq!(&rows[0][col("inference_j_per_image_source")], "estimate");
    assert_eq!(&rows[1][col("status")], "infeasible");
    assert_eq!(&rows[1][col("violated")], format!("{ACCURACY} (got 0.78)"));
}

#[test]
fn infeasible_trials_are_grey_crosses_in_the_plot_not_front_rings() {
    let dir = tempfile::tempdir().unwrap();
    constrained_run(dir.path());
    let plot = dir.path().join("front.svg");
    stdout_of(&pareto(&[
        "--run",
        path_str(dir.path()),
        "--plot",
        path_str(&plot),
    ]));
    let svg = std::fs::read_to_string(&plot).unwrap();
    // Two panels (two energy objectives against loss): successes 0, 1, 2 as circles, the two
    // front points as rings.
    assert_eq!(circles(&svg, dsnn_hpo::report::svg::TRIAL_RADIUS), 2 * 3);
    assert_eq!(circles(&svg, dsnn_hpo::report::svg::FRONT_RADIUS), 2 * 2);
    assert!(
        svg.contains("infeasible trials (constraint violated)"),
        "legend"
    );
    assert!(svg.contains("infeasible (grey crosses): 4"), "footer");
}

#[test]
fn rank_agreement_is_omitted_with_a_reason_when_undefined() {
    // One value side constant: tau-b divides 0 by 0; the report says so, JSON holds null.
    let dir = tempfile::tempdir().unwrap();
    let lines = vec![
        dsnn(0, &config("sgd", 0.1, 5), 3.0, 0.2, 1e-6, 2e-6, 0.01),
        dsnn(1, &config("adam", 0.1, 5), 3.0, 0.3, 2e-6, 2e-6, 0.01),
        dsnn(2, &config("sgd", 0.2, 5), 3.0, 0.4, 3e-6, 2e-6, 0.01),
    ];
    write_run(
        dir.path(),
        &[
            ("loss", LOSS_SOURCE),
            ("inference_kwh", MEASURED_SOURCE),
            ("opcount_inference_kwh", OPCOUNT_SOURCE),
        ],
        &config("sgd", 0.1, 5),
        &lines,
    );
    let text = stdout_of(&pareto(&["--run", path_str(dir.path())]));
    assert!(
        text.contains("rank agreement of measured vs op-count inference energy: not computed: tau-b is undefined over the 3 trials at budget 3"),
        "{text}"
    );
    let json = stdout_of(&pareto(&[
        "--run",
        path_str(dir.path()),
        "--format",
        "json",
    ]));
    assert!(!json.contains("NaN"), "{json}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!(v["rank_agreement"]["tau_b"].is_null());
    assert_eq!(v["rank_agreement"]["trials"], 3);
}
