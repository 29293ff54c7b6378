//! Charts as PNG and SVG with plotters: line charts of runs (loss, accuracy, learning rate,
//! gradient norm) and contour maps with optimizer trajectories. Text is drawn with a bundled font
//! (DejaVu Sans through ab_glyph), so a headless machine needs no system font library.

use std::ops::Range;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Result};
use plotters::coord::Shift;
use plotters::prelude::*;

/// Ten colours that stay apart (matplotlib's `tab10`).
pub const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// The line of each ten series after the first ten, which the colours repeat for: solid, then
/// dashed, dotted and long-dashed (`(dash, gap)` in pixels), so that no two of 40 series look
/// alike.
const DASHES: [Option<(u32, u32)>; 4] = [None, Some((9, 5)), Some((2, 4)), Some((18, 6))];

/// The line of series `i` (of those without a colour of their own): [`DASHES`] by its ten.
fn dash_of(i: usize) -> Option<(u32, u32)> {
    DASHES[(i / PALETTE.len()) % DASHES.len()]
}

/// The longest label a legend shows whole; a longer one is cut with an ellipsis, so that the
/// legend's swatches stay on the picture.
const LEGEND_CHARS: usize = 48;

/// `label` as a legend shows it: at most [`LEGEND_CHARS`] characters.
fn legend_label(label: &str) -> String {
    if label.chars().count() <= LEGEND_CHARS {
        label.to_string()
    } else {
        label.chars().take(LEGEND_CHARS - 1).chain(['…']).collect()
    }
}

/// The size of every picture, in pixels.
pub const SIZE: (u32, u32) = (960, 600);

const FONT: &str = "sans-serif";

fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        plotters::style::register_font(FONT, FontStyle::Normal, include_bytes!("../assets/DejaVuSans.ttf"))
            .unwrap_or_else(|_| panic!("the bundled font parses"));
    });
}

/// One line of a chart.
#[derive(Debug, Clone)]
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
    /// Drawn faint beneath the line in the same colour (the raw values under a smoothed curve).
    pub raw: Vec<(f64, f64)>,
    /// A run that stopped early (pruned, diverged) is drawn faint.
    pub faint: bool,
    pub style: SeriesStyle,
    /// A fixed colour instead of the palette's next (grey for the many faint trials of a sweep).
    pub colour: Option<RGBColor>,
}

/// How a series' points are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeriesStyle {
    Line,
    /// A line with a marker at each point (per-epoch values).
    LineMarkers,
    /// Markers alone (one point per trial).
    Markers,
}

impl Series {
    pub fn line(label: impl Into<String>, points: Vec<(f64, f64)>) -> Series {
        Series { label: label.into(), points, raw: vec![], faint: false, style: SeriesStyle::Line, colour: None }
    }
}

/// Which scale the y axis takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum YScale {
    Linear,
    /// Logarithmic when the positive values span more than a decade.
    Auto,
}

/// A line chart.
#[derive(Debug, Clone)]
pub struct Chart {
    pub title: String,
    /// A logarithmic x axis (a learning rate against the objective).
    pub log_x: bool,
    /// The x axis counts whole things (epochs): integer ticks, half a unit of margin each side.
    pub integer_x: bool,
    pub x_label: String,
    pub y_label: String,
    pub y_scale: YScale,
    pub series: Vec<Series>,
    /// Where the legend goes (away from where the curves are).
    pub legend: SeriesLabelPosition,
    /// Faint series stretch the axes too (stopped trials of a sweep, unlike diverged runs).
    pub fit_faint: bool,
}

/// Exponential moving average with TensorBoard's debiasing (`weight` 0 is no smoothing). A point
/// that is not finite stays as it is and leaves the average alone, as in TensorBoard (one NaN
/// loss would otherwise end the curve there).
pub fn smooth(points: &[(f64, f64)], weight: f64) -> Vec<(f64, f64)> {
    let (mut acc, mut norm) = (0.0, 0.0);
    points
        .iter()
        .map(|&(x, y)| {
            if !y.is_finite() {
                return (x, y);
            }
            acc = weight * acc + (1.0 - weight) * y;
            norm = weight * norm + (1.0 - weight);
            (x, acc / norm)
        })
        .collect()
}

