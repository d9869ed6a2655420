//! The CLI's figures (`lazarus model --plot`, `lazarus bench experiment`), described as
//! data ([`Figure`]: axes, labels and [`Series`]) and drawn by plotters — SVG through its
//! SVG backend, PNG through its bitmap backend — so both formats show the same figure.
//!
//! Text is laid out (both formats) and rasterised (PNG) by plotters' `ab_glyph` feature
//! from DejaVu Sans embedded in the binary (the `dejavu` crate): no system font library
//! (fontconfig, freetype) is needed to build or to run. SVG text names the generic
//! `sans-serif` family, so a viewer uses its own sans-serif font.

use plotters::coord::ranged1d::ValueFormatter;
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use std::error::Error;
use std::path::Path;
use std::sync::OnceLock;

/// Figure size in pixels.
pub(crate) const SIZE: (u32, u32) = (860, 520);

/// The font family every text uses; registered with plotters as DejaVu Sans.
const FONT: &str = "sans-serif";

/// Axes, frame and text.
pub(crate) const BLACK: RGBColor = RGBColor(0, 0, 0);
/// Grid lines and the legend's border.
pub(crate) const GRID: RGBColor = RGBColor(225, 225, 225);
/// Model curves.
pub(crate) const CURVE: RGBColor = RGBColor(40, 40, 40);

type BoxError = Box<dyn Error + Send + Sync>;

/// Something drawn in data coordinates; lines and dots outside the axes' ranges are cut
/// at the frame.
#[derive(Clone, Debug)]
pub(crate) enum Series {
    /// A polyline.
    Line {
        points: Vec<(f64, f64)>,
        colour: RGBColor,
        width: u32,
        dashed: bool,
        label: Option<String>,
    },
    /// A vertical line across the whole plot area at `x`.
    Vertical {
        x: f64,
        colour: RGBColor,
        width: u32,
        dashed: bool,
        label: Option<String>,
    },
    /// Filled discs.
    Dots {
        points: Vec<(f64, f64)>,
        radius: u32,
        colour: RGBColor,
        label: Option<String>,
    },
    /// Vertical bars `(x, low, high)` (a min–max range).
    Bars {
        bars: Vec<(f64, f64, f64)>,
        colour: RGBColor,
        label: Option<String>,
    },
}

/// A line chart: title, axis labels, ranges and what to draw, in drawing order (later on
/// top). Labelled series appear in the legend (upper right), in order.
#[derive(Clone, Debug)]
pub(crate) struct Figure {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    /// Logarithmic interval axis.
    pub log_x: bool,
    pub x: (f64, f64),
    pub y: (f64, f64),
    pub series: Vec<Series>,
}

/// Registers the embedded font with plotters once per process.
fn font() -> Result<(), BoxError> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular())
                .map_err(|_| "the embedded DejaVu Sans font does not parse".to_string())
        })
        .clone()
        .map_err(Into::into)
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

/// The parts of the polyline `points` inside `[x0, x1] x [y0, y1]`, cut where it crosses
/// the boundary (interpolated in data coordinates; the curves are dense).
fn clip(points: &[(f64, f64)], (x0, x1): (f64, f64), (y0, y1): (f64, f64)) -> Vec<Vec<(f64, f64)>> {
    let inside = |(x, y): (f64, f64)| x >= x0 && x <= x1 && y >= y0 && y <= y1;
    // Where the segment a -> b leaves (or enters) the y range; x is never cut (curves span
    // exactly the x range).
    let cross = |a: (f64, f64), b: (f64, f64)| {
        let edge = if b.1 > y1 || a.1 > y1 { y1 } else { y0 };
        let t = ((edge - a.1) / (b.1 - a.1)).clamp(0.0, 1.0);
        (a.0 + t * (b.0 - a.0), edge)
    };
    let mut runs: Vec<Vec<(f64, f64)>> = Vec::new();
    let mut run: Vec<(f64, f64)> = Vec::new();
    let mut prev: Option<(f64, f64)> = None;
    for &p in points.iter().filter(|p| p.0.is_finite() && p.1.is_finite()) {
        match (prev, inside(p)) {
            (Some(q), true) if !inside(q) && q.0 >= x0 && q.0 <= x1 => run.push(cross(q, p)),
            (Some(q), false) if inside(q) => {
                run.push(cross(q, p));
                runs.push(std::mem::take(&mut run));
            }
            _ => {}
        }
        if inside(p) {
            run.push(p);
        }
        prev = Some(p);
    }
    runs.push(run);
    runs.retain(|r| r.len() > 1);
    runs
}

