//! The `--plot` figure: expected run time against checkpoint interval, with Young, Daly
//! and the exact optimum marked. Laid out once as a small scene of lines and text in pixel
//! coordinates, then written as SVG (by hand) or PNG (rasterised by `png.rs`), so both
//! formats show the same figure without a plotting dependency.

use lazarus::policy::{format_seconds, Formula, Model};
use std::path::Path;

mod png;

/// Figure size in pixels.
const W: f64 = 860.0;
const H: f64 = 520.0;
/// Plot area margins: left, right, top, bottom.
const ML: f64 = 90.0;
const MR: f64 = 30.0;
const MT: f64 = 50.0;
const MB: f64 = 60.0;

/// An RGB colour.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Rgb(pub u8, pub u8, pub u8);

/// Axes and ticks.
pub(crate) const BLACK: Rgb = Rgb(0, 0, 0);
/// Grid lines and legend border.
pub(crate) const GRID: Rgb = Rgb(225, 225, 225);
/// The model's curve.
pub(crate) const CURVE: Rgb = Rgb(40, 40, 40);

/// The colour of each formula's mark (shared with the experiment's figure).
pub(crate) fn colour(f: Formula) -> Rgb {
    match f {
        Formula::Young => Rgb(31, 119, 180),
        Formula::DalyFirstOrder => Rgb(148, 103, 189),
        Formula::DalyHigherOrder => Rgb(44, 160, 44),
        Formula::Optimal => Rgb(214, 39, 40),
    }
}

/// Horizontal text alignment.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Anchor {
    Start,
    Middle,
    End,
}

/// What the figure is made of, in pixels (y down).
#[derive(Clone, Debug)]
pub(crate) enum Item {
    /// A polyline, optionally dashed, clipped to the plot area when `clip`.
    Line {
        points: Vec<(f64, f64)>,
        colour: Rgb,
        width: f64,
        dashed: bool,
        clip: bool,
    },
    /// A filled rectangle with a border of `border` colour.
    Rect {
        x: f64,
        y: f64,
        w: f64,
        h: f64,
        border: Rgb,
    },
    /// A filled disc.
    Dot { x: f64, y: f64, r: f64, colour: Rgb },
    /// Text with its baseline at `y`; `vertical` rotates it 90° counter-clockwise.
    Text {
        x: f64,
        y: f64,
        text: String,
        anchor: Anchor,
        size: f64,
        vertical: bool,
    },
}

/// The plot area's rectangle: (left, top, right, bottom).
pub(crate) const AREA: (f64, f64, f64, f64) = (ML, MT, W - MR, H - MB);

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

/// A tick label: up to 4 significant digits, no trailing zeros.
pub(crate) fn label(v: f64) -> String {
    let s = if v.abs() >= 1000.0 || v == v.round() {
        format!("{v:.0}")
    } else {
        let digits = (3 - v.abs().log10().floor() as i32).clamp(0, 8) as usize;
        format!("{v:.digits$}")
    };
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// Nice linear ticks (1, 2, 5 × 10ᵏ steps) covering `[lo, hi]`.
pub(crate) fn linear_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let raw = (hi - lo) / 9.0;
    if raw.is_nan() || raw <= 0.0 || !raw.is_finite() {
        return vec![lo];
    }
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let mut t = (lo / step).ceil() * step;
    let mut out = Vec::new();
    while t <= hi + step * 1e-9 && out.len() < 50 {
        out.push(t);
        t += step;
    }
    out
}

/// Log ticks at 1, 2, 5 × 10ᵏ (only 1 × 10ᵏ when there would be too many).
pub(crate) fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let (k0, k1) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
    let all: Vec<f64> = (k0..=k1)
        .flat_map(|k| [1.0, 2.0, 5.0].map(|m| m * 10f64.powi(k)))
        .filter(|v| *v >= lo * (1.0 - 1e-9) && *v <= hi * (1.0 + 1e-9))
        .collect();
    if all.len() > 12 {
        all.into_iter()
            .filter(|v| (v.log10() - v.log10().round()).abs() < 1e-9)
            .collect()
    } else {
        all
    }
}

