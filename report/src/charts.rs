//! SVG charts as strings, for pages that must open anywhere without
//! scripts: bars, grouped bars and lines. Only plotters' SVG backend.
//!
//! Drawing errors are ignored on purpose: plotters only fails on the
//! backend, and a string backend cannot fail.

use plotters::prelude::*;

const PALETTE: [RGBColor; 6] = [
    RGBColor(70, 110, 200),
    RGBColor(220, 120, 40),
    RGBColor(60, 160, 90),
    RGBColor(150, 80, 170),
    RGBColor(190, 60, 70),
    RGBColor(110, 110, 110),
];

pub fn color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

const SIZE: (u32, u32) = (640, 300);

fn top(values: impl Iterator<Item = f64>) -> f64 {
    values.fold(0.0f64, f64::max).max(1e-9) * 1.15
}

/// One bar per row.
pub fn bars(title: &str, unit: &str, rows: &[(String, f64)]) -> String {
    let labels: Vec<String> = rows.iter().map(|(l, _)| l.clone()).collect();
    let series = [(String::new(), rows.iter().map(|(_, v)| *v).collect())];
    grouped(title, unit, &labels, &series)
}

/// Bars in groups: one bar per series inside each group, a legend when the
/// series are named. `series[i].1[g]` is series i's value in group g.
pub fn grouped(
    title: &str,
    unit: &str,
    groups: &[String],
    series: &[(String, Vec<f64>)],
) -> String {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        let _ = root.fill(&WHITE);
        let named = series.iter().any(|(n, _)| !n.is_empty());
        // Headroom for the legend, so it does not cover the tallest bars.
        let max = top(series.iter().flat_map(|(_, v)| v.iter().copied()))
            * if named { 1.35 } else { 1.0 };
        let n = groups.len().max(1);
        let chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..n as f64, 0f64..max);
        if let Ok(mut chart) = chart {
            let _ = chart
                .configure_mesh()
                .disable_x_mesh()
                .x_labels(2 * n + 1)
                .x_label_formatter(&|x| {
                    // Labels sit at each group's centre.
                    let i = (x - 0.5).round();
                    if (x - 0.5 - i).abs() < 1e-6 && i >= 0.0 {
                        groups.get(i as usize).cloned().unwrap_or_default()
                    } else {
                        String::new()
                    }
                })
                .x_label_style(("sans-serif", 11))
                .y_desc(unit)
                .draw();
            let width = 0.8 / series.len().max(1) as f64;
            for (s, (name, values)) in series.iter().enumerate() {
                let c = color(if series.len() == 1 { 0 } else { s });
                let drawn = chart.draw_series(values.iter().enumerate().map(|(g, v)| {
                    let x0 = g as f64 + 0.1 + s as f64 * width;
                    Rectangle::new([(x0, 0.0), (x0 + width * 0.92, *v)], c.filled())
                }));
                if let Ok(drawn) = drawn
                    && !name.is_empty()
                {
                    drawn.label(name.as_str()).legend(move |(x, y)| {
                        Rectangle::new([(x, y - 5), (x + 12, y + 5)], c.filled())
                    });
                }
            }
            if named {
                let _ = chart
                    .configure_series_labels()
                    .background_style(WHITE.mix(0.85))
                    .border_style(BLACK)
                    .position(SeriesLabelPosition::UpperRight)
                    .draw();
            }
        }
        let _ = root.present();
    }
    svg
}

/// Lines through points, one per series; `log_x` draws x on a log2 scale
/// (repo counts 1, 4, 16, 64 spread evenly).
pub fn lines(
    title: &str,
    x_desc: &str,
    y_desc: &str,
    log_x: bool,
    series: &[(String, Vec<(f64, f64)>)],
) -> String {
    let tx = |x: f64| if log_x { x.max(1e-9).log2() } else { x };
    let xs = || {
        series
            .iter()
            .flat_map(|(_, p)| p.iter().map(|(x, _)| tx(*x)))
    };
    let (x0, x1) = (
        xs().fold(f64::INFINITY, f64::min),
        xs().fold(f64::NEG_INFINITY, f64::max),
    );
    let (x0, x1) = match (x0.is_finite(), x1 > x0) {
        (true, true) => {
            let pad = (x1 - x0) * 0.05;
            (x0 - pad, x1 + pad)
        }
        // One x value: centre it.
        (true, false) => (x0 - 1.0, x0 + 1.0),
        _ => (0.0, 1.0),
    };
    let max = top(series.iter().flat_map(|(_, p)| p.iter().map(|(_, y)| *y)));
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        let _ = root.fill(&WHITE);
        let chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(70)
            .build_cartesian_2d(x0..x1, 0f64..max);
        if let Ok(mut chart) = chart {
            let _ = chart
                .configure_mesh()
                .x_desc(x_desc)
                .y_desc(y_desc)
                .x_labels(if log_x {
                    4 * (x1 - x0).ceil() as usize + 1
                } else {
                    10
                })
                .x_label_formatter(&|x| {
                    if !log_x {
                        return format!("{x}");
                    }
                    // Only whole powers of two are labelled: 1, 2, 4, 8, ...
                    if (x - x.round()).abs() < 1e-6 {
                        format!("{:.0}", x.round().exp2())
                    } else {
                        String::new()
                    }
                })
                .draw();
            for (s, (name, points)) in series.iter().enumerate() {
                let c = color(s);
                let pts: Vec<(f64, f64)> = points.iter().map(|(x, y)| (tx(*x), *y)).collect();
                if let Ok(drawn) =
                    chart.draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))
                {
                    drawn.label(name.as_str()).legend(move |(x, y)| {
                        PathElement::new([(x, y), (x + 14, y)], c.stroke_width(2))
                    });
                }
                let _ = chart.draw_series(pts.iter().map(|p| Circle::new(*p, 3, c.filled())));
            }
            let _ = chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .position(SeriesLabelPosition::UpperLeft)
                .draw();
        }
        let _ = root.present();
    }
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_draw_every_value_and_label() {
        let svg = grouped(
            "t",
            "ops/s",
            &["a".into(), "b".into()],
            &[
                ("global".into(), vec![1.0, 2.0]),
                ("striped".into(), vec![3.0, 4.0]),
            ],
        );
        assert!(svg.starts_with("<svg"), "{}", &svg[..40]);
        assert!(svg.matches("<rect").count() >= 4, "bars missing");
        for label in ["global", "striped", "ops/s"] {
            assert!(svg.contains(label), "missing {label}");
        }
        let svg = lines(
            "t",
            "repos",
            "ops/s",
            true,
            &[(
                "striped".into(),
                vec![(1.0, 10.0), (4.0, 40.0), (16.0, 150.0)],
            )],
        );
        assert!(
            svg.contains("<polyline") || svg.contains("<path"),
            "no line drawn"
        );
        assert!(svg.contains("striped"));
    }
}
