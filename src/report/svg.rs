//! `--plot front.svg`: every evaluated trial (shaded by budget), the front and the default
//! configuration, drawn with plotters' SVG backend. Two objectives give one panel (loss
//! against energy); more give one panel per further objective, each against the first. An axis
//! whose positive values span more than two decades is logarithmic.
//!
//! Shapes, so that readers and tests can tell them apart: trials are filled circles of radius
//! [`TRIAL_RADIUS`], front points red rings of radius [`FRONT_RADIUS`] (joined by a staircase
//! when there are two objectives), the default a black triangle, infeasible trials grey
//! crosses (measured, but never on the front), legend keys rectangles.

use std::path::Path;

use plotters::coord::Shift;
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::*;

use super::{Report, ReportError, fmt_short};

pub const TRIAL_RADIUS: u32 = 4;
pub const FRONT_RADIUS: u32 = 7;
const PANEL_W: u32 = 860;
const PANEL_H: u32 = 560;
const FOOTER_LINE: u32 = 18;

/// One axis of a panel: an objective's index, its label and its range.
struct Axis {
    index: usize,
    label: String,
    lo: f64,
    hi: f64,
    log: bool,
}

impl Axis {
    fn new(report: &Report, index: usize) -> Axis {
        let values: Vec<f64> = report
            .points
            .iter()
            .chain(&report.infeasible_points)
            .filter_map(|p| p.objectives.get(index).copied())
            .filter(|v| v.is_finite())
            .collect();
        let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let (lo, hi) = if lo.is_finite() { (lo, hi) } else { (0.0, 1.0) };
        let log = lo > 0.0 && hi / lo > 100.0;
        let (lo, hi) = if log {
            (lo / 1.5, hi * 1.5)
        } else {
            let pad = if hi > lo {
                (hi - lo) * 0.06
            } else if lo != 0.0 {
                lo.abs() * 0.1
            } else {
                1.0
            };
            (lo - pad, hi + pad)
        };
        let o = &report.objectives[index];
        let mut source = o.source.clone();
        if source.chars().count() > 70 {
            source = source.chars().take(67).collect::<String>() + "...";
        }
        let scale = if log { ", log scale" } else { "" };
        Axis {
            index,
            label: format!("{} [{}]{scale}: {source}", o.name, index + 1),
            lo,
            hi,
            log,
        }
    }
}

/// Light blue for the lowest budget to dark blue for the highest.
fn budget_colour(budgets: &[f64], b: f64) -> RGBColor {
    let rank = budgets.iter().position(|x| *x == b).unwrap_or(0);
    let t = if budgets.len() > 1 {
        rank as f64 / (budgets.len() - 1) as f64
    } else {
        1.0
    };
    let lerp = |a: u8, z: u8| (f64::from(a) + (f64::from(z) - f64::from(a)) * t).round() as u8;
    RGBColor(lerp(0x9e, 0x08), lerp(0xca, 0x30), lerp(0xe1, 0x6b))
}

type Failure = String;

fn fail<E: std::fmt::Debug>(e: E) -> Failure {
    format!("{e:?}")
}

