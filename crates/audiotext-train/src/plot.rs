//! PNG plots of a run: `loss.png` (training and validation loss per epoch) and `metrics.png`
//! (validation retrieval metrics per epoch). Text is drawn with DejaVu Sans compiled into the
//! binary (the `dejavu` crate), so plotting needs no system fonts.

use std::path::Path;
use std::sync::Once;

use anyhow::{anyhow, Result};
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::run::EpochLog;

pub const FONT: &str = "sans-serif";
const SIZE: (u32, u32) = (900, 560);

pub fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The font is part of the binary; failing to parse it is a build defect.
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular());
    });
}

/// One line of a chart.
struct Series<'a> {
    label: &'a str,
    color: RGBColor,
    points: Vec<(i32, f64)>,
}

fn chart(
    path: &Path,
    title: &str,
    y_label: &str,
    series: &[Series],
    y_from_zero: bool,
) -> Result<()> {
    register_font();
    let points: Vec<&(i32, f64)> = series.iter().flat_map(|s| s.points.iter()).collect();
    if points.is_empty() {
        return Ok(());
    }
    let x_max = points.iter().map(|p| p.0).max().unwrap_or(1).max(1);
    let mut y_min = points.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let mut y_max = points.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
    if y_from_zero {
        y_min = y_min.min(0.0);
    }
    if (y_max - y_min).abs() < 1e-9 {
        y_max = y_min + 1.0;
    }
    let pad = (y_max - y_min) * 0.05;
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    let err = |e: &dyn std::fmt::Display| anyhow!("{}: {e}", path.display());
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut c = ChartBuilder::on(&root)
        .caption(title, (FONT, 22))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(
            0i32..x_max + 1,
            (y_min - pad).max(if y_from_zero { 0.0 } else { f64::MIN })..y_max + pad,
        )
        .map_err(|e| err(&e))?;
    c.configure_mesh()
        .x_desc("epoch")
        .y_desc(y_label)
        .label_style((FONT, 15))
        .axis_desc_style((FONT, 17))
        .x_labels((x_max + 2).min(12) as usize)
        .x_label_formatter(&|x| format!("{x}"))
        .draw()
        .map_err(|e| err(&e))?;
    for s in series {
        if s.points.is_empty() {
            continue;
        }
        let color = s.color;
        c.draw_series(LineSeries::new(
            s.points.iter().copied(),
            color.stroke_width(2),
        ))
        .map_err(|e| err(&e))?
        .label(s.label)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        c.draw_series(s.points.iter().map(|&p| Circle::new(p, 3, color.filled())))
            .map_err(|e| err(&e))?;
    }
    c.configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((FONT, 15))
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

fn series<'a>(
    label: &'a str,
    color: RGBColor,
    logs: &[EpochLog],
    f: impl Fn(&EpochLog) -> Option<f64>,
) -> Series<'a> {
    Series {
        label,
        color,
        points: logs
            .iter()
            .filter_map(|l| f(l).map(|v| (l.epoch as i32, v)))
            .collect(),
    }
}

/// Writes `loss.png` and `metrics.png` into the run folder.
pub fn write_plots(run_dir: &Path, logs: &[EpochLog]) -> Result<()> {
    let blue = RGBColor(31, 119, 180);
    let orange = RGBColor(255, 127, 14);
    let green = RGBColor(44, 160, 44);
    let red = RGBColor(214, 39, 40);
    let purple = RGBColor(148, 103, 189);
    let grey = RGBColor(110, 110, 110);
    chart(
        &run_dir.join("loss.png"),
        "Training and validation loss (fit --loss)",
        "loss",
        &[
            series("train", blue, logs, |l| Some(l.train_loss)),
            series("validation", orange, logs, |l| l.val_loss),
        ],
        true,
    )?;
    chart(
        &run_dir.join("metrics.png"),
        "Validation retrieval",
        "score",
        &[
            series("text-to-audio R@1", blue, logs, |l| l.t2a_r1),
            series("text-to-audio R@5", orange, logs, |l| l.t2a_r5),
            series("text-to-audio R@10", green, logs, |l| l.t2a_r10),
            series("text-to-audio mAP@10", red, logs, |l| l.t2a_map10),
            series("audio-to-text mAP@10", purple, logs, |l| l.a2t_map10),
            series("class P@10", grey, logs, |l| l.class_p10),
        ],
        true,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_pngs_with_text() {
        let dir = std::env::temp_dir().join(format!("audiotext-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let logs: Vec<EpochLog> = (1..=3)
            .map(|e| EpochLog {
                epoch: e,
                train_loss: 3.0 / e as f64,
                val_loss: Some(3.2 / e as f64),
                t2a_r1: Some(0.1 * e as f64),
                t2a_map10: Some(0.15 * e as f64),
                ..Default::default()
            })
            .collect();
        write_plots(&dir, &logs).unwrap();
        for name in ["loss.png", "metrics.png"] {
            let bytes = std::fs::read(dir.join(name)).unwrap();
            assert_eq!(&bytes[1..4], b"PNG", "{name} is a PNG");
            assert!(
                bytes.len() > 5_000,
                "{name} has content ({} bytes)",
                bytes.len()
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
