//! The `--plot` figure: expected run time against checkpoint interval, with Young, Daly
//! and the exact optimum marked, described as a [`Figure`] and drawn by plotters (SVG or
//! PNG by the file's extension).

use crate::cmd::figure::{Figure, Series, CURVE};
use lazarus::policy::{format_seconds, Formula, Model};
use plotters::style::RGBColor;
use std::path::Path;

/// The colour of each formula's mark (shared with the experiment's figure).
pub(crate) fn colour(f: Formula) -> RGBColor {
    match f {
        Formula::Young => RGBColor(31, 119, 180),
        Formula::DalyFirstOrder => RGBColor(148, 103, 189),
        Formula::DalyHigherOrder => RGBColor(44, 160, 44),
        Formula::Optimal => RGBColor(214, 39, 40),
    }
}

/// A display unit: name and seconds per unit.
fn unit_for(seconds: f64) -> (&'static str, f64) {
    if seconds < 120.0 {
        ("s", 1.0)
    } else if seconds < 7200.0 {
        ("min", 60.0)
    } else if seconds < 3.0 * 86400.0 {
        ("h", 3600.0)
    } else {
        ("d", 86400.0)
    }
}

/// The figure for `model` and `work` seconds of work: T_w(τ) (flat from τ = T_s on: no
/// checkpoint is taken, [`super::runtime_at`]) over a range around the
/// formulas' intervals (log or linear τ axis), T_w from T_s to T_s + 3·(T_w* − T_s) so
/// the minimum is visible, each formula's interval as a vertical line (dashed, the
/// optimum solid) with a dot on the curve, and a legend.
pub(crate) fn figure(model: &Model, work: f64, log_x: bool) -> Result<Figure, String> {
    let best = model.optimal();
    let best_t = super::runtime_at(model, work, best);
    if !best_t.is_finite() {
        return Err("the expected run time overflows at every interval; nothing to plot".into());
    }
    let marks: Vec<(Formula, f64)> = Formula::ALL
        .into_iter()
        .map(|f| (f, model.interval(f)))
        .collect();
    let (min_mark, max_mark) = marks
        .iter()
        .fold((best, best), |(lo, hi), (_, t)| (lo.min(*t), hi.max(*t)));
    let (x_lo, x_hi) = if log_x {
        (min_mark / 10.0, max_mark * 10.0)
    } else {
        (max_mark * 3.0 / 400.0, max_mark * 3.0)
    };
    let (xu, xs) = unit_for(best);
    let (yu, ys) = unit_for(work);
    let y_hi = work + (3.0 * (best_t - work)).max(work * 1e-9);
    let n = 600;
    let curve: Vec<(f64, f64)> = (0..=n)
        .map(|i| {
            let f = i as f64 / n as f64;
            let x = if log_x {
                x_lo * (x_hi / x_lo).powf(f)
            } else {
                x_lo + f * (x_hi - x_lo)
            };
            (x / xs, super::runtime_at(model, work, x) / ys)
        })
        .collect();
    let mut series = vec![Series::Line {
        points: curve,
        colour: CURVE,
        width: 2,
        dashed: false,
        label: None,
    }];
    // The optimum first, so dashed estimates that coincide with it stay visible.
    let mut order = marks.clone();
    order.sort_by_key(|(f, _)| *f != Formula::Optimal);
    for (f, tau) in &order {
        series.push(Series::Vertical {
            x: tau / xs,
            colour: colour(*f),
            width: 2,
            dashed: *f != Formula::Optimal,
            label: Some(format!("{f}: {}", format_seconds(*tau))),
        });
    }
    for (f, tau) in &order {
        series.push(Series::Dots {
            points: vec![(tau / xs, super::runtime_at(model, work, *tau) / ys)],
            radius: 4,
            colour: colour(*f),
            label: None,
        });
    }
    Ok(Figure {
        title: format!(
            "cost {}, MTBF {}, restart {}, work {}",
            format_seconds(model.cost()),
            format_seconds(model.mtbf()),
            format_seconds(model.restart()),
            format_seconds(work)
        ),
        x_label: format!(
            "checkpoint interval ({xu}{})",
            if log_x { ", log scale" } else { "" }
        ),
        y_label: format!("expected run time ({yu})"),
        log_x,
        x: (x_lo / xs, x_hi / xs),
        y: (work / ys, y_hi / ys),
        series,
    })
}

/// Writes the plot to `path`: SVG or PNG by the extension (case-insensitive).
pub fn write(
    path: &Path,
    model: &Model,
    work: f64,
    log_x: bool,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let fig = figure(model, work, log_x).map_err(|e| format!("--plot {}: {e}", path.display()))?;
    fig.write(path)
        .map_err(|e| format!("--plot {}: {e}", path.display()).into())
}
