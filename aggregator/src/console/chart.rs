//! Line charts as inline SVG, drawn on the server: no script, no request, readable by a screen
//! reader (a title and a description with the latest, lowest and highest values).

use std::fmt::Write as _;

use maud::{Markup, html};

/// The drawing's size in SVG units; it scales to the page's width.
const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 170.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 8.0;
const TOP: f64 = 8.0;
const BOTTOM: f64 = 22.0;
/// Series drawn at most; the rest are named as left out.
pub const MAX_SERIES: usize = 8;

/// How a chart's values read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// 0..100, drawn on a 0–100 scale.
    Percent,
    /// A plain number (load averages).
    Number,
    /// Bytes per second.
    BytesPerSec,
}

impl Unit {
    pub fn format(self, v: f64) -> String {
        match self {
            Unit::Percent => format!("{v:.1} %"),
            Unit::Number => format!("{v:.2}"),
            Unit::BytesPerSec => format!("{}/s", human_bytes(v)),
        }
    }
}

/// `v` bytes in binary units: `512 B`, `1.5 KiB`, `3.2 GiB`.
pub fn human_bytes(v: f64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = v.max(0.0);
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 && (v >= 10.0 || v == 0.0) {
        format!("{v:.0} {}", UNITS[0])
    } else if unit == 0 {
        format!("{v:.1} {}", UNITS[0])
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// One line of a chart.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub name: String,
    /// `(time_ns, value)`, oldest first.
    pub points: Vec<(i64, f64)>,
}

/// A chart of `lines` over `range` (ns), whose points are `step_ns` apart: a gap of more than
/// two steps breaks a line.
#[derive(Debug, Clone)]
pub struct Chart<'a> {
    /// `cpu`, `memory`, …: what tests and styles find it by.
    pub metric: &'a str,
    pub title: &'a str,
    pub unit: Unit,
    pub range: std::ops::Range<i64>,
    pub step_ns: i64,
    pub lines: Vec<Line>,
    /// Series the query selected beyond the ones drawn.
    pub left_out: usize,
}