/// Lays out the figure for `model` and `work` seconds of work.
pub(crate) fn scene(model: &Model, work: f64, log_x: bool) -> Result<Vec<Item>, String> {
    let best = model.optimal();
    let best_t = model.expected_wall_time(best, work);
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
    let y_lo = work;
    let y_hi = work + (3.0 * (best_t - work)).max(work * 1e-9);
    let (l, t, r, b) = AREA;
    let px = |x: f64| {
        let f = if log_x {
            (x / x_lo).ln() / (x_hi / x_lo).ln()
        } else {
            (x - x_lo) / (x_hi - x_lo)
        };
        l + f * (r - l)
    };
    // Values beyond the area are pinned just outside it, so clipped lines leave it cleanly.
    let py = |y: f64| {
        let f = ((y - y_lo) / (y_hi - y_lo)).clamp(-0.1, 1.1);
        b - f * (b - t)
    };
    let mut items = Vec::new();
    let text = |x, y, s: String, anchor, size, vertical| Item::Text {
        x,
        y,
        text: s,
        anchor,
        size,
        vertical,
    };

    // Grid and ticks.
    let xticks = if log_x {
        log_ticks(x_lo / xs, x_hi / xs)
    } else {
        linear_ticks(x_lo / xs, x_hi / xs)
    };
    for v in xticks {
        let x = px(v * xs);
        items.push(grid(vec![(x, t), (x, b)]));
        items.push(line(vec![(x, b), (x, b + 5.0)], BLACK, 1.0));
        items.push(text(x, b + 20.0, label(v), Anchor::Middle, 13.0, false));
    }
    for v in linear_ticks(y_lo / ys, y_hi / ys) {
        let y = py(v * ys);
        if y < t - 0.5 || y > b + 0.5 {
            continue;
        }
        items.push(grid(vec![(l, y), (r, y)]));
        items.push(line(vec![(l - 5.0, y), (l, y)], BLACK, 1.0));
        items.push(text(l - 8.0, y + 4.5, label(v), Anchor::End, 13.0, false));
    }
    items.push(line(
        vec![(l, t), (l, b), (r, b), (r, t), (l, t)],
        BLACK,
        1.0,
    ));

    // The curve.
    let n = 600;
    let curve: Vec<(f64, f64)> = (0..=n)
        .map(|i| {
            let f = i as f64 / n as f64;
            let x = if log_x {
                x_lo * (x_hi / x_lo).powf(f)
            } else {
                x_lo + f * (x_hi - x_lo)
            };
            (px(x), py(model.expected_wall_time(x, work)))
        })
        .collect();
    items.push(Item::Line {
        points: curve,
        colour: CURVE,
        width: 2.0,
        dashed: false,
        clip: true,
    });

    // Markers, then the legend on a white box above them. The legend is sized for the PNG
    // font (12 px per character), wider than SVG's sans-serif, so it fits both. The
    // optimum is drawn first so dashed estimates that coincide with it stay visible.
    let mut order: Vec<(Formula, f64)> = marks.clone();
    order.sort_by_key(|(f, _)| *f != Formula::Optimal);
    for (f, tau) in &order {
        let x = px(*tau);
        items.push(Item::Line {
            points: vec![(x, t), (x, b)],
            colour: colour(*f),
            width: 1.5,
            dashed: *f != Formula::Optimal,
            clip: true,
        });
        items.push(Item::Dot {
            x,
            y: py(model.expected_wall_time(*tau, work)),
            r: 4.0,
            colour: colour(*f),
        });
    }
    let legend: Vec<(Formula, String)> = marks
        .iter()
        .map(|(f, tau)| (*f, format!("{f}: {}", format_seconds(*tau))))
        .collect();
    let longest = legend
        .iter()
        .map(|(_, s)| s.chars().count())
        .max()
        .unwrap_or(0) as f64;
    let lx = r - 12.0 * longest - 52.0;
    items.push(Item::Rect {
        x: lx - 10.0,
        y: t + 8.0,
        w: 12.0 * longest + 52.0,
        h: 20.0 * legend.len() as f64 + 10.0,
        border: GRID,
    });
    for (i, (f, entry)) in legend.into_iter().enumerate() {
        let ly = t + 26.0 + 20.0 * i as f64;
        items.push(Item::Line {
            points: vec![(lx, ly - 4.5), (lx + 24.0, ly - 4.5)],
            colour: colour(f),
            width: 2.0,
            dashed: f != Formula::Optimal,
            clip: false,
        });
        items.push(text(lx + 32.0, ly, entry, Anchor::Start, 13.0, false));
    }

    // Labels.
    items.push(text(
        (l + r) / 2.0,
        H - 15.0,
        format!(
            "checkpoint interval ({xu}{})",
            if log_x { ", log scale" } else { "" }
        ),
        Anchor::Middle,
        14.0,
        false,
    ));
    items.push(text(
        22.0,
        (t + b) / 2.0,
        format!("expected run time ({yu})"),
        Anchor::Middle,
        14.0,
        true,
    ));
    items.push(text(
        W / 2.0,
        28.0,
        format!(
            "cost {}, MTBF {}, restart {}, work {}",
            format_seconds(model.cost()),
            format_seconds(model.mtbf()),
            format_seconds(model.restart()),
            format_seconds(work)
        ),
        Anchor::Middle,
        15.0,
        false,
    ));
    Ok(items)
}

