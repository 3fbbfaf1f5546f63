//! The report as a text table: the front sorted by loss, the default configuration marked,
//! objective sources in the footer (with both views of inference energy per image, their rank
//! agreement and the infeasible trials per constraint), then the improvements against the
//! default.

use std::io::Write;

use super::baseline::fmt_budget;
use super::{Report, Row, fmt_short, fmt_value};

/// Column heads of the two per-image energy views, footnoted `[m]` and `[o]`.
const MEASURED_HEAD: &str = "measured J/img [m]";
const OPCOUNT_HEAD: &str = "opcount J/img [o]";

/// A value with its relative 95% CI: `3.412e-6 ±1.3%`.
fn with_ci(v: f64, rel: Option<f64>) -> String {
    match rel {
        Some(r) => {
            let pct = r * 100.0;
            let digits = if pct < 0.1 { 2 } else { 1 };
            format!("{} ±{pct:.digits$}%", fmt_value(v))
        }
        None => fmt_value(v),
    }
}

fn opt_value(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), fmt_value)
}

/// The mark after a row: the default, whether on the front, and why an infeasible one is not.
fn mark(r: &Row) -> String {
    match (r.is_default, r.on_front, r.violated.is_empty()) {
        (true, true, _) => "<- default".into(),
        (true, false, true) => "<- default (not on the front)".into(),
        (true, false, false) => format!("<- default (infeasible: {})", r.violated.join("; ")),
        _ => String::new(),
    }
}

/// Writes the report for people.
pub fn write_table(report: &Report, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(
        out,
        "Pareto front of {}: {} of {} configurations ({} trials, {} failed{}); hypervolume {:.4} (objectives min-max normalised, reference point 1.1 each)",
        report.run_dir,
        report.front_len(),
        report.configurations,
        report.trials,
        report.failed,
        if report.infeasible > 0 {
            format!(", {} infeasible", report.infeasible)
        } else {
            String::new()
        },
        report.hypervolume
    )?;
    let c = &report.cost;
    let budgets: Vec<String> = c
        .by_budget
        .iter()
        .map(|b| {
            format!(
                "{}: {} trials, {} epochs ({:.0}%)",
                fmt_budget(b.budget),
                b.trials,
                fmt_budget(b.epochs),
                100.0 * b.share
            )
        })
        .collect();
    writeln!(
        out,
        "Cost: {} epochs trained (a continued trial counts the epochs it added); by budget {}; hypervolume after 25/50/75/100% of them {:.4} / {:.4} / {:.4} / {:.4} (normalised as above)",
        fmt_budget(c.epochs),
        budgets.join(", "),
        c.hypervolume_at_quarters[0],
        c.hypervolume_at_quarters[1],
        c.hypervolume_at_quarters[2],
        c.hypervolume_at_quarters[3]
    )?;
    writeln!(out)?;
    let mut header: Vec<String> = vec!["id".into(), "budget".into()];
    header.extend(report.parameters.iter().cloned());
    for (j, o) in report.objectives.iter().enumerate() {
        header.push(format!("{} [{}]", o.name, j + 1));
    }
    header.push(MEASURED_HEAD.into());
    header.push(OPCOUNT_HEAD.into());
    header.push("energy sources".into());
    header.push(String::new());
    let mut cells: Vec<Vec<String>> = vec![header];
    for r in &report.rows {
        let mut row = vec![r.id.to_string(), fmt_budget(r.budget)];
        for p in &report.parameters {
            row.push(match r.config.get(p) {
                Some(crate::space::Value::Float(x)) => fmt_short(*x),
                Some(v) => v.to_string(),
                None => "-".into(),
            });
        }
        row.extend(
            r.objectives
                .iter()
                .enumerate()
                .map(|(j, v)| with_ci(*v, r.ci95_rel.get(j).copied().flatten())),
        );
        row.push(opt_value(r.inference_j_per_image));
        row.push(opt_value(r.opcount_j_per_image));
        row.push(r.sources_short());
        row.push(mark(r));
        cells.push(row);
    }
    let columns = cells[0].len();
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            cells
                .iter()
                .map(|r| r[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in &cells {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            let w = widths[c];
            // Numbers right-aligned; configuration values, sources and the mark left-aligned.
            let text_column = (c >= 2 && c < 2 + report.parameters.len()) || c + 2 >= columns;
            if c > 0 {
                line.push_str("  ");
            }
            if text_column {
                line.push_str(&format!("{cell:<w$}"));
            } else {
                line.push_str(&format!("{cell:>w$}"));
            }
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    writeln!(out)?;
    for (j, o) in report.objectives.iter().enumerate() {
        writeln!(out, "[{}] {}: {}", j + 1, o.name, o.source)?;
    }
    if report
        .rows
        .iter()
        .any(|r| r.ci95_rel.iter().any(Option::is_some))
    {
        writeln!(
            out,
            "±: half-width of the 95% confidence interval of the mean of the repeated inference passes, relative to the mean"
        )?;
    }
    writeln!(out, "[m] {}", report.per_image_sources.measured)?;
    writeln!(out, "[o] {}", report.per_image_sources.opcount)?;
    writeln!(
        out,
        "energy sources: the meters behind each trial's energy records (cpu, gpu, ram; every phase); per record with --format json or csv"
    )?;
    writeln!(out)?;
    writeln!(out, "{}.", report.rank_agreement.note)?;
    if report.infeasible > 0 {
        let per: Vec<String> = report
            .violations
            .iter()
            .map(|v| format!("{}: {}", v.constraint, v.trials))
            .collect();
        writeln!(
            out,
            "infeasible (never on the front): {} trial{}: {}",
            report.infeasible,
            if report.infeasible == 1 { "" } else { "s" },
            per.join("; ")
        )?;
    }
    writeln!(out)?;
    match &report.comparison {
        None => writeln!(out, "Default: {}.", report.default.note)?,
        Some(c) => {
            let d = report
                .rows
                .iter()
                .find(|r| r.is_default)
                .map(|r| {
                    report
                        .objectives
                        .iter()
                        .zip(&r.objectives)
                        .map(|(o, v)| format!("{} {}", o.name, fmt_value(*v)))
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default();
            writeln!(
                out,
                "{}: trial {} at budget {} ({d}){}.",
                capitalised(report.default_label),
                c.default_trial,
                fmt_budget(c.default_budget),
                if report.default.on_front {
                    ", on the front".to_string()
                } else if !report.default.violated.is_empty() {
                    format!(
                        ", infeasible ({}), not on the front",
                        report.default.violated.join("; ")
                    )
                } else {
                    ", not on the front".to_string()
                }
            )?;
            writeln!(out, "Budgets: {}.", c.budgets_note)?;
            for i in &c.improvements {
                writeln!(
                    out,
                    "  {}: {} (trial {}, budget {}) vs {} (default): {:.1}% {}",
                    i.objective,
                    fmt_value(i.value),
                    i.trial,
                    fmt_budget(i.budget),
                    fmt_value(i.default_value),
                    i.percent,
                    i.phrase
                )?;
            }
            for name in &c.not_improved {
                writeln!(
                    out,
                    "  {name}: no compared front point is lower than the default"
                )?;
            }
            if !c.dominating.is_empty() {
                let ids: Vec<String> = c.dominating.iter().map(u64::to_string).collect();
                writeln!(
                    out,
                    "  better than the default in every objective at once: trial {}",
                    ids.join(", ")
                )?;
            }
            writeln!(out, "Best improvements: {}.", c.headline)?;
        }
    }
    Ok(())
}

/// "default DSNN" -> "Default DSNN".
fn capitalised(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}
