//! The README chart: for every headline row (`readme::HEADLINES`), a bar of its p50 and, under
//! it, a bar of its same-run baseline's p50, on a log scale (warm wakes are tens of ms, boots
//! seconds). Rendered with plotters' SVG backend (text stays `<text>`: no fonts needed).

use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::readme::{HEADLINES, Shown, shown};
use crate::report::Report;

/// bhatti's bars (one per measured headline row; the unit test counts them by this color).
pub const BHATTI: RGBColor = RGBColor(0x1f, 0x77, 0xb4);
/// Baseline bars.
pub const BASELINE: RGBColor = RGBColor(0xb0, 0xb0, 0xb0);

/// One bar pair of the chart.
#[derive(Debug)]
struct Bar {
    label: String,
    value: Option<f64>,
    baseline: Option<(String, f64)>,
    note: Option<String>,
}

fn bars(report: &Report) -> Vec<Bar> {
    HEADLINES
        .iter()
        .map(|h| match shown(report, h) {
            Shown::Measured(r) => Bar {
                label: h.label.replace('`', ""),
                value: r.p50,
                baseline: r.baseline.as_ref().and_then(|b| {
                    let p50 = report.row(b).and_then(|row| row.p50)?;
                    Some((b.clone(), p50))
                }),
                note: None,
            },
            Shown::Skipped(_) => Bar {
                label: h.label.replace('`', ""),
                value: None,
                baseline: None,
                note: Some("skipped".into()),
            },
            Shown::Missing(_) => Bar {
                label: h.label.replace('`', ""),
                value: None,
                baseline: None,
                note: Some("not measured".into()),
            },
        })
        .collect()
}

fn ms_label(v: f64) -> String {
    if v < 10.0 { format!("{v:.1} ms") } else { format!("{v:.0} ms") }
}

/// The chart of `report`'s headline rows, as an SVG document.
pub fn render(report: &Report) -> anyhow::Result<String> {
    let bars = bars(report);
    let values: Vec<f64> = bars
        .iter()
        .flat_map(|b| b.value.into_iter().chain(b.baseline.as_ref().map(|(_, v)| *v)))
        .filter(|v| *v > 0.0)
        .collect();
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min).min(1.0) / 2.0;
    let hi = values.iter().copied().fold(1.0, f64::max) * 8.0;
    // Two slots per row (bhatti, then its baseline), the first row at the top.
    let slots = bars.len() * 2;
    let slot = |row: usize, baseline: bool| slots - 1 - (2 * row + usize::from(baseline));
    let mut labels = vec![String::new(); slots];
    for (i, b) in bars.iter().enumerate() {
        labels[slot(i, false)] = b.label.clone();
        if let Some((name, _)) = &b.baseline {
            labels[slot(i, true)] = format!("baseline: {name}");
        }
    }
    let m = &report.meta;
    let title =
        format!("bhatti p50 and same-run baselines ({}, {}, {})", m.accel, m.date, m.commit);
    let mut svg = String::new();
    {
        let height = 90 + 26 * slots as u32;
        let root = SVGBackend::with_string(&mut svg, (1000, height)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 24))
            .margin(12)
            .x_label_area_size(34)
            .y_label_area_size(300)
            // An integer range's segments include its end: `0..slots - 1` is `slots` segments.
            .build_cartesian_2d((lo..hi).log_scale(), (0..slots - 1).into_segmented())
            .map_err(draw_err)?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(slots)
            .y_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) => labels.get(*i).cloned().unwrap_or_default(),
                _ => String::new(),
            })
            .x_desc("ms, log scale")
            .x_label_formatter(&|v| format!("{v}"))
            .label_style(("sans-serif", 16))
            .draw()
            .map_err(draw_err)?;
        let bar = |v: f64, k: usize, color: RGBColor| {
            let mut r = Rectangle::new(
                [(lo, SegmentValue::Exact(k)), (v, SegmentValue::Exact(k + 1))],
                color.filled(),
            );
            r.set_margin(3, 3, 0, 0);
            r
        };
        let text = |s: String, x: f64, k: usize| {
            let style = TextStyle::from(("sans-serif", 15).into_font())
                .pos(Pos::new(HPos::Left, VPos::Center));
            Text::new(s, (x, SegmentValue::CenterOf(k)), style)
        };
        for (i, b) in bars.iter().enumerate() {
            let k = slot(i, false);
            match (b.value, &b.note) {
                (Some(v), _) => {
                    chart.draw_series(std::iter::once(bar(v, k, BHATTI))).map_err(draw_err)?;
                    chart
                        .draw_series(std::iter::once(text(ms_label(v), v * 1.08, k)))
                        .map_err(draw_err)?;
                }
                (None, Some(note)) => {
                    chart
                        .draw_series(std::iter::once(text(note.clone(), lo * 1.1, k)))
                        .map_err(draw_err)?;
                }
                (None, None) => {}
            }
            if let Some((_, v)) = &b.baseline {
                let k = slot(i, true);
                chart.draw_series(std::iter::once(bar(*v, k, BASELINE))).map_err(draw_err)?;
                chart
                    .draw_series(std::iter::once(text(ms_label(*v), v * 1.08, k)))
                    .map_err(draw_err)?;
            }
        }
        root.present().map_err(draw_err)?;
    }
    Ok(svg)
}

fn draw_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("drawing the chart: {e:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(c: RGBColor) -> String {
        format!("#{:02X}{:02X}{:02X}", c.0, c.1, c.2)
    }

    #[test]
    fn one_bar_per_measured_row_and_one_per_baseline() {
        let report = crate::readme::tests::fixture();
        let svg = render(&report).unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"), "{svg}");
        let count = |color: RGBColor| {
            let fill = format!("fill=\"{}\"", hex(color));
            svg.lines().filter(|l| l.contains("<rect") && l.contains(&fill)).count()
        };
        // Measured in the fixture: shape restore, boot, exec true; baselines: shape restore's
        // (the boot row) and exec's (the engine's).
        assert_eq!(count(BHATTI), 3, "{svg}");
        assert_eq!(count(BASELINE), 2, "{svg}");
        for label in ["time to first command, shape snapshot", "exec true (hot)", "fork into 4"] {
            assert!(svg.contains(label), "label {label} missing");
        }
        assert!(svg.contains("skipped") && svg.contains("not measured"));
        assert!(svg.contains("210 ms") && svg.contains("1800 ms"), "values on the bars");
    }
}