impl Figure {
    /// The figure as a standalone SVG document.
    pub(crate) fn svg(&self) -> Result<String, BoxError> {
        font()?;
        let mut out = String::new();
        {
            let root = SVGBackend::with_string(&mut out, SIZE).into_drawing_area();
            self.draw(&root)?;
            root.present()?;
        }
        Ok(out)
    }

    /// Writes the figure to `path`: SVG or PNG by the extension (case-insensitive).
    pub(crate) fn write(&self, path: &Path) -> Result<(), BoxError> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("svg") => std::fs::write(path, self.svg()?)
                .map_err(|e| format!("cannot write {}: {e}", path.display()).into()),
            Some("png") => {
                font()?;
                let mut rgb = vec![255u8; SIZE.0 as usize * SIZE.1 as usize * 3];
                {
                    let root = BitMapBackend::with_buffer(&mut rgb, SIZE).into_drawing_area();
                    self.draw(&root)?;
                    root.present()?;
                }
                let file = std::fs::File::create(path)
                    .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
                write_png(std::io::BufWriter::new(file), &rgb)
                    .map_err(|e| format!("cannot write {}: {e}", path.display()).into())
            }
            _ => Err("unknown file type; use a .svg or .png extension".into()),
        }
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), BoxError>
    where
        DB::ErrorType: 'static,
    {
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(root);
        chart
            .caption(&self.title, (FONT, 19))
            .margin(12)
            .x_label_area_size(48)
            .y_label_area_size(78);
        let (x0, x1) = self.x;
        let (y0, y1) = self.y;
        if self.log_x {
            self.fill(chart.build_cartesian_2d((x0..x1).log_scale(), y0..y1)?)
        } else {
            self.fill(chart.build_cartesian_2d(x0..x1, y0..y1)?)
        }
    }

    fn fill<'a, DB, X>(
        &self,
        mut chart: ChartContext<'a, DB, Cartesian2d<X, RangedCoordf64>>,
    ) -> Result<(), BoxError>
    where
        DB: DrawingBackend + 'a,
        DB::ErrorType: 'static,
        X: Ranged<ValueType = f64> + ValueFormatter<f64>,
    {
        chart
            .configure_mesh()
            .x_desc(&self.x_label)
            .y_desc(&self.y_label)
            .x_label_formatter(&|v| label(*v))
            .y_label_formatter(&|v| label(*v))
            .label_style((FONT, 15))
            .axis_desc_style((FONT, 17))
            .bold_line_style(GRID)
            .light_line_style(TRANSPARENT)
            .axis_style(BLACK)
            .draw()?;
        let (x, y) = (self.x, self.y);
        let mut labelled = false;
        for s in &self.series {
            let (legend, glyph): (Option<&String>, Glyph) = match s {
                Series::Line {
                    points,
                    colour,
                    width,
                    dashed,
                    label,
                } => {
                    let style = colour.stroke_width(*width);
                    for run in clip(points, x, y) {
                        polyline(&mut chart, run, style, *dashed)?;
                    }
                    (label.as_ref(), Glyph::Line(style, *dashed))
                }
                Series::Vertical {
                    x: at,
                    colour,
                    width,
                    dashed,
                    label,
                } => {
                    let style = colour.stroke_width(*width);
                    if (x.0..=x.1).contains(at) {
                        polyline(&mut chart, vec![(*at, y.0), (*at, y.1)], style, *dashed)?;
                    }
                    (label.as_ref(), Glyph::Line(style, *dashed))
                }
                Series::Dots {
                    points,
                    radius,
                    colour,
                    label,
                } => {
                    let visible = points
                        .iter()
                        .filter(|(px, py)| (x.0..=x.1).contains(px) && (y.0..=y.1).contains(py));
                    chart
                        .draw_series(visible.map(|p| Circle::new(*p, *radius, colour.filled())))?;
                    (label.as_ref(), Glyph::Dot(*colour, *radius))
                }
                Series::Bars {
                    bars,
                    colour,
                    label,
                } => {
                    let style = colour.stroke_width(2);
                    let visible = bars.iter().filter(|b| (x.0..=x.1).contains(&b.0));
                    chart.draw_series(visible.map(|&(bx, lo, hi)| {
                        PathElement::new(vec![(bx, lo.max(y.0)), (bx, hi.min(y.1))], style)
                    }))?;
                    (label.as_ref(), Glyph::Line(style, false))
                }
            };
            if let Some(text) = legend {
                // An empty series still carries the legend entry: draw nothing with it.
                chart
                    .draw_series(std::iter::empty::<Circle<(f64, f64), u32>>())?
                    .label(text.as_str())
                    .legend(move |(gx, gy)| glyph.element::<DB>(gx, gy));
                labelled = true;
            }
        }
        if labelled {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .background_style(WHITE)
                .border_style(GRID)
                .label_font((FONT, 15))
                .draw()?;
        }
        Ok(())
    }
}

