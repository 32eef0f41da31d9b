//! Charts as SVG strings (plotters' SVG backend): lines with bands and reference lines, and bars
//! with intervals. An empty chart says "no data"; a chart that cannot be drawn says why.

use plotters::prelude::*;

/// Chart size in pixels.
const SIZE: (u32, u32) = (560, 300);

/// Series colours, in order.
pub const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(127, 127, 127),
];

/// A line.
pub struct Series {
    /// Its legend.
    pub name: String,
    /// (x, y), in x order.
    pub points: Vec<(f64, f64)>,
    /// Its colour.
    pub color: RGBColor,
    /// Drawn dashed (a bound, a reference).
    pub dashed: bool,
}

/// A shaded band between two curves.
pub struct Band {
    /// Its legend.
    pub name: String,
    /// (x, low, high), in x order.
    pub points: Vec<(f64, f64, f64)>,
    /// Its colour.
    pub color: RGBColor,
}

/// A line chart.
pub struct Lines {
    /// Axis labels.
    pub x_label: String,
    /// Axis labels.
    pub y_label: String,
    /// Bands, drawn first.
    pub bands: Vec<Band>,
    /// Lines.
    pub series: Vec<Series>,
}

fn message(text: &str) -> String {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        let _ = root.fill(&WHITE);
        let _ = root.draw(&Text::new(text.to_string(), (20, (SIZE.1 / 2) as i32), ("sans-serif", 16).into_font()));
        let _ = root.present();
    }
    svg
}

fn bounds(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if lo > hi {
        return None;
    }
    if hi - lo < 1e-9 {
        let pad = if hi.abs() > 1e-9 { hi.abs() * 0.1 } else { 1.0 };
        return Some((lo - pad, hi + pad));
    }
    let pad = (hi - lo) * 0.06;
    Some((lo - pad, hi + pad))
}

impl Lines {
    /// The chart as SVG.
    pub fn svg(&self) -> String {
        let xs = self.series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
        let xs = xs.chain(self.bands.iter().flat_map(|b| b.points.iter().map(|p| p.0)));
        let ys = self.series.iter().flat_map(|s| s.points.iter().map(|p| p.1));
        let ys = ys.chain(self.bands.iter().flat_map(|b| b.points.iter().flat_map(|p| [p.1, p.2])));
        let (Some(x), Some(y)) = (bounds(xs), bounds(ys)) else { return message("no data yet") };
        let mut svg = String::new();
        let drawn = self.draw(&mut svg, x, y);
        match drawn {
            Ok(()) => svg,
            Err(e) => message(&format!("chart failed: {e}")),
        }
    }

    fn draw(&self, svg: &mut String, x: (f64, f64), y: (f64, f64)) -> Result<(), String> {
        let root = SVGBackend::with_string(svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let mut chart = ChartBuilder::on(&root)
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(58)
            .build_cartesian_2d(x.0..x.1, y.0..y.1)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc(self.x_label.as_str())
            .y_desc(self.y_label.as_str())
            .light_line_style(WHITE)
            .draw()
            .map_err(|e| e.to_string())?;
        for b in &self.bands {
            let defined: Vec<_> =
                b.points.iter().filter(|p| p.0.is_finite() && p.1.is_finite() && p.2.is_finite()).collect();
            let mut outline: Vec<(f64, f64)> = defined.iter().map(|p| (p.0, p.2)).collect();
            outline.extend(defined.iter().rev().map(|p| (p.0, p.1)));
            let color = b.color;
            chart
                .draw_series(std::iter::once(Polygon::new(outline, color.mix(0.22).filled())))
                .map_err(|e| e.to_string())?
                .label(b.name.as_str())
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 16, y + 5)], color.mix(0.22).filled()));
        }
        for s in &self.series {
            let color = s.color;
            let style = color.stroke_width(2);
            // An undefined point (no data at that look) is left out, not drawn at zero.
            let points = s.points.iter().copied().filter(|p| p.0.is_finite() && p.1.is_finite());
            let anno = if s.dashed {
                chart.draw_series(DashedLineSeries::new(points, 6, 4, style)).map_err(|e| e.to_string())?
            } else {
                chart.draw_series(LineSeries::new(points, style)).map_err(|e| e.to_string())?
            };
            anno.label(s.name.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2)));
            // Markers where points are few (a single point draws no line).
            let defined: Vec<(f64, f64)> =
                s.points.iter().copied().filter(|p| p.0.is_finite() && p.1.is_finite()).collect();
            if !s.dashed && defined.len() <= 60 {
                chart
                    .draw_series(defined.into_iter().map(|p| Circle::new(p, 3, color.filled())))
                    .map_err(|e| e.to_string())?;
            }
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .draw()
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())
    }
}

