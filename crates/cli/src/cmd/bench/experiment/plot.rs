//! The experiment's figure: the model's expected run time against the interval (curve, at
//! the rounds' mean failure-free time), the mean of the trials' own predictions at each
//! interval (black dots), every trial (small grey dots), the mean of each interval with its
//! min–max range (red),
//! the failure-free run (dotted line) and Young/Daly/optimum (dashed). Built from the
//! `lazarus model` plot's scene items and written by its SVG writer, so both figures look
//! alike.

use crate::cmd::model::plot::{
    colour, label, linear_ticks, log_ticks, svg as render, Anchor, Item, Rgb, AREA, BLACK, CURVE,
    GRID,
};
use lazarus::policy::{format_seconds, Formula, Model};

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

const TRIAL: Rgb = Rgb(150, 150, 150);
const MEAN: Rgb = Rgb(214, 39, 40);

/// `lazarus model`'s colours, except the optimum: red is the measured means' here.
fn mark_colour(f: Formula) -> Rgb {
    match f {
        Formula::Optimal => Rgb(255, 127, 14),
        f => colour(f),
    }
}

fn line(points: Vec<(f64, f64)>, colour: Rgb, width: f64, dashed: bool) -> Item {
    Item::Line {
        points,
        colour,
        width,
        dashed,
        clip: true,
    }
}

fn text(x: f64, y: f64, s: String, anchor: Anchor, size: f64, vertical: bool) -> Item {
    Item::Text {
        x,
        y,
        text: s,
        anchor,
        size,
        vertical,
    }
}