/// Draws one polyline, solid or dashed (6 px dashes, 4 px gaps).
fn polyline<'a, DB, X>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<X, RangedCoordf64>>,
    run: Vec<(f64, f64)>,
    style: ShapeStyle,
    dashed: bool,
) -> Result<(), BoxError>
where
    DB: DrawingBackend + 'a,
    DB::ErrorType: 'static,
    X: Ranged<ValueType = f64>,
{
    if dashed {
        chart.draw_series(DashedLineSeries::new(run, 6, 4, style))?;
    } else {
        chart.draw_series(LineSeries::new(run, style))?;
    }
    Ok(())
}

/// A legend entry's sample of its series.
#[derive(Clone, Copy)]
enum Glyph {
    Line(ShapeStyle, bool),
    Dot(RGBColor, u32),
}

impl Glyph {
    fn element<DB: DrawingBackend>(self, x: i32, y: i32) -> DynElement<'static, DB, (i32, i32)> {
        match self {
            Glyph::Line(style, false) => {
                PathElement::new(vec![(x, y), (x + 24, y)], style).into_dyn()
            }
            Glyph::Line(style, true) => {
                DashedPathElement::new(vec![(x, y), (x + 24, y)], 6, 4, style).into_dyn()
            }
            Glyph::Dot(colour, r) => Circle::new((x + 12, y), r, colour.filled()).into_dyn(),
        }
    }
}

/// Encodes an RGB buffer of [`SIZE`] as PNG.
fn write_png(out: impl std::io::Write, rgb: &[u8]) -> Result<(), BoxError> {
    let mut enc = png::Encoder::new(out, SIZE.0, SIZE.1);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut w = enc.write_header()?;
    w.write_image_data(rgb)?;
    w.finish()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clipping_cuts_at_the_frame_and_keeps_inside_runs() {
        let pts = [(0.0, 0.5), (1.0, 0.5), (2.0, 1.5), (3.0, 1.5), (4.0, 0.5)];
        let runs = clip(&pts, (0.0, 4.0), (0.0, 1.0));
        assert_eq!(runs.len(), 2, "{runs:?}");
        assert_eq!(runs[0], [(0.0, 0.5), (1.0, 0.5), (1.5, 1.0)]);
        assert_eq!(runs[1], [(3.5, 1.0), (4.0, 0.5)]);
        assert!(clip(&[(0.0, 5.0), (1.0, 6.0)], (0.0, 1.0), (0.0, 1.0)).is_empty());
        assert_eq!(
            clip(
                &[(0.0, f64::NAN), (1.0, 0.2), (2.0, 0.3)],
                (0.0, 2.0),
                (0.0, 1.0)
            )
            .len(),
            1
        );
    }

    #[test]
    fn labels_have_at_most_four_significant_digits() {
        assert_eq!(label(12.0), "12");
        assert_eq!(label(0.125), "0.125");
        assert_eq!(label(1.23456), "1.235");
        assert_eq!(label(2500.4), "2500");
    }
}