/// Draws the report's plot into `path`.
pub fn write_svg(report: &Report, path: &Path) -> Result<(), ReportError> {
    let text = render(report).map_err(|message| ReportError::Write {
        path: path.to_path_buf(),
        message: format!("drawing the plot: {message}"),
    })?;
    std::fs::write(path, text).map_err(|e| ReportError::Write {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// The plot as SVG text.
pub fn render(report: &Report) -> Result<String, Failure> {
    let n = report.objectives.len();
    // (x, y) objective pairs: the first objective against each other one.
    let pairs: Vec<(usize, usize)> = if n >= 2 {
        (1..n).map(|j| (0, j)).collect()
    } else {
        vec![(0, 0)]
    };
    let footer_lines = n as u32 + 4;
    let width = PANEL_W * pairs.len() as u32;
    let height = PANEL_H + FOOTER_LINE * footer_lines + 10;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(fail)?;
        let (plots, footer) = root.split_vertically(PANEL_H);
        let panels = plots.split_evenly((1, pairs.len()));
        for (area, (xi, yi)) in panels.iter().zip(&pairs) {
            let x = Axis::new(report, *xi);
            let y = Axis::new(report, *yi);
            match (x.log, y.log) {
                (false, false) => panel(report, area, &x, &y, x.lo..x.hi, y.lo..y.hi)?,
                (false, true) => panel(report, area, &x, &y, x.lo..x.hi, (y.lo..y.hi).log_scale())?,
                (true, false) => panel(report, area, &x, &y, (x.lo..x.hi).log_scale(), y.lo..y.hi)?,
                (true, true) => panel(
                    report,
                    area,
                    &x,
                    &y,
                    (x.lo..x.hi).log_scale(),
                    (y.lo..y.hi).log_scale(),
                )?,
            }
        }
        draw_footer(report, &footer)?;
        root.present().map_err(fail)?;
    }
    Ok(svg)
}

fn draw_footer(report: &Report, area: &DrawingArea<SVGBackend, Shift>) -> Result<(), Failure> {
    let style = ("sans-serif", 13).into_font().color(&BLACK);
    let mut lines: Vec<String> = report
        .objectives
        .iter()
        .enumerate()
        .map(|(j, o)| format!("[{}] {}: {}", j + 1, o.name, o.source))
        .collect();
    let mut meters: Vec<String> = Vec::new();
    for r in &report.rows {
        let s = r.sources_short();
        if s != "-" && !meters.contains(&s) {
            meters.push(s);
        }
    }
    lines.push(format!(
        "energy meters of the front's trials: {}",
        if meters.is_empty() {
            "no energy records".to_string()
        } else {
            meters.join(", ")
        }
    ));
    lines.push(format!(
        "{}: {} successful trials (circles, darker = higher budget), front of {} (red rings); infeasible (grey crosses): {}; failed trials, not drawn: {}",
        report.run_dir,
        report.points.len(),
        report.front_len(),
        report.infeasible,
        report.failed
    ));
    lines.push(format!("default (black triangle): {}", report.default.note));
    for (i, l) in lines.iter().enumerate() {
        area.draw(&Text::new(
            l.clone(),
            (12, 6 + (i as u32 * FOOTER_LINE) as i32),
            style.clone(),
        ))
        .map_err(fail)?;
    }
    Ok(())
}

fn panel<XR, YR>(
    report: &Report,
    area: &DrawingArea<SVGBackend, Shift>,
    x: &Axis,
    y: &Axis,
    x_range: XR,
    y_range: YR,
) -> Result<(), Failure>
where
    XR: AsRangedCoord<Value = f64>,
    YR: AsRangedCoord<Value = f64>,
    XR::CoordDescType: ValueFormatter<f64>,
    YR::CoordDescType: ValueFormatter<f64>,
{
    let caption = if x.index == y.index {
        format!("{} of every trial", report.objectives[x.index].name)
    } else {
        format!(
            "{} vs {}",
            report.objectives[x.index].name, report.objectives[y.index].name
        )
    };
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 18))
        .margin(14)
        .x_label_area_size(48)
        .y_label_area_size(84)
        .build_cartesian_2d(x_range, y_range)
        .map_err(fail)?;
    let label = |v: &f64| fmt_short(*v);
    chart
        .configure_mesh()
        .x_desc(x.label.clone())
        .y_desc(y.label.clone())
        .x_label_formatter(&label)
        .y_label_formatter(&label)
        .axis_desc_style(("sans-serif", 13))
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(fail)?;

    let mut budgets: Vec<f64> = report.points.iter().map(|p| p.budget).collect();
    budgets.sort_by(f64::total_cmp);
    budgets.dedup();
    let at = |o: &[f64]| (o[x.index], o[y.index]);
    for b in &budgets {
        let colour = budget_colour(&budgets, *b);
        chart
            .draw_series(
                report
                    .points
                    .iter()
                    .filter(|p| p.budget == *b)
                    .map(|p| Circle::new(at(&p.objectives), TRIAL_RADIUS, colour.filled())),
            )
            .map_err(fail)?
            .label(format!(
                "trials at budget {}",
                super::baseline::fmt_budget(*b)
            ))
            .legend(move |(px, py)| {
                Rectangle::new([(px - 6, py - 5), (px + 6, py + 5)], colour.filled())
            });
    }

    if !report.infeasible_points.is_empty() {
        let grey = RGBColor(0x99, 0x99, 0x99);
        chart
            .draw_series(
                report
                    .infeasible_points
                    .iter()
                    .map(|p| Cross::new(at(&p.objectives), 5, grey.stroke_width(2))),
            )
            .map_err(fail)?
            .label("infeasible trials (constraint violated)")
            .legend(move |(px, py)| {
                Rectangle::new([(px - 6, py - 1), (px + 6, py + 1)], grey.filled())
            });
    }

    let mut front: Vec<(f64, f64)> = report
        .rows
        .iter()
        .filter(|r| r.on_front)
        .map(|r| at(&r.objectives))
        .collect();
    front.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
    let red = RGBColor(0xd6, 0x27, 0x28);
    if report.objectives.len() == 2 && x.index != y.index {
        let mut steps = Vec::new();
        for (i, p) in front.iter().enumerate() {
            if i > 0 {
                steps.push((p.0, front[i - 1].1));
            }
            steps.push(*p);
        }
        chart
            .draw_series(std::iter::once(PathElement::new(
                steps,
                red.stroke_width(2),
            )))
            .map_err(fail)?;
    }
    chart
        .draw_series(
            front
                .iter()
                .map(|p| Circle::new(*p, FRONT_RADIUS, red.stroke_width(2))),
        )
        .map_err(fail)?
        .label("Pareto front")
        .legend(move |(px, py)| Rectangle::new([(px - 6, py - 2), (px + 6, py + 2)], red.filled()));

    if let Some(d) = report.rows.iter().find(|r| r.is_default) {
        let p = at(&d.objectives);
        chart
            .draw_series(std::iter::once(TriangleMarker::new(p, 8, BLACK.filled())))
            .map_err(fail)?
            .label(format!("default configuration (trial {})", d.id))
            .legend(|(px, py)| {
                Rectangle::new([(px - 6, py - 5), (px + 6, py + 5)], BLACK.filled())
            });
        chart
            .draw_series(std::iter::once(Text::new(
                "default",
                p,
                ("sans-serif", 13).into_font().color(&BLACK),
            )))
            .map_err(fail)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .label_font(("sans-serif", 12))
        .draw()
        .map_err(fail)?;
    Ok(())
}
