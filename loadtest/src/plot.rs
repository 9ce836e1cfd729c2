//! SVG plots of finished reports: delivery latency percentiles over time, and the latency CDF, one
//! colour family per report (so `compare` overlays both). SVG only: no fonts or system libraries.

use std::fmt;
use std::path::Path;

use plotters::prelude::*;

use crate::report::Report;

#[derive(Debug)]
pub struct PlotError(String);

impl fmt::Display for PlotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot draw the plot: {}", self.0)
    }
}

impl std::error::Error for PlotError {}

fn err(e: impl fmt::Display) -> PlotError {
    PlotError(e.to_string())
}

/// Colours per report: (p50, p99, max).
const PALETTE: [[RGBColor; 3]; 3] = [
    [RGBColor(31, 119, 180), RGBColor(214, 39, 40), RGBColor(120, 120, 120)],
    [RGBColor(44, 160, 44), RGBColor(255, 127, 14), RGBColor(148, 103, 189)],
    [RGBColor(23, 190, 207), RGBColor(188, 189, 34), RGBColor(140, 86, 75)],
];

fn ms(us: u64) -> f64 {
    (us.max(1)) as f64 / 1000.0
}

/// Draws both charts for `reports` into an SVG file at `path`.
pub fn write_svg(path: &Path, reports: &[&Report]) -> Result<(), PlotError> {
    let root = SVGBackend::new(path, (1100, 900)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let (top, bottom) = root.split_vertically(450);
    let title = reports.iter().map(|r| format!("{} vs {}", r.scenario.name(), r.label)).collect::<Vec<_>>().join(" | ");

    // Latency percentiles over time.
    let t_max = reports.iter().flat_map(|r| r.timeline.iter().map(|p| p.t_s)).fold(1.0f64, f64::max) + 0.5;
    let y_max = reports.iter().flat_map(|r| r.timeline.iter().map(|p| ms(p.max_us))).fold(1.0f64, f64::max) * 1.5;
    let y_min =
        reports.iter().flat_map(|r| r.timeline.iter().map(|p| ms(p.p50_us))).fold(y_max, f64::min).max(0.001) / 1.5;
    let mut chart = ChartBuilder::on(&top)
        .caption(format!("{title}: latency over time (by send time)"), ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..t_max, (y_min..y_max).log_scale())
        .map_err(err)?;
    chart.configure_mesh().x_desc("seconds into the measured phase").y_desc("latency (ms)").draw().map_err(err)?;
    for (i, r) in reports.iter().enumerate() {
        let colours = PALETTE[i % PALETTE.len()];
        type Pick = fn(&crate::report::TimePoint) -> u64;
        let series: [(&str, Pick, RGBColor); 3] =
            [("p50", |p| p.p50_us, colours[0]), ("p99", |p| p.p99_us, colours[1]), ("max", |p| p.max_us, colours[2])];
        for (name, pick, colour) in series {
            let pts: Vec<(f64, f64)> = r.timeline.iter().map(|p| (p.t_s, ms(pick(p)))).collect();
            chart
                .draw_series(LineSeries::new(pts, colour.stroke_width(2)))
                .map_err(err)?
                .label(format!("{} {name}", r.label))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2)));
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(err)?;

    // CDF of delivery latency.
    let x_max = reports.iter().flat_map(|r| r.cdf.iter().map(|&(us, _)| ms(us))).fold(1.0f64, f64::max) * 1.2;
    let x_min =
        reports.iter().flat_map(|r| r.cdf.first().map(|&(us, _)| ms(us))).fold(x_max, f64::min).max(0.001) / 1.2;
    let mut cdf = ChartBuilder::on(&bottom)
        .caption("delivery latency CDF", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d((x_min..x_max).log_scale(), 0.0..1.0)
        .map_err(err)?;
    cdf.configure_mesh().x_desc("latency (ms)").y_desc("fraction of deliveries").draw().map_err(err)?;
    for (i, r) in reports.iter().enumerate() {
        let colour = PALETTE[i % PALETTE.len()][0];
        let pts: Vec<(f64, f64)> = r.cdf.iter().map(|&(us, f)| (ms(us), f)).collect();
        cdf.draw_series(LineSeries::new(pts, colour.stroke_width(2)))
            .map_err(err)?
            .label(r.label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2)));
    }
    cdf.configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}
