//! Machine-readable reports: CSV and JSON of `dsnn-hpo pareto`, and the run directory's
//! `front.json` / `front.csv` that `optimize` rewrites after every trial.

use std::io::Write;
use std::path::Path;

use super::front::front_of;
use super::{Report, ReportError};
use crate::store::{self, RunInfo, TrialLine};

fn csv_error(e: csv::Error) -> std::io::Error {
    match e.into_kind() {
        csv::ErrorKind::Io(e) => e,
        other => std::io::Error::other(format!("{other:?}")),
    }
}

/// The report's rows as CSV: `id, budget`, one column per configuration parameter (empty when
/// inactive), per objective its value, for measured inference energy its relative 95% CI
/// (`<name>_ci95_rel`, empty without one), and its source (`<name>_source`), `on_front`,
/// `is_default`, the trial's `energy_sources` (`phase:cpu=..,gpu=..,ram=..;...`), both views
/// of inference energy per image with their sources (empty when not recorded), `status` and
/// `violated` (`; `-separated).
pub fn write_csv(report: &Report, out: &mut dyn Write) -> std::io::Result<()> {
    let mut w = csv::Writer::from_writer(out);
    let mut header: Vec<String> = vec!["id".into(), "budget".into()];
    header.extend(report.parameters.iter().cloned());
    for o in &report.objectives {
        header.push(o.name.clone());
        if o.measured_inference {
            header.push(format!("{}_ci95_rel", o.name));
        }
        header.push(format!("{}_source", o.name));
    }
    header.extend(
        [
            "on_front",
            "is_default",
            "energy_sources",
            "inference_j_per_image",
            "inference_j_per_image_source",
            "opcount_j_per_image",
            "opcount_j_per_image_source",
            "status",
            "violated",
        ]
        .map(String::from),
    );
    w.write_record(&header).map_err(csv_error)?;
    for r in &report.rows {
        let mut rec: Vec<String> = vec![r.id.to_string(), r.budget.to_string()];
        for p in &report.parameters {
            rec.push(r.config.get(p).map(|v| v.to_string()).unwrap_or_default());
        }
        for (j, (o, v)) in report.objectives.iter().zip(&r.objectives).enumerate() {
            rec.push(v.to_string());
            if o.measured_inference {
                let ci = r.ci95_rel.get(j).copied().flatten();
                rec.push(ci.map(|c| c.to_string()).unwrap_or_default());
            }
            rec.push(o.source.clone());
        }
        rec.push(r.on_front.to_string());
        rec.push(r.is_default.to_string());
        rec.push(r.sources_long());
        let opt = |v: Option<f64>| v.map(|v| v.to_string()).unwrap_or_default();
        rec.push(opt(r.inference_j_per_image));
        rec.push(r.inference_j_per_image_source.clone().unwrap_or_default());
        rec.push(opt(r.opcount_j_per_image));
        rec.push(r.opcount_j_per_image_source.clone().unwrap_or_default());
        rec.push(
            match r.status {
                crate::store::TrialStatus::Success => "success",
                crate::store::TrialStatus::Infeasible => "infeasible",
                crate::store::TrialStatus::Failed => "failed",
            }
            .to_string(),
        );
        rec.push(r.violated.join("; "));
        w.write_record(&rec).map_err(csv_error)?;
    }
    w.flush()
}

/// The whole report as pretty JSON.
pub fn write_json(report: &Report, out: &mut dyn Write) -> std::io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, report)?;
    writeln!(out)
}

/// Writes `dir/front.json` (objectives, their sources and the front's trial records) and
/// `dir/front.csv` (`id, budget`, the objectives, the configuration as JSON, each objective's
/// source), each atomically.
pub fn write_front(dir: &Path, info: &RunInfo, lines: &[TrialLine]) -> Result<(), ReportError> {
    let front = front_of(lines);
    let json_path = dir.join("front.json");
    let fail = |path: &Path, e: &dyn std::fmt::Display| ReportError::Write {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let json = serde_json::to_string_pretty(&serde_json::json!({
        "objectives": info.objectives,
        "objective_sources": info.objective_sources,
        "front": front,
    }))
    .map_err(|e| fail(&json_path, &e))?;
    store::write_atomic(&json_path, json.as_bytes()).map_err(|e| fail(&json_path, &e))?;

    let csv_path = dir.join("front.csv");
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut header: Vec<String> = vec!["id".into(), "budget".into()];
    header.extend(info.objectives.iter().cloned());
    header.push("config".into());
    header.extend(info.objectives.iter().map(|n| format!("{n}_source")));
    w.write_record(&header).map_err(|e| fail(&csv_path, &e))?;
    for t in &front {
        let mut rec: Vec<String> = vec![t.id.to_string(), t.budget.to_string()];
        rec.extend(t.objectives.iter().map(f64::to_string));
        rec.push(serde_json::to_string(&t.config).map_err(|e| fail(&csv_path, &e))?);
        rec.extend(info.objective_sources.iter().cloned());
        w.write_record(&rec).map_err(|e| fail(&csv_path, &e))?;
    }
    let bytes = w.into_inner().map_err(|e| fail(&csv_path, &e))?;
    store::write_atomic(&csv_path, &bytes).map_err(|e| fail(&csv_path, &e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::space::Config;

    #[test]
    fn front_csv_quotes_the_configuration_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::new();
        config.insert("optimizer", "sgd, \"fast\"");
        config.insert("lr", 0.1);
        let info = RunInfo {
            objectives: vec!["loss".into(), "inference_kwh".into()],
            objective_sources: vec!["1 - accuracy".into(), "measured, rapl".into()],
            default_config: config.clone(),
            meta_hash: "0".into(),
            config_toml: String::new(),
            constraint_reference: Default::default(),
        };
        let line = TrialLine::success(7, config, 9.0, vec![0.25, 1.5e-6]);
        write_front(dir.path(), &info, std::slice::from_ref(&line)).unwrap();
        let mut r = csv::Reader::from_path(dir.path().join("front.csv")).unwrap();
        let header: Vec<String> = r.headers().unwrap().iter().map(String::from).collect();
        assert_eq!(
            header,
            [
                "id",
                "budget",
                "loss",
                "inference_kwh",
                "config",
                "loss_source",
                "inference_kwh_source"
            ]
        );
        let rows: Vec<csv::StringRecord> = r.records().map(Result::unwrap).collect();
        assert_eq!(rows.len(), 1);
        assert_eq!(&rows[0][0], "7");
        assert_eq!(rows[0][3].parse::<f64>().unwrap(), 1.5e-6);
        let back: Config = serde_json::from_str(&rows[0][4]).unwrap();
        assert_eq!(back, line.config);
        assert_eq!(&rows[0][6], "measured, rapl");
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("front.json")).unwrap())
                .unwrap();
        assert_eq!(json["front"][0]["id"], 7);
        assert_eq!(json["objective_sources"][1], "measured, rapl");
    }
}
