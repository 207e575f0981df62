//! `audiotext-train report`: the comparison table of a cross-validated grid of runs.
//!
//! Reads `RUNS/<group>/<config>/fold<k>/`, where each fold folder is either a run folder of
//! `fit` (its metrics are those of its LAST epoch, so no epoch is picked on the fold that
//! measures it) or, for an ensemble, a folder holding `eval.json` from `eval --json` on the
//! fold's validation clips. Writes a Markdown table with the mean and standard deviation over
//! folds of text-to-audio R@1, R@5, R@10 and mAP@10, the training time per epoch (wall clock,
//! and CPU time when the fold has the `cpu.txt` that `scripts/compare.sh` writes), the
//! parameter count and the size of the exported `audio.onnx`, plus one bar chart of mAP@10 per
//! group.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use plotters::prelude::*;
use serde_json::Value;

use crate::audio_graph::build_audio_onnx;
use crate::fit::read_metrics;
use crate::run::{pad_value, RunConfig};

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Folder of `<group>/<config>/fold<k>/` run (or ensemble evaluation) folders.
    #[arg(long, value_name = "DIR")]
    pub runs: PathBuf,
    /// Markdown file to write (its plots go next to it).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

/// One configuration's results over its folds.
#[derive(Debug, Clone)]
pub struct Row {
    pub group: String,
    pub name: String,
    pub description: String,
    /// Per fold: `[r1, r5, r10, map10]`.
    pub folds: Vec<[f64; 4]>,
    pub seconds_per_epoch: Option<f64>,
    /// CPU seconds (user + system, all threads) per epoch, from `cpu.txt`: unlike wall time,
    /// it does not count the time a shared host gave the cores to other guests.
    pub cpu_seconds_per_epoch: Option<f64>,
    pub epochs: Option<usize>,
    pub parameters: Option<usize>,
    pub onnx_bytes: Option<usize>,
}

impl Row {
    pub fn mean(&self, k: usize) -> f64 {
        self.folds.iter().map(|f| f[k]).sum::<f64>() / self.folds.len() as f64
    }

    pub fn std(&self, k: usize) -> f64 {
        let n = self.folds.len();
        if n < 2 {
            return 0.0;
        }
        let m = self.mean(k);
        (self.folds.iter().map(|f| (f[k] - m).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
    }
}

pub fn run(args: ReportArgs) -> Result<()> {
    let rows = collect(&args.runs)?;
    if rows.is_empty() {
        bail!(
            "no results under {} (expected <group>/<config>/fold<k>/ folders)",
            args.runs.display()
        );
    }
    let dir = args.out.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let stem = args
        .out
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("comparison")
        .to_string();
    let mut groups: BTreeMap<&str, Vec<&Row>> = BTreeMap::new();
    for row in &rows {
        groups.entry(&row.group).or_default().push(row);
    }
    let mut plots = Vec::new();
    for (group, rows) in &groups {
        let file = format!("{stem}-{group}.png");
        bar_chart(&dir.join(&file), group, rows)?;
        plots.push((group.to_string(), file));
    }
    std::fs::write(&args.out, markdown(&rows, &plots))
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    println!(
        "wrote {} ({} configurations)",
        args.out.display(),
        rows.len()
    );
    Ok(())
}

/// Reads every `<group>/<config>/fold<k>` folder.
pub fn collect(root: &Path) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for group in sorted_dirs(root)? {
        for config in sorted_dirs(&group)? {
            let folds: Vec<PathBuf> = sorted_dirs(&config)?
                .into_iter()
                .filter(|d| {
                    d.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("fold"))
                })
                .collect();
            if folds.is_empty() {
                continue;
            }
            rows.push(read_row(&group, &config, &folds)?);
        }
    }
    Ok(rows)
}

fn sorted_dirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    out.sort();
    Ok(out)
}

fn name_of(p: &Path) -> String {
    p.file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("?")
        .to_string()
}