/// The x and y ranges of a chart's finite points, padded a little (log: positive values only).
/// The axes fit the lines, not the raw values beneath smoothed ones (per-batch noise would squash
/// the curves), and faint series (failed runs) do not stretch them: a diverged run would flatten
/// the others. What falls outside is clipped.
fn ranges(chart: &Chart, log: bool) -> (Range<f64>, Range<f64>) {
    let visible = chart.series.iter().filter(|s| !s.faint).count();
    // All faint (every trial pruned): fit them rather than nothing.
    let pts = chart.series.iter().filter(|s| !s.faint || visible == 0 || chart.fit_faint).flat_map(|s| s.points.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::INFINITY, f64::NEG_INFINITY, f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in pts {
        if !x.is_finite() || !y.is_finite() || (log && y <= 0.0) || (chart.log_x && x <= 0.0) {
            continue;
        }
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    if x0 > x1 {
        (x0, x1) = if chart.log_x { (0.1, 1.0) } else { (0.0, 1.0) };
    }
    if y0 > y1 {
        (y0, y1) = if log { (0.1, 1.0) } else { (0.0, 1.0) };
    }
    if x1 == x0 && !chart.integer_x {
        x1 = x0 + 1.0;
    }
    // The padding stays within the floats: values near their ends (a diverged run's 1e300) would
    // pad to infinity, or on a log axis to 0, and an axis must have finite ends.
    let log_padded = |lo: f64, hi: f64, frac: f64| {
        let (a, b) = (lo.ln(), hi.ln().max(lo.ln() + 0.1));
        let pad = frac * (b - a);
        (a - pad).exp().max(f64::MIN_POSITIVE)..(b + pad).exp().min(f64::MAX)
    };
    if chart.log_x {
        (x0, x1) = {
            let r = log_padded(x0, x1, 0.04);
            (r.start, r.end)
        };
    }
    if log {
        return (x0..x1, log_padded(y0, y1, 0.05));
    }
    let span = if y1 > y0 { (y1 - y0).min(f64::MAX) } else { y0.abs().max(1.0) };
    (x0..x1, (y0 - 0.05 * span).max(f64::MIN)..(y1 + 0.05 * span).min(f64::MAX))
}

fn wants_log(chart: &Chart) -> bool {
    match chart.y_scale {
        YScale::Linear => false,
        YScale::Auto => {
            let ys =
                chart.series.iter().filter(|s| !s.faint || chart.fit_faint).flat_map(|s| s.points.iter()).map(|p| p.1);
            let (lo, hi) = ys
                .filter(|y| y.is_finite() && *y > 0.0)
                .fold((f64::INFINITY, 0.0f64), |(l, h), y| (l.min(y), h.max(y)));
            lo.is_finite() && hi / lo > 10.0
        }
    }
}

/// A tick label: 3 significant digits, trailing zeros dropped, powers of ten outside [1e-3, 1e5).
pub fn tick(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    let a = v.abs();
    if !(1e-3..1e5).contains(&a) {
        let s = format!("{v:.2e}");
        let (m, e) = s.split_once('e').expect("exponent form");
        let m = m.trim_end_matches('0').trim_end_matches('.');
        return format!("{m}e{e}");
    }
    fixed(v, (2 - a.log10().floor() as i32).max(0) as usize)
}

/// `v` with `digits` decimals, trailing zeros (and a bare point) dropped.
fn fixed(v: f64, digits: usize) -> String {
    let s = format!("{v:.digits$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// A label of a linear axis whose ticks are about `step` apart: [`tick`], with more decimals where
/// its three significant digits would give neighbouring ticks the same label (an accuracy curve
/// between 10.10% and 10.20%).
pub fn axis_tick(v: f64, step: f64) -> String {
    if !(step > 0.0 && step.is_finite() && v.is_finite()) || v == 0.0 {
        return tick(v);
    }
    let a = v.abs();
    if !(1e-3..1e5).contains(&a) || step >= 10f64.powi(a.log10().floor() as i32 - 2) {
        return tick(v);
    }
    fixed(v, (-step.log10().floor()).clamp(0.0, 12.0) as usize)
}

/// Ticks of a log axis: 1, 2 and 5 times the powers of ten in range; every digit when that gives
/// fewer than four; powers of ten alone when it gives more than twelve.
fn log_ticks(r: &Range<f64>) -> Vec<f64> {
    // Decades of finite positive floats only (an infinite end would count 2³¹ of them).
    let (lo, hi) = (r.start.log10().floor().max(-324.0) as i32, r.end.log10().ceil().min(309.0) as i32);
    let pick = |mults: &[f64]| -> Vec<f64> {
        (lo..=hi).flat_map(|d| mults.iter().map(move |m| m * 10f64.powi(d))).filter(|v| r.contains(v)).collect()
    };
    let ticks = pick(&[1.0, 2.0, 5.0]);
    if ticks.len() < 4 {
        return pick(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]);
    }
    if ticks.len() <= 12 {
        return ticks;
    }
    // Many decades: powers of ten, every k-th so that at most 12 remain.
    let powers = pick(&[1.0]);
    let k = powers.len().div_ceil(12).max(1);
    powers.into_iter().enumerate().filter(|(i, _)| i % k == 0).map(|(_, v)| v).collect()
}

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing: {e:?}")
}

/// Draws `chart` into `stem.png` and `stem.svg`; returns both paths.
pub fn line_chart(chart: &Chart, stem: &Path) -> Result<[PathBuf; 2]> {
    register_font();
    let (png, svg) = (stem.with_extension("png"), stem.with_extension("svg"));
    atomically(&png, |p| draw_lines(BitMapBackend::new(p, SIZE).into_drawing_area(), chart))?;
    atomically(&svg, |p| draw_lines(SVGBackend::new(p, SIZE).into_drawing_area(), chart))?;
    Ok([png, svg])
}

/// Draws into a temporary file beside `path` (with its extension, which picks the format), syncs
/// it, then renames it over `path` and syncs the folder: a chart is replaced whole or not at all,
/// as [`crate::folder::write_atomic`] writes a file.
fn atomically(path: &Path, draw: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let ext = path.extension().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{stem}.tmp{}.{ext}", std::process::id()));
    let settle = || -> std::io::Result<()> {
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            if let Ok(d) = std::fs::File::open(parent) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    };
    let r = draw(&tmp).and_then(|_| settle().map_err(|e| anyhow!("writing {}: {e}", path.display())));
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

macro_rules! lines_body {
    ($root:expr, $chart:expr, $xr:expr, $yr:expr, $y_step:expr) => {{
        let chart = $chart;
        let mut cc = ChartBuilder::on($root)
            .caption(&chart.title, (FONT, 24))
            .margin(16)
            .x_label_area_size(50)
            .y_label_area_size(80)
            .build_cartesian_2d($xr, $yr)
            .map_err(err)?;
        let int_tick = |x: &f64| if (x - x.round()).abs() < 1e-9 { format!("{}", x.round()) } else { String::new() };
        let x_ticks = |x: &f64| if chart.integer_x { int_tick(x) } else { tick(*x) };
        cc.configure_mesh()
            .x_desc(chart.x_label.as_str())
            .y_desc(chart.y_label.as_str())
            .y_labels(12)
            .x_label_formatter(&x_ticks)
            .y_label_formatter(&|y| axis_tick(*y, $y_step))
            .label_style((FONT, 15))
            .axis_desc_style((FONT, 17))
            .light_line_style(TRANSPARENT)
            .bold_line_style(RGBColor(215, 215, 215))
            .draw()
            .map_err(err)?;
        let finite = |p: &&(f64, f64)| p.0.is_finite() && p.1.is_finite();
        // Raw values first, all of them, so that no run's noise covers another's line; fainter
        // the more of it there is.
        let raw_points: usize = chart.series.iter().map(|s| s.raw.len()).sum();
        let alpha = (0.25 * (2000.0 / raw_points.max(1) as f64).sqrt()).clamp(0.06, 0.25);
        for (i, s) in chart.series.iter().enumerate() {
            if !s.raw.is_empty() {
                let c = s.colour.unwrap_or(PALETTE[i % PALETTE.len()]);
                cc.draw_series(LineSeries::new(s.raw.iter().filter(finite).copied(), c.mix(alpha).stroke_width(1)))
                    .map_err(err)?;
            }
        }
        // Faint series first, beneath the others.
        let mut order: Vec<usize> = (0..chart.series.len()).collect();
        order.sort_by_key(|&i| !chart.series[i].faint);
        for i in order {
            let s = &chart.series[i];
            let c = s.colour.unwrap_or(PALETTE[i % PALETTE.len()]);
            let style = if s.faint { c.mix(0.35).stroke_width(2) } else { c.stroke_width(2) };
            let pts = s.points.iter().filter(finite).copied();
            // The colours repeat every ten series: the line then changes (without a colour of
            // its own).
            let dash = if s.colour.is_none() { dash_of(i) } else { None };
            let label = legend_label(&s.label);
            match (s.style, dash) {
                (SeriesStyle::Markers, _) => {
                    let drawn = cc.draw_series(pts.map(|p| Circle::new(p, 4, style.filled()))).map_err(err)?;
                    if !label.is_empty() {
                        drawn.label(label).legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 22, y)], style));
                    }
                }
                (_, None) => {
                    let drawn = cc.draw_series(LineSeries::new(pts, style)).map_err(err)?;
                    if !label.is_empty() {
                        drawn.label(label).legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 22, y)], style));
                    }
                }
                (_, Some((on, off))) => {
                    let drawn = cc.draw_series(DashedLineSeries::new(pts, on, off, style)).map_err(err)?;
                    if !label.is_empty() {
                        drawn.label(label).legend(move |(x, y)| {
                            plotters::element::DashedPathElement::new(
                                vec![(x, y), (x + 22, y)].into_iter(),
                                on,
                                off,
                                style,
                            )
                        });
                    }
                }
            }
            if s.style == SeriesStyle::LineMarkers {
                cc.draw_series(s.points.iter().filter(finite).map(|&p| Circle::new(p, 4, style.filled())))
                    .map_err(err)?;
            }
        }
        cc.configure_series_labels()
            .label_font((FONT, 15))
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(160, 160, 160))
            .position(chart.legend.clone())
            .draw()
            .map_err(err)?;
    }};
}

