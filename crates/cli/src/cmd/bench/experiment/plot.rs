//! The experiment's figure: the model's expected run time against the interval (curve, at
//! the rounds' mean failure-free time), the mean of the trials' own predictions at each
//! interval (dark dots), every trial (small grey dots), the mean of each interval with its
//! min–max range (red), the failure-free run (dashed line) and Young/Daly/optimum
//! (dashed), as a [`Figure`] drawn like `lazarus model --plot`'s.

use crate::cmd::figure::{Figure, Series, CURVE};
use crate::cmd::model::plot::colour;
use lazarus::policy::{format_seconds, Formula, Model};
use plotters::style::RGBColor;

/// The measurements of one interval.
#[derive(Clone, Debug)]
pub(super) struct Point {
    /// The interval actually used (steps × time per step, mean over the trials), seconds.
    pub interval_s: f64,
    /// The model's prediction there (mean of the trials' predictions), seconds.
    pub predicted_s: f64,
    /// Wall time of each trial, seconds.
    pub trials: Vec<f64>,
}

const TRIAL: RGBColor = RGBColor(150, 150, 150);
const MEAN: RGBColor = RGBColor(214, 39, 40);

/// `lazarus model`'s colours, except the optimum: red is the measured means' here.
fn mark_colour(f: Formula) -> RGBColor {
    match f {
        Formula::Optimal => RGBColor(255, 127, 14),
        f => colour(f),
    }
}