/// The SVG document. `work` is the failure-free run time T_s (the curve's floor).
pub(super) fn svg(model: &Model, points: &[Point], work: f64) -> String {
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
    // y: from the failure-free time to the highest of the measurements and the curve.
    let curve_x: Vec<f64> = (0..=400)
        .map(|i| x_lo * (x_hi / x_lo).powf(i as f64 / 400.0))
        .collect();
    let curve_y: Vec<f64> = curve_x
        .iter()
        .map(|x| model.expected_wall_time(*x, work))
        .collect();
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
    let (y_lo, y_hi) = ((y_bottom - pad).max(0.0), y_top + pad);
    let (l, t, r, b) = AREA;
    let px = |x: f64| l + (x / x_lo).ln() / (x_hi / x_lo).ln() * (r - l);
    let py = |y: f64| b - ((y - y_lo) / (y_hi - y_lo)).clamp(-0.1, 1.1) * (b - t);

    let mut items = Vec::new();
    for v in log_ticks(x_lo, x_hi) {
        let x = px(v);
        items.push(line(vec![(x, t), (x, b)], GRID, 1.0, false));
        items.push(line(vec![(x, b), (x, b + 5.0)], BLACK, 1.0, false));
        items.push(text(x, b + 20.0, label(v), Anchor::Middle, 13.0, false));
    }
    for v in linear_ticks(y_lo, y_hi) {
        let y = py(v);
        if y < t - 0.5 || y > b + 0.5 {
            continue;
        }
        items.push(line(vec![(l, y), (r, y)], GRID, 1.0, false));
        items.push(line(vec![(l - 5.0, y), (l, y)], BLACK, 1.0, false));
        items.push(text(l - 8.0, y + 4.5, label(v), Anchor::End, 13.0, false));
    }
    items.push(Item::Line {
        points: vec![(l, t), (l, b), (r, b), (r, t), (l, t)],
        colour: BLACK,
        width: 1.0,
        dashed: false,
        clip: false,
    });
    // Failure-free run.
    items.push(line(vec![(l, py(work)), (r, py(work))], CURVE, 1.0, true));
    // Model curve.
    let pts: Vec<(f64, f64)> = curve_x
        .iter()
        .zip(&curve_y)
        .filter(|(_, y)| y.is_finite())
        .map(|(x, y)| (px(*x), py(*y)))
        .collect();
    items.push(line(pts, CURVE, 2.0, false));
    for (f, tau) in marks {
        let x = px(tau);
        items.push(line(vec![(x, t), (x, b)], mark_colour(f), 1.5, true));
    }
    // The model at the intervals used, then the measurements.
    for p in points {
        let x = px(p.interval_s);
        if p.predicted_s.is_finite() {
            items.push(Item::Dot {
                x,
                y: py(p.predicted_s),
                r: 3.5,
                colour: CURVE,
            });
        }
        for w in &p.trials {
            items.push(Item::Dot {
                x,
                y: py(*w),
                r: 2.5,
                colour: TRIAL,
            });
        }
        if p.trials.is_empty() {
            continue;
        }
        let lo = p.trials.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = p.trials.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let mean = p.trials.iter().sum::<f64>() / p.trials.len() as f64;
        items.push(line(vec![(x, py(lo)), (x, py(hi))], MEAN, 1.5, false));
        items.push(Item::Dot {
            x,
            y: py(mean),
            r: 5.0,
            colour: MEAN,
        });
    }
    // Legend.
    let entries: Vec<(Rgb, bool, String)> = vec![
        (CURVE, false, "model T_w(τ)".to_string()),
        (MEAN, false, "measured mean, min–max".to_string()),
        (
            CURVE,
            true,
            format!("failure-free {}", format_seconds(work)),
        ),
    ]
    .into_iter()
    .chain(marks.iter().map(|(f, tau)| {
        (
            mark_colour(*f),
            true,
            format!("{f}: {}", format_seconds(*tau)),
        )
    }))
    .collect();
    let longest = entries
        .iter()
        .map(|e| e.2.chars().count())
        .max()
        .unwrap_or(0) as f64;
    let lx = r - 7.5 * longest - 52.0;
    items.push(Item::Rect {
        x: lx - 10.0,
        y: t + 8.0,
        w: 7.5 * longest + 52.0,
        h: 20.0 * entries.len() as f64 + 10.0,
        border: GRID,
    });
    for (i, (c, dashed, s)) in entries.into_iter().enumerate() {
        let ly = t + 26.0 + 20.0 * i as f64;
        items.push(Item::Line {
            points: vec![(lx, ly - 4.5), (lx + 24.0, ly - 4.5)],
            colour: c,
            width: 2.0,
            dashed,
            clip: false,
        });
        items.push(text(lx + 32.0, ly, s, Anchor::Start, 13.0, false));
    }
    items.push(text(
        (l + r) / 2.0,
        b + 45.0,
        "checkpoint interval τ (s, log scale)".into(),
        Anchor::Middle,
        14.0,
        false,
    ));
    items.push(text(
        22.0,
        (t + b) / 2.0,
        "wall time (s)".into(),
        Anchor::Middle,
        14.0,
        true,
    ));
    items.push(text(
        (l + r) / 2.0,
        28.0,
        format!(
            "δ {}, MTBF {}, R {}, work {}: measured vs model",
            format_seconds(model.cost()),
            format_seconds(model.mtbf()),
            format_seconds(model.restart()),
            format_seconds(work)
        ),
        Anchor::Middle,
        15.0,
        false,
    ));
    render(&items)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let s = svg(&m, &pts, 120.0);
        assert!(s.starts_with("<svg"));
        assert!(s.trim_end().ends_with("</svg>"));
        assert_eq!(s.matches("r=\"5\"").count(), 1, "one mean dot");
        assert_eq!(s.matches("r=\"2.5\"").count(), 2, "one dot per trial");
        assert!(s.contains("Daly"));
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
        let s = svg(&m, &pts, 50.0);
        let mark = s
            .lines()
            .find(|l| l.contains("rgb(44,160,44)") && l.contains("stroke-dasharray"))
            .and_then(|l| l.split("points=\"").nth(1))
            .and_then(|p| p.split(',').next())
            .unwrap()
            .to_string();
        let dot = s
            .lines()
            .find(|l| l.contains("r=\"5\""))
            .and_then(|l| l.split("cx=\"").nth(1))
            .and_then(|p| p.split('"').next())
            .unwrap()
            .to_string();
        assert_eq!(mark, dot);
    }
}