fn read_row(group: &Path, config_dir: &Path, folds: &[PathBuf]) -> Result<Row> {
    let mut row = Row {
        group: name_of(group),
        name: name_of(config_dir),
        description: String::new(),
        folds: Vec::new(),
        seconds_per_epoch: None,
        cpu_seconds_per_epoch: None,
        epochs: None,
        parameters: None,
        onnx_bytes: None,
    };
    let mut seconds = Vec::new();
    let (mut cpu_seconds, mut cpu_epochs) = (0.0, 0usize);
    for fold in folds {
        let eval = fold.join("eval.json");
        if eval.is_file() {
            let v: Value = serde_json::from_str(&std::fs::read_to_string(&eval)?)
                .with_context(|| format!("{} is not JSON", eval.display()))?;
            let t = &v["text_to_audio"];
            let get = |k: &str| {
                t[k].as_f64()
                    .ok_or_else(|| anyhow!("{}: no text_to_audio.{k}", eval.display()))
            };
            row.folds
                .push([get("r1")?, get("r5")?, get("r10")?, get("map10")?]);
            if row.description.is_empty() {
                row.description = v["source"].as_str().unwrap_or("").to_string();
            }
            // Size and parameters of the exported ensemble graph (BatchNorm folded).
            if let Ok(bytes) = std::fs::read(fold.join("bundle").join("audio.onnx")) {
                row.onnx_bytes = Some(bytes.len());
                if let Ok(model) = audiotext_onnx::ModelProto::from_bytes(&bytes) {
                    let n: u64 = model
                        .graph
                        .iter()
                        .flat_map(|g| g.initializer.iter())
                        .map(|t| t.element_count())
                        .sum();
                    row.parameters = Some(n as usize);
                }
            }
            let members = fold.join("members.json");
            if let Ok(text) = std::fs::read_to_string(&members) {
                if let Ok(Value::Object(m)) = serde_json::from_str::<Value>(&text) {
                    row.parameters = m
                        .get("parameters")
                        .and_then(|p| p.as_u64())
                        .map(|p| p as usize);
                    row.onnx_bytes = m
                        .get("onnx_bytes")
                        .and_then(|p| p.as_u64())
                        .map(|p| p as usize);
                    row.description = m
                        .get("description")
                        .and_then(|d| d.as_str())
                        .unwrap_or(&row.description)
                        .to_string();
                }
            }
            continue;
        }
        let config = RunConfig::read(fold)?;
        let logs = read_metrics(fold)?;
        let last = logs
            .last()
            .with_context(|| format!("{} has no completed epoch", fold.display()))?;
        let m = |v: Option<f64>, k: &str| {
            v.ok_or_else(|| anyhow!("{}: epoch {} has no {k}", fold.display(), last.epoch))
        };
        row.folds.push([
            m(last.t2a_r1, "t2a_r1")?,
            m(last.t2a_r5, "t2a_r5")?,
            m(last.t2a_r10, "t2a_r10")?,
            m(last.t2a_map10, "t2a_map10")?,
        ]);
        seconds.extend(logs.iter().map(|l| l.seconds));
        if let Some((s, e)) = read_cpu_times(fold)? {
            cpu_seconds += s;
            cpu_epochs += e;
        }
        row.epochs = Some(last.epoch);
        if row.parameters.is_none() {
            let enc = &config.model.encoder;
            let model = enc.init(&burn::prelude::Device::flex());
            row.parameters = Some(crate::model::trainable_parameters(&model));
            row.onnx_bytes = Some(
                build_audio_onnx(&model, enc, pad_value(&config.front_end))
                    .to_bytes()
                    .len(),
            );
            row.description = format!(
                "{}; {}; loss {}; {} epochs, batch {}",
                enc.architecture.describe(&enc.channels),
                enc.pooling.describe(),
                config.train.loss,
                config.train.epochs,
                config.train.batch_size
            );
        }
    }
    if !seconds.is_empty() {
        row.seconds_per_epoch = Some(seconds.iter().sum::<f64>() / seconds.len() as f64);
    }
    if cpu_epochs > 0 {
        row.cpu_seconds_per_epoch = Some(cpu_seconds / cpu_epochs as f64);
    }
    Ok(row)
}

/// Sums a fold's `cpu.txt` (one line per `fit` invocation: `cpu_seconds wall_seconds
/// epochs_before epochs_after`) into (CPU seconds, epochs trained); None without the file.
/// The CPU time includes start-up and the per-epoch validation, as the wall time does.
fn read_cpu_times(fold: &Path) -> Result<Option<(f64, usize)>> {
    let path = fold.join("cpu.txt");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(None);
    };
    let (mut seconds, mut epochs) = (0.0, 0);
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let parsed = match line.split_whitespace().collect::<Vec<_>>()[..] {
            [cpu, _wall, before, after] => cpu
                .parse::<f64>()
                .ok()
                .zip(before.parse::<usize>().ok())
                .zip(after.parse::<usize>().ok())
                .map(|((c, b), a)| (c, b, a)),
            _ => None,
        };
        let (cpu, before, after) = parsed.with_context(|| {
            format!(
                "{}: expected `cpu_seconds wall_seconds epochs_before epochs_after`, got {line:?}",
                path.display()
            )
        })?;
        seconds += cpu;
        epochs += after.saturating_sub(before);
    }
    Ok(Some((seconds, epochs)))
}