impl Chart<'_> {
    /// The points drawn.
    pub fn points(&self) -> usize {
        self.lines.iter().map(|l| l.points.len()).sum()
    }

    /// The top of the value scale: 100 for percentages, otherwise a round number above the
    /// highest value.
    fn top(&self) -> f64 {
        let max = self
            .lines
            .iter()
            .flat_map(|l| l.points.iter().map(|p| p.1))
            .filter(|v| v.is_finite())
            .fold(0.0_f64, f64::max);
        match self.unit {
            Unit::Percent => 100.0,
            Unit::BytesPerSec => nice_binary_ceiling(max),
            Unit::Number => nice_ceiling(max),
        }
    }

    /// The SVG `points` of each run of a line (a gap starts a new run).
    pub fn runs(&self, line: &Line) -> Vec<String> {
        let (start, end) = (self.range.start, self.range.end.max(self.range.start + 1));
        let top = self.top();
        let x =
            |t: i64| LEFT + (WIDTH - LEFT - RIGHT) * ((t - start) as f64 / (end - start) as f64);
        let y = |v: f64| TOP + (HEIGHT - TOP - BOTTOM) * (1.0 - (v / top).clamp(0.0, 1.0));
        let mut runs = Vec::new();
        let mut run = String::new();
        let mut last: Option<i64> = None;
        for &(t, v) in &line.points {
            if !v.is_finite() {
                continue;
            }
            if last.is_some_and(|l| t - l > 2 * self.step_ns.max(1)) && !run.is_empty() {
                runs.push(std::mem::take(&mut run));
            }
            if !run.is_empty() {
                run.push(' ');
            }
            let _ = write!(run, "{:.1},{:.1}", x(t), y(v));
            last = Some(t);
        }
        if !run.is_empty() {
            runs.push(run);
        }
        runs
    }

    /// Latest, lowest and highest value of each line, in words.
    fn description(&self) -> String {
        let mut out = String::new();
        for line in &self.lines {
            let values: Vec<f64> = line.points.iter().map(|p| p.1).collect();
            let Some(latest) = values.last() else {
                continue;
            };
            let min = values.iter().copied().fold(f64::INFINITY, f64::min);
            let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let _ = write!(
                out,
                "{}: latest {}, lowest {}, highest {}. ",
                line.name,
                self.unit.format(*latest),
                self.unit.format(min),
                self.unit.format(max)
            );
        }
        out
    }

    pub fn render(&self) -> Markup {
        let points = self.points();
        let top = self.top();
        let id = format!("chart-{}", self.metric);
        let plot_bottom = HEIGHT - BOTTOM;
        let ticks = [0.0, 0.25, 0.5, 0.75, 1.0];
        let (start, end) = (self.range.start, self.range.end);
        let times = [start, start + (end - start) / 2, end];
        html! {
            figure.chart-box {
                figcaption { (self.title) }
                svg.chart id=(id) data-metric=(self.metric) data-points=(points)
                    viewBox={ "0 0 " (WIDTH) " " (HEIGHT) } role="img"
                    aria-labelledby={ (id) "-title " (id) "-desc" } {
                    title id={ (id) "-title" } { (self.title) }
                    desc id={ (id) "-desc" } {
                        @if points == 0 { "No data in this range." } @else { (self.description()) }
                    }
                    @for t in ticks {
                        @let y = TOP + (plot_bottom - TOP) * (1.0 - t);
                        line.grid x1=(LEFT) x2=(WIDTH - RIGHT) y1=(y) y2=(y) {}
                        text.axis x=(LEFT - 4.0) y=(y + 4.0) text-anchor="end" {
                            (self.unit.format(top * t))
                        }
                    }
                    @for (i, t) in times.iter().enumerate() {
                        @let x = LEFT + (WIDTH - LEFT - RIGHT) * (i as f64 / 2.0);
                        @let anchor = ["start", "middle", "end"][i];
                        text.axis x=(x) y=(HEIGHT - 6.0) text-anchor=(anchor) {
                            (axis_time(*t, end - start))
                        }
                    }
                    @if points == 0 {
                        text.nodata x=(WIDTH / 2.0) y=(HEIGHT / 2.0) text-anchor="middle" { "no data" }
                    }
                    @for (i, line) in self.lines.iter().enumerate() {
                        @for run in self.runs(line) {
                            @if let Some((x, y)) = run.split_once(',').filter(|_| !run.contains(' ')) {
                                // A lone point: a dot, as a line of one point is not drawn.
                                circle class={ "dot s" (i % MAX_SERIES) } cx=(x) cy=(y) r="2.5" {}
                            } @else {
                                polyline class={ "line s" (i % MAX_SERIES) } points=(run) {}
                            }
                        }
                    }
                }
                @if self.lines.len() > 1 || self.left_out > 0 {
                    ul.legend {
                        @for (i, line) in self.lines.iter().enumerate() {
                            li { span class={ "swatch s" (i % MAX_SERIES) } {} (line.name) }
                        }
                        @if self.left_out > 0 { li { "and " (self.left_out) " more not drawn" } }
                    }
                }
            }
        }
    }
}

/// A round number at or above `v`: 1, 2 or 5 times a power of ten (1 for nothing).
pub fn nice_ceiling(v: f64) -> f64 {
    if !v.is_finite() || v <= 0.0 {
        return 1.0;
    }
    let magnitude = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|c| *c >= v)
        .unwrap_or(10.0 * magnitude)
}

/// A round number of bytes at or above `v` in the binary unit it is shown in (so the scale
/// reads 500 KiB/s, not 488.3 KiB/s).
pub fn nice_binary_ceiling(v: f64) -> f64 {
    let mut unit = 1.0;
    while v / unit >= 1024.0 && unit < 1024f64.powi(5) {
        unit *= 1024.0;
    }
    let top = nice_ceiling(v / unit) * unit;
    // 1000 KiB reads better as 1 MiB.
    if top / unit >= 1000.0 {
        unit * 1024.0
    } else {
        top
    }
}