fn line(points: Vec<(f64, f64)>, colour: Rgb, width: f64) -> Item {
    Item::Line {
        points,
        colour,
        width,
        dashed: false,
        clip: false,
    }
}

fn grid(points: Vec<(f64, f64)>) -> Item {
    line(points, GRID, 1.0)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The scene as a standalone SVG document.
pub(crate) fn svg(items: &[Item]) -> String {
    let (l, t, r, b) = AREA;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" \
         viewBox=\"0 0 {W} {H}\" font-family=\"sans-serif\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <clipPath id=\"area\"><rect x=\"{l}\" y=\"{t}\" width=\"{}\" height=\"{}\"/></clipPath>\n",
        r - l,
        b - t
    );
    for item in items {
        match item {
            Item::Line {
                points,
                colour: Rgb(cr, cg, cb),
                width,
                dashed,
                clip,
            } => {
                let pts: Vec<String> = points
                    .iter()
                    .map(|(x, y)| format!("{x:.2},{y:.2}"))
                    .collect();
                s.push_str(&format!(
                    "<polyline points=\"{}\" fill=\"none\" stroke=\"rgb({cr},{cg},{cb})\" \
                     stroke-width=\"{width}\"{}{}/>\n",
                    pts.join(" "),
                    if *dashed {
                        " stroke-dasharray=\"6,4\""
                    } else {
                        ""
                    },
                    if *clip {
                        " clip-path=\"url(#area)\""
                    } else {
                        ""
                    },
                ));
            }
            Item::Rect {
                x,
                y,
                w,
                h,
                border: Rgb(cr, cg, cb),
            } => s.push_str(&format!(
                "<rect x=\"{x:.2}\" y=\"{y:.2}\" width=\"{w:.2}\" height=\"{h:.2}\" \
                 fill=\"white\" stroke=\"rgb({cr},{cg},{cb})\"/>\n"
            )),
            Item::Dot {
                x,
                y,
                r,
                colour: Rgb(cr, cg, cb),
            } => s.push_str(&format!(
                "<circle cx=\"{x:.2}\" cy=\"{y:.2}\" r=\"{r}\" fill=\"rgb({cr},{cg},{cb})\" \
                 clip-path=\"url(#area)\"/>\n"
            )),
            Item::Text {
                x,
                y,
                text,
                anchor,
                size,
                vertical,
            } => {
                let a = match anchor {
                    Anchor::Start => "start",
                    Anchor::Middle => "middle",
                    Anchor::End => "end",
                };
                let rot = if *vertical {
                    format!(" transform=\"rotate(-90 {x:.2} {y:.2})\"")
                } else {
                    String::new()
                };
                s.push_str(&format!(
                    "<text x=\"{x:.2}\" y=\"{y:.2}\" font-size=\"{size}\" text-anchor=\"{a}\"{rot}>{}</text>\n",
                    escape(text)
                ));
            }
        }
    }
    s.push_str("</svg>\n");
    s
}

/// Writes the plot to `path`: SVG or PNG by the extension (case-insensitive).
pub fn write(
    path: &Path,
    model: &Model,
    work: f64,
    log_x: bool,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let items = scene(model, work, log_x).map_err(|e| format!("--plot {}: {e}", path.display()))?;
    let bytes = match ext.as_deref() {
        Some("svg") => svg(&items).into_bytes(),
        Some("png") => png::render(&items, W as usize, H as usize),
        _ => {
            return Err(format!(
                "--plot {}: unknown file type; use a .svg or .png extension",
                path.display()
            )
            .into())
        }
    };
    std::fs::write(path, bytes)
        .map_err(|e| format!("--plot: cannot write {}: {e}", path.display()))?;
    Ok(())
}