/// One group of bars (one bar per category), with an optional interval per bar.
pub struct BarGroup {
    /// Its legend.
    pub name: String,
    /// Its colour.
    pub color: RGBColor,
    /// (value, interval) per category.
    pub values: Vec<(f64, Option<(f64, f64)>)>,
}

/// Bars per category, groups side by side.
pub fn bars(y_label: &str, categories: &[String], groups: &[BarGroup]) -> String {
    let ys = groups.iter().flat_map(|g| g.values.iter().flat_map(|(v, i)| [Some(*v), i.map(|i| i.1)]).flatten());
    let Some((_, hi)) = bounds(ys.chain(std::iter::once(0.0))) else { return message("no data yet") };
    if categories.is_empty() {
        return message("no data yet");
    }
    let mut svg = String::new();
    let drawn = draw_bars(&mut svg, y_label, categories, groups, hi);
    match drawn {
        Ok(()) => svg,
        Err(e) => message(&format!("chart failed: {e}")),
    }
}

fn draw_bars(
    svg: &mut String,
    y_label: &str,
    categories: &[String],
    groups: &[BarGroup],
    hi: f64,
) -> Result<(), String> {
    let root = SVGBackend::with_string(svg, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let n = categories.len();
    let mut chart = ChartBuilder::on(&root)
        .margin(12)
        .x_label_area_size(48)
        .y_label_area_size(58)
        .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), 0.0..hi.max(1e-9))
        .map_err(|e| e.to_string())?;
    let label = |x: &f64| {
        let i = x.round();
        if (x - i).abs() < 1e-6 && i >= 0.0 {
            categories.get(i as usize).cloned().unwrap_or_default()
        } else {
            String::new()
        }
    };
    chart
        .configure_mesh()
        .x_labels(n.min(40))
        .x_label_formatter(&label)
        .y_desc(y_label)
        .light_line_style(WHITE)
        .disable_x_mesh()
        .draw()
        .map_err(|e| e.to_string())?;
    let width = 0.8 / groups.len().max(1) as f64;
    for (g, group) in groups.iter().enumerate() {
        let color = group.color;
        let offset = -0.4 + width * g as f64;
        let bars = group.values.iter().enumerate().map(|(i, (v, _))| {
            let x = i as f64 + offset;
            Rectangle::new([(x + 0.05 * width, 0.0), (x + 0.95 * width, *v)], color.mix(0.8).filled())
        });
        chart
            .draw_series(bars)
            .map_err(|e| e.to_string())?
            .label(group.name.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 16, y + 5)], color.filled()));
        let whiskers = group.values.iter().enumerate().filter_map(|(i, (v, interval))| {
            interval.map(|(lo, hi)| {
                ErrorBar::new_vertical(i as f64 + offset + width / 2.0, lo, *v, hi, BLACK.stroke_width(1), 6)
            })
        });
        chart.draw_series(whiskers).map_err(|e| e.to_string())?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_is_an_svg_with_its_legend_and_an_empty_one_says_so() {
        let chart = Lines {
            x_label: "minutes".into(),
            y_label: "requests".into(),
            bands: vec![Band {
                name: "band".into(),
                points: vec![(0.0, -1.0, 1.0), (1.0, -0.5, 0.5)],
                color: COLORS[0],
            }],
            series: vec![Series {
                name: "main".into(),
                points: vec![(0.0, 0.0), (1.0, 0.2)],
                color: COLORS[1],
                dashed: false,
            }],
        };
        let svg = chart.svg();
        assert!(svg.starts_with("<svg") && svg.contains("main") && svg.contains("<polygon"), "{svg}");
        assert!(svg.contains("<circle"), "few points get markers: {svg}");
        let empty = Lines { x_label: "x".into(), y_label: "y".into(), bands: vec![], series: vec![] };
        assert!(empty.svg().contains("no data yet"));
        let bars = bars(
            "%",
            &["a".into(), "b".into()],
            &[BarGroup {
                name: "conversion".into(),
                color: COLORS[0],
                values: vec![(1.0, Some((0.5, 1.5))), (2.0, None)],
            }],
        );
        assert!(bars.contains("<rect") && bars.contains("conversion"), "{bars}");
    }
}
