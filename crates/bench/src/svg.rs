//! A hand-written SVG bar chart: grouped horizontal bars (one group per scenario, one bar per
//! broker) with a min–max whisker and the median written beside each bar.
//!
//! Why not `plotters`: a bar chart is ~100 lines of text, and this keeps the load generator's
//! build free of a plotting stack (fonts, image backends) on machines with two shared cores.

use std::fmt::Write as _;

/// One bar: the median and the range over repeats.
#[derive(Debug, Clone, PartialEq)]
pub struct Bar {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

/// One group: a label and one bar per series (`None` = not measured).
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub label: String,
    pub bars: Vec<Option<Bar>>,
}

const COLORS: [&str; 4] = ["#d9480f", "#1c7ed6", "#2f9e44", "#7048e8"];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn short(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2} M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1} k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

/// Renders the chart; each group's bars are scaled to the largest value in that group, so
/// groups of very different magnitude stay readable (the numbers are written out).
pub fn bar_chart(title: &str, unit: &str, series: &[&str], groups: &[Group]) -> String {
    let (left, right, bar_h, gap) = (230.0, 140.0, 16.0, 14.0);
    let plot_w = 440.0;
    let width = left + plot_w + right;
    let group_h = series.len() as f64 * bar_h + gap;
    let height = 70.0 + groups.len() as f64 * group_h + 20.0;
    let mut o = String::new();
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(o, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        o,
        r#"<text x="10" y="20" font-size="15" font-weight="bold">{}</text>"#,
        esc(title)
    );
    let _ = writeln!(
        o,
        r##"<text x="10" y="38" fill="#555">{} (median of repeats; whiskers: min–max; each group scaled to its largest bar)</text>"##,
        esc(unit)
    );
    for (i, s) in series.iter().enumerate() {
        let x = 10.0 + i as f64 * 130.0;
        let _ = writeln!(
            o,
            r#"<rect x="{x}" y="46" width="12" height="12" fill="{}"/><text x="{}" y="57">{}</text>"#,
            COLORS[i % 4],
            x + 16.0,
            esc(s)
        );
    }
    for (g, group) in groups.iter().enumerate() {
        let y0 = 70.0 + g as f64 * group_h;
        let scale_max = group
            .bars
            .iter()
            .flatten()
            .map(|b| b.max.max(b.median))
            .fold(0.0, f64::max);
        let _ = writeln!(
            o,
            r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
            left - 8.0,
            y0 + series.len() as f64 * bar_h / 2.0 + 4.0,
            esc(&group.label)
        );
        for (i, bar) in group.bars.iter().enumerate() {
            let y = y0 + i as f64 * bar_h;
            let Some(b) = bar else {
                let _ = writeln!(
                    o,
                    r##"<text x="{left}" y="{}" fill="#999">not measured</text>"##,
                    y + bar_h - 4.0
                );
                continue;
            };
            let sx = |v: f64| {
                if scale_max > 0.0 {
                    v / scale_max * plot_w
                } else {
                    0.0
                }
            };
            let _ = writeln!(
                o,
                r#"<rect x="{left}" y="{y}" width="{:.1}" height="{}" fill="{}"/>"#,
                sx(b.median),
                bar_h - 3.0,
                COLORS[i % 4]
            );
            let ym = y + (bar_h - 3.0) / 2.0;
            let _ = writeln!(
                o,
                r#"<line x1="{:.1}" x2="{:.1}" y1="{ym}" y2="{ym}" stroke="black"/>"#,
                left + sx(b.min),
                left + sx(b.max)
            );
            let _ = writeln!(
                o,
                r#"<text x="{:.1}" y="{}">{}</text>"#,
                left + sx(b.max.max(b.median)) + 6.0,
                y + bar_h - 5.0,
                short(b.median)
            );
        }
    }
    let _ = writeln!(o, "</svg>");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_bars_labels_and_gaps() {
        let groups = vec![
            Group {
                label: "16 B <transient>".into(),
                bars: vec![
                    Some(Bar {
                        median: 2000.0,
                        min: 1500.0,
                        max: 2500.0,
                    }),
                    None,
                ],
            },
            Group {
                label: "1 KiB".into(),
                bars: vec![
                    Some(Bar {
                        median: 3e6,
                        min: 3e6,
                        max: 3e6,
                    }),
                    Some(Bar {
                        median: 1e6,
                        min: 9e5,
                        max: 1.1e6,
                    }),
                ],
            },
        ];
        let svg = bar_chart("AMQP", "msg/s", &["FerryMQ", "RabbitMQ"], &groups);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("16 B &lt;transient&gt;"));
        assert!(svg.contains("not measured"));
        assert!(svg.contains("2.0 k") && svg.contains("3.00 M") && svg.contains("1.00 M"));
        assert_eq!(svg.matches("<rect").count(), 1 + 2 + 3);
    }
}
