//! `--plot FILE.png`: latency against percentile, one curve per path, the percentile
//! axis in "nines" (90%, 99%, 99.9%...) so that the tail gets room. Text is drawn with
//! ab_glyph from DejaVu Sans (Debian package fonts-dejavu-core), read at run time.

use std::path::Path;

use anyhow::{bail, Context};
use plotters::prelude::*;

use crate::report::Report;

/// Where Debian's fonts-dejavu-core puts the font.
const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

const COLOURS: [RGBColor; 5] = [BLACK, BLUE, RED, GREEN, MAGENTA];

/// Draws the report's curves into a PNG.
pub fn draw(report: &Report, file: &Path) -> anyhow::Result<()> {
    let font = std::fs::read(FONT).with_context(|| {
        format!(
            "--plot needs {FONT}: apt-get install fonts-dejavu-core (scripts/install-test-deps.sh)"
        )
    })?;
    // plotters keeps registered fonts for the life of the process.
    let font: &'static [u8] = Box::leak(font.into_boxed_slice());
    if plotters::style::register_font("sans-serif", FontStyle::Normal, font).is_err() {
        bail!("{FONT} is not a font ab_glyph can read");
    }
    let curves: Vec<(&str, Vec<(f64, f64)>)> = report
        .rows
        .iter()
        .filter(|r| !r.summary.curve.is_empty())
        .map(|r| (r.path.as_str(), nines(&r.summary.curve)))
        .collect();
    if curves.is_empty() {
        bail!("nothing to plot: no latencies were measured");
    }
    let all = curves.iter().flat_map(|(_, c)| c.iter().map(|p| p.1));
    let (lo, hi) = all.fold((f64::MAX, 0f64), |(lo, hi), y| (lo.min(y), hi.max(y)));
    let (lo, hi) = ((lo * 0.8).max(0.001), (hi * 1.25).max(lo * 2.0).max(0.002));

    let root = BitMapBackend::new(file, (1000, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let beside = if report.rows.iter().any(|r| r.alone.is_some()) {
        " beside the downloads"
    } else {
        ""
    };
    let title = format!(
        "{}: {} latency{beside} by percentile",
        report.workload, report.unit
    );
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 24))
        .margin(15)
        .margin_right(40)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..4f64, (lo..hi).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency, ms (log)")
        .y_labels(12)
        .x_labels(5)
        .x_label_formatter(&|x| format!("{}%", trim(100.0 * (1.0 - 10f64.powf(-x)))))
        .y_label_formatter(&|y| trim(*y))
        .draw()?;
    for (i, (name, points)) in curves.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                colour.stroke_width(2),
            ))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present().context("writing the plot")?;
    Ok(())
}

/// (percentile, ms) to (nines, ms): 90% is 1, 99% is 2.
fn nines(curve: &[(f64, f64)]) -> Vec<(f64, f64)> {
    curve
        .iter()
        .map(|&(p, ms)| (-(1.0 - p / 100.0).max(1e-4).log10(), ms.max(0.001)))
        .collect()
}

fn trim(v: f64) -> String {
    let text = format!("{v:.3}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}