fn markdown(rows: &[Row], plots: &[(String, String)]) -> String {
    let mut s = String::new();
    let folds = rows.iter().map(|r| r.folds.len()).max().unwrap_or(0);
    s.push_str(
        "| group | configuration | R@1 | R@5 | R@10 | mAP@10 | s/epoch | CPU s/epoch | parameters | audio.onnx | folds |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let best = rows
        .iter()
        .map(|r| r.mean(3))
        .fold(f64::NEG_INFINITY, f64::max);
    for r in rows {
        let cell = |k: usize| format!("{:.3} ± {:.3}", r.mean(k), r.std(k));
        let map = if (r.mean(3) - best).abs() < 1e-12 {
            format!("**{}**", cell(3))
        } else {
            cell(3)
        };
        s.push_str(&format!(
            "| {} | `{}` | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.group,
            r.name,
            cell(0),
            cell(1),
            cell(2),
            map,
            r.seconds_per_epoch
                .map(|v| format!("{v:.0}"))
                .unwrap_or_else(|| "–".into()),
            r.cpu_seconds_per_epoch
                .map(|v| format!("{v:.0}"))
                .unwrap_or_else(|| "–".into()),
            r.parameters
                .map(|p| format!("{:.2} M", p as f64 / 1e6))
                .unwrap_or_else(|| "–".into()),
            r.onnx_bytes
                .map(|b| format!("{:.2} MB", b as f64 / 1e6))
                .unwrap_or_else(|| "–".into()),
            r.folds.len(),
        ));
    }
    s.push_str(&format!(
        "\nMean ± sample standard deviation over {folds} folds; metrics of the last epoch of each \
         run (no epoch chosen on the fold that scores it). `s/epoch` is wall-clock time per epoch \
         (training and validation); `CPU s/epoch` is the CPU time of all threads per epoch, \
         start-up included, which does not count time a shared host gave to other guests.\n\n"
    ));
    for r in rows {
        s.push_str(&format!("- `{}`: {}\n", r.name, r.description));
    }
    s.push('\n');
    for (group, file) in plots {
        s.push_str(&format!("![mAP@10, {group}]({file})\n\n"));
    }
    s
}

/// Bars of mean mAP@10 per configuration with a dot per fold.
fn bar_chart(path: &Path, group: &str, rows: &[&Row]) -> Result<()> {
    crate::plot::register_font();
    let err = |e: &dyn std::fmt::Display| anyhow!("{}: {e}", path.display());
    let root = BitMapBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let y_max = rows
        .iter()
        .flat_map(|r| r.folds.iter().map(|f| f[3]))
        .fold(0.0f64, f64::max)
        * 1.15
        + 1e-3;
    let n = rows.len();
    let labels: Vec<String> = rows.iter().map(|r| r.name.clone()).collect();
    let mut c = ChartBuilder::on(&root)
        .caption(
            format!("text-to-audio mAP@10 by {group}"),
            (crate::plot::FONT, 22),
        )
        .margin(16)
        .x_label_area_size(70)
        .y_label_area_size(64)
        .build_cartesian_2d(-0.5..n as f64 - 0.5, 0.0..y_max)
        .map_err(|e| err(&e))?;
    c.configure_mesh()
        .disable_x_mesh()
        .x_labels(n)
        .y_desc("mAP@10")
        .x_label_formatter(&|v| {
            let i = v.round();
            if (v - i).abs() < 1e-6 && i >= 0.0 {
                labels.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .label_style((crate::plot::FONT, 14))
        .axis_desc_style((crate::plot::FONT, 16))
        .draw()
        .map_err(|e| err(&e))?;
    let color = RGBColor(52, 101, 164);
    c.draw_series(rows.iter().enumerate().map(|(i, r)| {
        let x = i as f64;
        Rectangle::new(
            [(x - 0.35, 0.0), (x + 0.35, r.mean(3))],
            color.mix(0.6).filled(),
        )
    }))
    .map_err(|e| err(&e))?;
    c.draw_series(rows.iter().enumerate().flat_map(|(i, r)| {
        r.folds
            .iter()
            .map(move |f| Circle::new((i as f64, f[3]), 4, BLACK.filled()))
    }))
    .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_and_sample_std_over_folds() {
        let row = Row {
            group: "g".into(),
            name: "n".into(),
            description: String::new(),
            folds: vec![[0.1, 0.2, 0.3, 0.2], [0.3, 0.4, 0.5, 0.4]],
            seconds_per_epoch: Some(2.0),
            cpu_seconds_per_epoch: Some(3.0),
            epochs: Some(1),
            parameters: Some(10),
            onnx_bytes: Some(100),
        };
        assert!((row.mean(3) - 0.3).abs() < 1e-12);
        // sqrt(((0.2 - 0.3)^2 + (0.4 - 0.3)^2) / 1)
        assert!((row.std(3) - 0.141_421_356).abs() < 1e-8);
        let md = markdown(&[row], &[("g".into(), "x-g.png".into())]);
        assert!(md.contains("**0.300 ± 0.141**"), "{md}");
        assert!(md.contains("![mAP@10, g](x-g.png)"));
        assert!(md.contains("| 2 | 3 | 0.00 M |"), "{md}");
    }

    #[test]
    fn cpu_times_add_up_over_a_resumed_run() {
        let dir = crate::testing::TempDir::new("cpu-times");
        assert!(read_cpu_times(dir.path()).unwrap().is_none());
        // Cut off after epoch 4, resumed to epoch 10.
        std::fs::write(dir.path().join("cpu.txt"), "40.5 60 0 4\n61.5 90 4 10\n").unwrap();
        let (seconds, epochs) = read_cpu_times(dir.path()).unwrap().unwrap();
        assert!((seconds - 102.0).abs() < 1e-9);
        assert_eq!(epochs, 10);
        std::fs::write(dir.path().join("cpu.txt"), "40.5 60 0\n").unwrap();
        let err = read_cpu_times(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("cpu.txt") && err.contains("epochs_after"),
            "{err}"
        );
    }
}