fn draw_lines<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, chart: &Chart) -> Result<()> {
    root.fill(&WHITE).map_err(err)?;
    let log = wants_log(chart);
    let (mut xr, yr) = ranges(chart, log);
    if chart.integer_x {
        xr = (xr.start.round() - 0.5)..(xr.end.round() + 0.5);
    }
    // The linear y axis's twelve labels are about a twelfth of its span apart (a log axis's are
    // its key points, which `tick` tells apart).
    let y_step = (yr.end - yr.start) / 12.0;
    match (chart.log_x, log) {
        (false, false) => lines_body!(&root, chart, xr, yr, y_step),
        (false, true) => {
            let keys = log_ticks(&yr);
            lines_body!(&root, chart, xr, yr.log_scale().with_key_points(keys), 0.0)
        }
        (true, false) => {
            let keys = log_ticks(&xr);
            lines_body!(&root, chart, xr.log_scale().with_key_points(keys), yr, y_step)
        }
        (true, true) => {
            let (kx, ky) = (log_ticks(&xr), log_ticks(&yr));
            lines_body!(&root, chart, xr.log_scale().with_key_points(kx), yr.log_scale().with_key_points(ky), 0.0)
        }
    }
    root.present().map_err(err)?;
    Ok(())
}

/// A function of two variables drawn as filled contour bands (levels evenly spaced in
/// `log(1 + f − min)`, so valleys stay visible next to steep walls), with paths drawn over it.
pub struct ContourMap<'a> {
    pub title: String,
    pub f: &'a dyn Fn(f64, f64) -> f64,
    pub x: Range<f64>,
    pub y: Range<f64>,
    /// Labelled paths (optimizer trajectories), each starting with a hollow circle and ending with
    /// a filled one.
    pub paths: Vec<(String, Vec<(f64, f64)>)>,
    /// Points marked with a cross (the known minima).
    pub marks: Vec<(f64, f64)>,
}

