//! Charts drawn on the server as SVG: numbers and labels laid out here,
//! written into the page by its template (which escapes every label), so
//! the Content-Security-Policy stays free of inline script and style.

/// The drawing area, in SVG user units (the SVG scales to the page).
pub const WIDTH: f64 = 720.0;
/// Height of the drawing area.
pub const HEIGHT: f64 = 240.0;
/// Room left of the plot for the y axis' labels.
const LEFT: f64 = 64.0;
/// Room below the plot for the x axis' labels.
const BOTTOM: f64 = 24.0;
/// Room above the plot.
const TOP: f64 = 8.0;

/// At most this many series in one chart (each has a colour class).
pub const MAX_SERIES: usize = 6;

/// One mark on an axis.
pub struct Tick {
    /// Its position along the axis, formatted.
    pub at: String,
    /// Its label.
    pub label: String,
    /// How the label sits on the mark (`start`, `middle`, `end`): the
    /// first and last stay inside the drawing.
    pub anchor: &'static str,
}

fn anchor(i: i32, last: i32) -> &'static str {
    match i {
        0 => "start",
        i if i == last => "end",
        _ => "middle",
    }
}

/// A round step for an axis from 0 to `max` in about four steps: 1, 2 or
/// 5 times a power of ten.
fn round_step(max: f64) -> f64 {
    let raw = (max / 4.0).max(f64::MIN_POSITIVE);
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|step| *step >= raw)
        .unwrap_or(10.0 * magnitude)
}

/// One line of a [`LineChart`].
pub struct Line {
    /// What it measures (a reading's name).
    pub name: String,
    /// Its colour class, `series-0` to `series-5`.
    pub class: String,
    /// SVG polyline points: numbers only.
    pub points: String,
    /// How many points.
    pub count: usize,
}

/// Values over time, one line per series.
pub struct LineChart {
    /// The lines.
    pub lines: Vec<Line>,
    /// Time marks.
    pub x_ticks: Vec<Tick>,
    /// Value marks.
    pub y_ticks: Vec<Tick>,
    /// Series left out past [`MAX_SERIES`].
    pub left_out: usize,
}

fn fmt(v: f64) -> String {
    format!("{v:.1}")
}

/// A value for an axis label: short, without float noise.
fn label(v: f64) -> String {
    if v.abs() >= 1e6 || (v != 0.0 && v.abs() < 1e-3) {
        format!("{v:.2e}")
    } else if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// The y range of values from `min` to `max`, as halves (`(lo, hi)`,
/// with `hi > lo`): the difference of two halves of finite numbers is
/// always finite, where that of the numbers themselves may not be (−1e308
/// to 1e308). A flat range is widened by a step that shows at the values'
/// own magnitude.
fn half_span(min: f64, max: f64) -> (f64, f64) {
    let (lo, hi) = (min / 2.0, max / 2.0);
    if hi - lo > 0.0 {
        return (lo, hi);
    }
    let step = (lo.abs() * 1e-6).max(0.5);
    (lo - step, hi + step)
}

impl LineChart {
    /// Lays out `series` (name, points of (Unix seconds, value)); points
    /// that are not finite are left out. `time_label` names a time mark.
    pub fn new(series: Vec<(String, Vec<(i64, f64)>)>, time_label: impl Fn(i64) -> String) -> Self {
        let left_out = series.len().saturating_sub(MAX_SERIES);
        let series: Vec<(String, Vec<(i64, f64)>)> = series
            .into_iter()
            .take(MAX_SERIES)
            .map(|(name, points)| {
                (
                    name,
                    points.into_iter().filter(|p| p.1.is_finite()).collect(),
                )
            })
            .collect();
        let all = || series.iter().flat_map(|(_, p)| p.iter());
        let (Some(t0), Some(t1)) = (all().map(|p| p.0).min(), all().map(|p| p.0).max()) else {
            return LineChart {
                lines: Vec::new(),
                x_ticks: Vec::new(),
                y_ticks: Vec::new(),
                left_out,
            };
        };
        let (lo, hi) = half_span(
            all().map(|p| p.1).fold(f64::INFINITY, f64::min),
            all().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max),
        );
        // i64 seconds to f64: exact to 2^53, far past any real time.
        #[allow(clippy::cast_precision_loss)]
        let (t0f, t1f) = (t0 as f64, (t1.max(t0 + 1)) as f64);
        let plot_w = WIDTH - LEFT;
        let plot_h = HEIGHT - TOP - BOTTOM;
        let x = |t: f64| LEFT + (t - t0f) / (t1f - t0f) * plot_w;
        let y = |v: f64| TOP + (1.0 - (v / 2.0 - lo) / (hi - lo)) * plot_h;
        let lines = series
            .iter()
            .enumerate()
            .map(|(i, (name, points))| Line {
                name: name.clone(),
                class: format!("series-{i}"),
                #[allow(clippy::cast_precision_loss)]
                points: points
                    .iter()
                    .map(|&(t, v)| format!("{},{}", fmt(x(t as f64)), fmt(y(v))))
                    .collect::<Vec<_>>()
                    .join(" "),
                count: points.len(),
            })
            .collect();
        let steps = 4;
        let x_ticks = (0..=steps)
            .map(|i| {
                let t = t0f + (t1f - t0f) * f64::from(i) / f64::from(steps);
                #[allow(clippy::cast_possible_truncation)]
                Tick {
                    at: fmt(x(t)),
                    label: time_label(t as i64),
                    anchor: anchor(i, steps),
                }
            })
            .collect();
        let y_ticks = (0..=steps)
            .map(|i| {
                let half = lo + (hi - lo) * f64::from(i) / f64::from(steps);
                let at = TOP + (1.0 - (half - lo) / (hi - lo)) * plot_h;
                Tick {
                    at: fmt(at),
                    label: label((half * 2.0).clamp(-f64::MAX, f64::MAX)),
                    anchor: "end",
                }
            })
            .collect();
        LineChart {
            lines,
            x_ticks,
            y_ticks,
            left_out,
        }
    }

    /// Whether there is nothing to draw.
    pub fn is_empty(&self) -> bool {
        self.lines.iter().all(|l| l.count == 0)
    }
}

