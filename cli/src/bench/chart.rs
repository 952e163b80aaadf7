//! The SVG chart of `bench --out`: throughput and p99 latency against process count, one
//! line per target (the `chart` feature; without it the caller says it was not drawn).

use super::RunResult;
use std::path::Path;

/// Writes the chart, or explains why it is not drawn in this build.
#[cfg(feature = "chart")]
pub fn write_svg(path: &Path, results: &[RunResult]) -> Result<(), String> {
    use plotters::prelude::*;

    let mut targets: Vec<&'static str> = Vec::new();
    for r in results {
        if !targets.contains(&r.target) {
            targets.push(r.target);
        }
    }
    let max_procs = results.iter().map(|r| r.procs).max().unwrap_or(1) as f64;
    let root = SVGBackend::new(path, (1000, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let (left, right) = root.split_horizontally(500);
    type Metric = fn(&RunResult) -> f64;
    let panels: [(&DrawingArea<_, _>, &str, Metric); 2] = [
        (&left, "throughput (ops/s, log)", |r| r.ops_per_sec.max(1.0)),
        (&right, "p99 latency (ns, log)", |r| {
            (r.p99_ns as f64).max(1.0)
        }),
    ];
    for (area, title, value) in panels {
        let ys: Vec<f64> = results.iter().map(value).collect();
        let lo = ys.iter().cloned().fold(f64::INFINITY, f64::min).max(1.0) / 2.0;
        let hi = ys.iter().cloned().fold(1.0, f64::max) * 2.0;
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d(0.5f64..max_procs + 0.5, (lo..hi).log_scale())
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("processes")
            .draw()
            .map_err(|e| e.to_string())?;
        for (i, t) in targets.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let pts: Vec<(f64, f64)> = results
                .iter()
                .filter(|r| r.target == *t)
                .map(|r| (r.procs as f64, value(r)))
                .collect();
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                .map_err(|e| e.to_string())?
                .label(*t)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
            chart
                .draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))
                .map_err(|e| e.to_string())?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())?;
    }
    root.present().map_err(|e| e.to_string())
}

/// Whether this build can draw the chart.
pub const BUILT: bool = cfg!(feature = "chart");

/// Without the `chart` feature there is no SVG backend: nothing is drawn.
#[cfg(not(feature = "chart"))]
pub fn write_svg(_path: &Path, _results: &[RunResult]) -> Result<(), String> {
    Err("drawing bench.svg needs the `chart` feature of shmemcache-cli".into())
}