/// A time on the axis: `HH:MM` within two days, `MM-DD HH:MM` beyond (UTC).
fn axis_time(ns: i64, span_ns: i64) -> String {
    let text = super::layout::utc(ns);
    // `YYYY-MM-DD HH:MM:SS`
    if span_ns <= 2 * 86_400 * 1_000_000_000 {
        text.get(11..16).unwrap_or_default().to_owned()
    } else {
        text.get(5..16).unwrap_or_default().to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: i64 = 60_000_000_000;

    fn chart(lines: Vec<Line>) -> Chart<'static> {
        Chart {
            metric: "cpu",
            title: "CPU busy",
            unit: Unit::Percent,
            range: 0..10 * M,
            step_ns: M,
            lines,
            left_out: 0,
        }
    }

    #[test]
    fn every_point_is_drawn_and_counted() {
        let c = chart(vec![Line {
            name: "busy".into(),
            points: (0..10).map(|i| (i * M, i as f64 * 10.0)).collect(),
        }]);
        let svg = c.render().into_string();
        assert!(svg.contains(r#"data-points="10""#), "{svg}");
        let runs = c.runs(&c.lines[0]);
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].split(' ').count(), 10);
        // 0 % at the bottom of the plot, 90 % near its top.
        assert!(runs[0].starts_with("70.0,148.0"), "{}", runs[0]);
        assert!(svg.contains("latest 90.0 %, lowest 0.0 %, highest 90.0 %"));
    }

    #[test]
    fn a_gap_of_more_than_two_steps_breaks_the_line() {
        let c = chart(vec![Line {
            name: "busy".into(),
            points: vec![(0, 1.0), (M, 2.0), (5 * M, 3.0), (6 * M, 4.0)],
        }]);
        assert_eq!(c.runs(&c.lines[0]).len(), 2);
        assert_eq!(c.render().into_string().matches("<polyline").count(), 2);
    }

    #[test]
    fn a_lone_point_is_a_dot() {
        let c = chart(vec![Line {
            name: "busy".into(),
            points: vec![(5 * M, 50.0)],
        }]);
        let svg = c.render().into_string();
        assert!(svg.contains("<circle class=\"dot s0\""), "{svg}");
        assert!(!svg.contains("<polyline"));
        assert!(svg.contains(r#"data-points="1""#));
    }

    #[test]
    fn an_empty_chart_says_so() {
        let svg = chart(vec![]).render().into_string();
        assert!(svg.contains(r#"data-points="0""#));
        assert!(svg.contains("no data"));
        assert!(!svg.contains("<polyline"));
    }

    #[test]
    fn names_are_escaped_and_several_lines_get_a_legend() {
        let c = Chart {
            unit: Unit::Number,
            ..chart(vec![
                Line {
                    name: "<b>1m</b>".into(),
                    points: vec![(0, 0.5)],
                },
                Line {
                    name: "5m".into(),
                    points: vec![(0, 3.0)],
                },
            ])
        };
        let svg = c.render().into_string();
        assert!(svg.contains("&lt;b&gt;1m&lt;/b&gt;"));
        assert!(!svg.contains("<b>"));
        assert!(svg.contains("class=\"legend\""));
        // The scale tops out at a round number above 3.
        assert!(svg.contains(">5.00<"), "{svg}");
    }

    #[test]
    fn scales_are_round_and_bytes_read_in_binary_units() {
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(3.0), 5.0);
        assert_eq!(nice_ceiling(5.0), 5.0);
        assert_eq!(nice_ceiling(0.12), 0.2);
        assert_eq!(nice_ceiling(7300.0), 10000.0);
        assert_eq!(nice_binary_ceiling(400.0 * 1024.0), 500.0 * 1024.0);
        assert_eq!(nice_binary_ceiling(300.0), 500.0);
        assert_eq!(
            nice_binary_ceiling(900.0),
            1024.0,
            "1 KiB rather than 1000 B"
        );
        assert_eq!(nice_binary_ceiling(1000.0 * 1024.0), 1024.0 * 1024.0);
        assert_eq!(
            human_bytes(nice_binary_ceiling(3.1 * 1024.0 * 1024.0)),
            "5.0 MiB"
        );
        assert_eq!(human_bytes(512.0), "512 B");
        assert_eq!(human_bytes(0.25), "0.2 B");
        assert_eq!(human_bytes(1536.0), "1.5 KiB");
        assert_eq!(Unit::BytesPerSec.format(3.0 * 1024.0 * 1024.0), "3.0 MiB/s");
    }
}