/// One bar of a [`BarChart`].
pub struct Bar {
    /// What it counts.
    pub label: String,
    /// The value, as shown.
    pub value: String,
    /// Its top edge, formatted.
    pub y: String,
    /// Its left edge.
    pub x: String,
    /// Its width.
    pub width: String,
    /// Its height.
    pub height: String,
    /// Its middle, for a label under it.
    pub middle: String,
    /// The label under it: every bar's when they fit, else every n-th.
    pub tick: Option<String>,
}

/// At most this many labels under a bar chart.
const MAX_BAR_LABELS: usize = 8;

/// A label short enough to sit under a bar.
fn short(text: &str) -> String {
    if text.chars().count() <= 16 {
        text.to_owned()
    } else {
        text.chars().take(15).chain(['…']).collect()
    }
}

/// Values side by side, one bar each, on a shared scale from zero.
pub struct BarChart {
    /// The bars, in the order given.
    pub bars: Vec<Bar>,
    /// Value marks.
    pub y_ticks: Vec<Tick>,
}

impl BarChart {
    /// Lays out `(label, value)` bars.
    pub fn new(values: &[(String, u64)]) -> BarChart {
        let max = values.iter().map(|v| v.1).max().unwrap_or(0).max(1);
        // Counts far below 2^53: exact.
        #[allow(clippy::cast_precision_loss)]
        let step = round_step(max as f64);
        #[allow(clippy::cast_precision_loss)]
        let maxf = (max as f64 / step).ceil() * step;
        let every = values.len().div_ceil(MAX_BAR_LABELS).max(1);
        let plot_w = WIDTH - LEFT;
        let plot_h = HEIGHT - TOP - BOTTOM;
        #[allow(clippy::cast_precision_loss)]
        let slot = plot_w / values.len().max(1) as f64;
        let bars = values
            .iter()
            .enumerate()
            .map(|(i, (name, v))| {
                #[allow(clippy::cast_precision_loss)]
                let h = *v as f64 / maxf * plot_h;
                #[allow(clippy::cast_precision_loss)]
                Bar {
                    label: name.clone(),
                    value: v.to_string(),
                    middle: fmt(LEFT + slot * (i as f64 + 0.5)),
                    tick: (i % every == 0).then(|| short(name)),
                    x: fmt(LEFT + slot * i as f64 + slot * 0.1),
                    width: fmt(slot * 0.8),
                    y: fmt(TOP + plot_h - h),
                    height: fmt(h),
                }
            })
            .collect();
        let marks = (maxf / step).round();
        #[allow(clippy::cast_possible_truncation)]
        let y_ticks = (0..=marks as i32)
            .map(|i| {
                let v = step * f64::from(i);
                Tick {
                    at: fmt(TOP + plot_h - v / maxf * plot_h),
                    label: label(v),
                    anchor: "end",
                }
            })
            .collect();
        BarChart { bars, y_ticks }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_fill_the_plot_and_skip_what_is_not_a_number() {
        let chart = LineChart::new(
            vec![("temp".into(), vec![(100, 1.0), (200, f64::NAN), (300, 3.0)])],
            |t| t.to_string(),
        );
        let line = &chart.lines[0];
        assert_eq!(line.count, 2);
        // The first point at the left edge and bottom, the last at the
        // right edge and top.
        assert_eq!(line.points, "64.0,216.0 720.0,8.0");
        assert_eq!(chart.x_ticks.first().map(|t| t.label.as_str()), Some("100"));
        assert_eq!(chart.x_ticks.last().map(|t| t.label.as_str()), Some("300"));
        assert_eq!(chart.y_ticks.last().map(|t| t.label.as_str()), Some("3"));
        assert!(!chart.is_empty());
    }

    #[test]
    fn one_point_and_no_point_still_draw() {
        let chart = LineChart::new(vec![("x".into(), vec![(5, 2.0)])], |t| t.to_string());
        assert_eq!(chart.lines[0].count, 1);
        assert!(!chart.lines[0].points.contains("NaN"));
        let empty = LineChart::new(vec![("x".into(), vec![])], |t| t.to_string());
        assert!(empty.is_empty());
        let many = LineChart::new(
            (0..9).map(|i| (format!("s{i}"), vec![(i, 1.0)])).collect(),
            |t| t.to_string(),
        );
        assert_eq!((many.lines.len(), many.left_out), (MAX_SERIES, 3));
    }

    #[test]
    fn extreme_values_still_draw_numbers() {
        for values in [
            vec![(1, 1e17), (2, 1e17)],
            vec![(1, -1e308), (2, 1e308)],
            vec![(1, f64::MAX), (2, f64::MAX)],
            vec![(1, 0.0), (2, 0.0)],
        ] {
            let chart = LineChart::new(vec![("x".into(), values.clone())], |t| t.to_string());
            let points = &chart.lines[0].points;
            assert!(
                !points.contains("NaN") && !points.contains("inf"),
                "{values:?}: {points}"
            );
            for tick in &chart.y_ticks {
                assert!(!tick.at.contains("NaN") && !tick.label.contains("NaN"));
            }
        }
    }

    #[test]
    fn bars_share_a_scale_from_zero() {
        let chart = BarChart::new(&[("a".into(), 10), ("b".into(), 5), ("c".into(), 0)]);
        assert_eq!(chart.bars[0].height, "208.0");
        assert_eq!(chart.bars[1].height, "104.0");
        assert_eq!(chart.bars[2].height, "0.0");
        assert_eq!(chart.y_ticks.last().map(|t| t.label.as_str()), Some("10"));
        // Round marks: 26 requests draw on a 0–30 scale in steps of 10.
        let chart = BarChart::new(&[("a".into(), 26)]);
        let labels: Vec<&str> = chart.y_ticks.iter().map(|t| t.label.as_str()).collect();
        assert_eq!(labels, ["0", "10", "20", "30"]);
        // Thirty bars: every fourth labelled, long names cut.
        let many: Vec<(String, u64)> = (0..30)
            .map(|i| (format!("day-{i}-of-a-long-month"), i))
            .collect();
        let chart = BarChart::new(&many);
        assert_eq!(chart.bars.iter().filter(|b| b.tick.is_some()).count(), 8);
        assert_eq!(chart.bars[0].tick.as_deref(), Some("day-0-of-a-long…"));
        assert!(BarChart::new(&[]).bars.is_empty());
    }
}