/// Draws `map` into `stem.png` and `stem.svg`.
pub fn contour_map(map: &ContourMap, stem: &Path) -> Result<[PathBuf; 2]> {
    register_font();
    let (png, svg) = (stem.with_extension("png"), stem.with_extension("svg"));
    atomically(&png, |p| draw_contours(BitMapBackend::new(p, (900, 760)).into_drawing_area(), map, 220))?;
    // The SVG gets a coarser grid: every cell is an element.
    atomically(&svg, |p| draw_contours(SVGBackend::new(p, (900, 760)).into_drawing_area(), map, 110))?;
    Ok([png, svg])
}

/// The most points a drawn path keeps: a path of millions of steps drawn whole made SVGs of
/// hundreds of megabytes.
const PATH_POINTS: usize = 20_000;

/// The points of a path worth drawing: each at least `min` (x, y) from the last one kept in
/// either coordinate (a fraction of a pixel: the line looks the same), the last point always;
/// then, beyond [`PATH_POINTS`], an even subsample with the first and last.
fn thin_path(points: impl Iterator<Item = (f64, f64)>, min: (f64, f64)) -> Vec<(f64, f64)> {
    let mut kept: Vec<(f64, f64)> = vec![];
    let mut last = None;
    for p in points {
        last = Some(p);
        match kept.last() {
            Some(q) if (p.0 - q.0).abs() < min.0 && (p.1 - q.1).abs() < min.1 => {}
            _ => kept.push(p),
        }
    }
    if let Some(p) = last.filter(|p| kept.last() != Some(p)) {
        kept.push(p);
    }
    if kept.len() > PATH_POINTS {
        let n = kept.len();
        kept = (0..PATH_POINTS).map(|i| kept[i * (n - 1) / (PATH_POINTS - 1)]).collect();
    }
    kept
}