/// The figure. `work` is the failure-free run time T_s (the curve's floor).
pub(super) fn figure(model: &Model, points: &[Point], work: f64) -> Figure {
    // Daly last: it is drawn over the optimum it usually coincides with.
    let marks = [Formula::Young, Formula::Optimal, Formula::DalyHigherOrder]
        .map(|f| (f, model.interval(f)));
    let xs: Vec<f64> = points
        .iter()
        .map(|p| p.interval_s)
        .chain(marks.iter().map(|m| m.1))
        .filter(|v| v.is_finite() && *v > 0.0)
        .collect();
    let lo = xs.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = xs.iter().copied().fold(0.0f64, f64::max);
    let (x_lo, x_hi) = if lo.is_finite() && hi > 0.0 {
        (lo / 1.6, hi * 1.6)
    } else {
        (0.1, 10.0)
    };
    // y: from the failure-free time to the highest of the measurements and predictions.
    let y_top = points
        .iter()
        .flat_map(|p| p.trials.iter().copied())
        .chain(points.iter().map(|p| p.predicted_s))
        .filter(|v| v.is_finite())
        .fold(work * 1.01, f64::max);
    let y_bottom = points
        .iter()
        .flat_map(|p| p.trials.iter().copied())
        .filter(|v| v.is_finite())
        .fold(work, f64::min);
    let pad = (y_top - y_bottom) * 0.08;
    let curve: Vec<(f64, f64)> = (0..=400)
        .map(|i| x_lo * (x_hi / x_lo).powf(i as f64 / 400.0))
        .map(|x| (x, model.expected_wall_time(x, work)))
        .collect();
    let mut series = vec![
        Series::Line {
            points: vec![(x_lo, work), (x_hi, work)],
            colour: CURVE,
            width: 1,
            dashed: true,
            label: Some(format!("failure-free {}", format_seconds(work))),
        },
        Series::Line {
            points: curve,
            colour: CURVE,
            width: 2,
            dashed: false,
            label: Some("model T_w(τ)".into()),
        },
    ];
    for (f, tau) in marks {
        series.push(Series::Vertical {
            x: tau,
            colour: mark_colour(f),
            width: 2,
            dashed: true,
            label: Some(format!("{f}: {}", format_seconds(tau))),
        });
    }
    series.push(Series::Dots {
        points: points
            .iter()
            .filter(|p| p.predicted_s.is_finite())
            .map(|p| (p.interval_s, p.predicted_s))
            .collect(),
        radius: 4,
        colour: CURVE,
        label: Some("model at the intervals used".into()),
    });
    series.push(Series::Dots {
        points: points
            .iter()
            .flat_map(|p| p.trials.iter().map(|w| (p.interval_s, *w)))
            .collect(),
        radius: 2,
        colour: TRIAL,
        label: Some("trials".into()),
    });
    let measured: Vec<&Point> = points.iter().filter(|p| !p.trials.is_empty()).collect();
    let range = |p: &Point| {
        let lo = p.trials.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = p.trials.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (p.interval_s, lo, hi)
    };
    series.push(Series::Bars {
        bars: measured.iter().map(|p| range(p)).collect(),
        colour: MEAN,
        label: Some("measured mean, min–max".into()),
    });
    series.push(Series::Dots {
        points: measured
            .iter()
            .map(|p| {
                (
                    p.interval_s,
                    p.trials.iter().sum::<f64>() / p.trials.len() as f64,
                )
            })
            .collect(),
        radius: 5,
        colour: MEAN,
        label: None,
    });
    Figure {
        title: format!(
            "δ {}, MTBF {}, R {}, work {}: measured vs model",
            format_seconds(model.cost()),
            format_seconds(model.mtbf()),
            format_seconds(model.restart()),
            format_seconds(work)
        ),
        x_label: "checkpoint interval τ (s, log scale)".into(),
        y_label: "wall time (s)".into(),
        log_x: true,
        x: (x_lo, x_hi),
        y: ((y_bottom - pad).max(0.0), y_top + pad),
        series,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (fill colour, radius, cx, cy) of every disc of an SVG document.
    fn discs(svg: &str) -> Vec<(String, String, i64, i64)> {
        let doc = roxmltree::Document::parse(svg).expect("well-formed SVG");
        doc.descendants()
            .filter(|n| n.has_tag_name("circle"))
            .map(|n| {
                let a = |k| n.attribute(k).unwrap_or_default().to_string();
                (
                    a("fill"),
                    a("r"),
                    a("cx").parse().unwrap(),
                    a("cy").parse().unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn figure_has_the_curve_the_points_and_the_marks() {
        let m = Model::new(0.2, 20.0, 0.5).unwrap();
        let pts = vec![
            Point {
                interval_s: 1.0,
                predicted_s: 131.0,
                trials: vec![130.0, 134.0],
            },
            Point {
                interval_s: 4.0,
                predicted_s: 140.0,
                trials: vec![],
            },
        ];
        let s = figure(&m, &pts, 120.0).svg().unwrap();
        let d = discs(&s);
        let count = |fill: &str, r: &str| d.iter().filter(|c| c.0 == fill && c.1 == r).count();
        // Legend samples are discs too: one per labelled dot series.
        assert_eq!(count("#D62728", "5"), 1, "one mean dot: {d:?}");
        assert_eq!(count("#969696", "2"), 2 + 1, "one dot per trial: {d:?}");
        assert_eq!(
            count("#282828", "4"),
            2 + 1,
            "the model at both intervals: {d:?}"
        );
        for text in [
            "Daly (higher order)",
            "Young",
            "exact optimum",
            "model T_w(τ)",
        ] {
            assert!(s.contains(text), "{text} missing");
        }
        assert!(s.contains("checkpoint interval τ (s, log scale)") && s.contains("wall time (s)"));
        assert!(!s.contains("NaN") && !s.contains("inf"));
    }

    /// Regression: the recorded run drew 1×Daly at 0.89 s next to a Daly mark at 1.26 s
    /// (points placed by a different speed than the marks). Now the bench sets each
    /// round's step count so the interval is the intended one in seconds, and a point at
    /// τ_Daly must sit exactly on the Daly mark.
    #[test]
    fn one_x_daly_is_drawn_on_the_daly_mark() {
        let m = Model::new(0.05, 8.0, 0.25).unwrap();
        let daly = m.daly_higher_order();
        let pts = vec![Point {
            interval_s: daly,
            predicted_s: m.expected_wall_time(daly, 50.0),
            trials: vec![57.0, 59.0],
        }];
        let s = figure(&m, &pts, 50.0).svg().unwrap();
        let doc = roxmltree::Document::parse(&s).unwrap();
        // The first Daly-green line is the mark (the legend's sample comes last).
        let mark_x: i64 = doc
            .descendants()
            .find(|n| n.has_tag_name("polyline") && n.attribute("stroke") == Some("#2CA02C"))
            .and_then(|n| n.attribute("points"))
            .and_then(|p| p.split(',').next())
            .and_then(|x| x.trim().parse().ok())
            .unwrap();
        let mean = discs(&s)
            .into_iter()
            .find(|c| c.0 == "#D62728" && c.1 == "5")
            .unwrap();
        assert_eq!(mark_x, mean.2);
    }
}