/// A light-to-dark blue ramp for the bands (low values light).
fn band_colour(t: f64) -> RGBColor {
    let t = t.clamp(0.0, 1.0);
    let lerp = |a: f64, b: f64| (a + (b - a) * t).round() as u8;
    RGBColor(lerp(247.0, 8.0), lerp(251.0, 48.0), lerp(255.0, 107.0))
}

fn draw_contours<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, map: &ContourMap, grid: usize) -> Result<()> {
    root.fill(&WHITE).map_err(err)?;
    let mut cc = ChartBuilder::on(&root)
        .caption(&map.title, (FONT, 24))
        .margin(16)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(map.x.clone(), map.y.clone())
        .map_err(err)?;
    cc.configure_mesh()
        .x_desc("x")
        .y_desc("y")
        .label_style((FONT, 15))
        .axis_desc_style((FONT, 17))
        .draw()
        .map_err(err)?;
    let (dx, dy) = ((map.x.end - map.x.start) / grid as f64, (map.y.end - map.y.start) / grid as f64);
    let mut vals = vec![0.0f64; grid * grid];
    for j in 0..grid {
        for i in 0..grid {
            vals[j * grid + i] = (map.f)(map.x.start + (i as f64 + 0.5) * dx, map.y.start + (j as f64 + 0.5) * dy);
        }
    }
    let finite = vals.iter().copied().filter(|v| v.is_finite());
    let lo = finite.clone().fold(f64::INFINITY, f64::min);
    let hi = finite.fold(f64::NEG_INFINITY, f64::max);
    let scale = |v: f64| (1.0 + (v - lo).max(0.0)).ln() / (1.0 + (hi - lo).max(1e-12)).ln();
    const LEVELS: f64 = 18.0;
    cc.draw_series((0..grid * grid).map(|k| {
        let (i, j) = (k % grid, k / grid);
        let band = (scale(vals[k]) * LEVELS).floor() / LEVELS;
        let (x0, y0) = (map.x.start + i as f64 * dx, map.y.start + j as f64 * dy);
        Rectangle::new([(x0, y0), (x0 + dx, y0 + dy)], band_colour(0.85 * band).filled())
    }))
    .map_err(err)?;
    cc.draw_series(map.marks.iter().map(|&p| Cross::new(p, 7, BLACK.stroke_width(2)))).map_err(err)?;
    let inside = |p: &(f64, f64)| map.x.contains(&p.0) && map.y.contains(&p.1);
    for (k, (label, path)) in map.paths.iter().enumerate() {
        let c = PALETTE[(k + 1) % PALETTE.len()];
        let style = c.stroke_width(2);
        // A path leaving the frame is cut where it leaves (a diverging optimizer).
        let shown: Vec<(f64, f64)> = thin_path(
            path.iter().copied().take_while(|p| p.0.is_finite() && p.1.is_finite() && inside(p)),
            ((map.x.end - map.x.start) / 2000.0, (map.y.end - map.y.start) / 2000.0),
        );
        cc.draw_series(LineSeries::new(shown.iter().copied(), style))
            .map_err(err)?
            .label(legend_label(label))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 22, y)], style));
        if let Some(&first) = shown.first() {
            cc.draw_series(std::iter::once(Circle::new(first, 6, c.stroke_width(2)))).map_err(err)?;
        }
        if let Some(&last) = shown.last() {
            cc.draw_series(std::iter::once(Circle::new(last, 5, c.filled()))).map_err(err)?;
        }
    }
    cc.configure_series_labels()
        .label_font((FONT, 15))
        .background_style(WHITE.mix(0.9))
        .border_style(RGBColor(160, 160, 160))
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Neighbouring ticks of a narrow axis get different labels; a wide axis keeps `tick`'s.
    #[test]
    fn narrow_axes_get_the_decimals_their_ticks_need() {
        let labels: Vec<String> = [10.10, 10.11, 10.12, 10.13].iter().map(|&v| axis_tick(v, 0.01)).collect();
        assert_eq!(labels, ["10.1", "10.11", "10.12", "10.13"]);
        assert_eq!(axis_tick(10.1234, 1.0), tick(10.1234));
        assert_eq!(axis_tick(0.5, 0.0), tick(0.5));
        assert_eq!(axis_tick(97.25, 0.0025), "97.25");
    }

    /// Up to 40 series, no two share both colour and line.
    #[test]
    fn forty_series_look_different() {
        let looks: std::collections::HashSet<_> = (0..40)
            .map(|i| {
                let c = PALETTE[i % PALETTE.len()];
                ((c.0, c.1, c.2), dash_of(i))
            })
            .collect();
        assert_eq!(looks.len(), 40);
        assert_eq!(dash_of(3), None);
    }

    /// A NaN (or infinite) point stays where it is and the smoothed curve goes on past it.
    #[test]
    fn smoothing_steps_over_a_non_finite_point() {
        let pts = [(1.0, 2.0), (2.0, f64::NAN), (3.0, 4.0), (4.0, f64::INFINITY), (5.0, 4.0)];
        let s = smooth(&pts, 0.5);
        assert!(s[1].1.is_nan() && s[3].1.is_infinite());
        let without = smooth(&[(1.0, 2.0), (3.0, 4.0), (5.0, 4.0)], 0.5);
        assert_eq!([s[0], s[2], s[4]], [without[0], without[1], without[2]]);
    }

    /// A legend shows at most 48 characters of a label, the cut marked.
    #[test]
    fn long_labels_are_cut_in_the_legend() {
        assert_eq!(legend_label("adamw lr=1e-3"), "adamw lr=1e-3");
        let long = "x".repeat(300);
        let shown = legend_label(&long);
        assert_eq!(shown.chars().count(), LEGEND_CHARS);
        assert!(shown.ends_with('…'));
        assert_eq!(legend_label(&"é".repeat(48)), "é".repeat(48));
    }

    /// A path of millions of points draws with at most `PATH_POINTS`, its ends kept; a path whose
    /// points are all distinct keeps them all while it is short.
    #[test]
    fn long_paths_are_thinned_to_what_can_be_seen() {
        let converging = (0..3_000_000).map(|i| (1.0 / (1.0 + i as f64), 0.5));
        let kept = thin_path(converging, (1e-3, 1e-3));
        assert!(kept.len() < 1100, "{}", kept.len());
        assert_eq!((kept[0], *kept.last().unwrap()), ((1.0, 0.5), (1.0 / 3_000_000.0, 0.5)));
        // Jumping across the frame at every step: an even subsample with both ends.
        let zigzag: Vec<(f64, f64)> = (0..100_000).map(|i| ((i % 2) as f64, i as f64 / 1e5)).collect();
        let kept = thin_path(zigzag.iter().copied(), (1e-3, 1e-3));
        assert_eq!(kept.len(), PATH_POINTS);
        assert_eq!((kept[0], *kept.last().unwrap()), (zigzag[0], zigzag[99_999]));
        let short: Vec<(f64, f64)> = (0..50).map(|i| (i as f64, 0.0)).collect();
        assert_eq!(thin_path(short.iter().copied(), (1e-3, 1e-3)), short);
    }
}
