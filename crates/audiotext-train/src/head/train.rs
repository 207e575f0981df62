//! The head's training loop on cached backbone outputs, and its weights file.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use burn::module::Param;
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::prelude::*;

use super::frozen::Item;
use super::validation::{validate, Validation};
use super::HEAD_FILE;
use crate::fit::{lr_at, EpochLog};
use crate::model::{l2_normalize, to_vec, Contrastive};
use crate::run::{CheckpointState, RunConfig};
use crate::split::SplitMix64;

/// A training row: an item (or several versions of it, one drawn per step) with its caption
/// embeddings (one drawn per step) and its contrastive key.
pub(super) struct Row<'a> {
    pub(super) items: Vec<&'a Item>,
    pub(super) captions: Vec<Vec<f32>>,
    pub(super) key: u64,
}

/// How a step draws its rows beside the training clips.
pub(super) struct Draws<'a> {
    pub(super) mix_rows: &'a [Row<'a>],
    pub(super) background_rows: &'a [Row<'a>],
    pub(super) background_prob: f64,
    pub(super) captions_per_step: usize,
    /// Per training row, its chance of being drawn (None: every row once an epoch).
    pub(super) weights: Option<Vec<f64>>,
}

/// Per training row, the chance of drawing it so that each source's share of an epoch is
/// proportional to its clip count raised to `power`; None when that is every row alike.
pub(super) fn source_weights(sources: &[Option<String>], power: f64) -> Option<Vec<f64>> {
    let mut counts: HashMap<Option<&str>, usize> = HashMap::new();
    for s in sources {
        *counts.entry(s.as_deref()).or_default() += 1;
    }
    if (power - 1.0).abs() < 1e-12 || counts.len() < 2 {
        return None;
    }
    // A row's weight is count^power / count: the source's share spread over its rows.
    let weights: Vec<f64> = sources
        .iter()
        .map(|s| (counts[&s.as_deref()] as f64).powf(power - 1.0))
        .collect();
    let total: f64 = weights.iter().sum();
    Some(weights.into_iter().map(|w| w / total).collect())
}

/// `n` draws with replacement from `weights` (summing to 1).
fn weighted_order(weights: &[f64], n: usize, rng: &mut SplitMix64) -> Vec<usize> {
    let mut cumulative = Vec::with_capacity(weights.len());
    let mut sum = 0.0;
    for w in weights {
        sum += w;
        cumulative.push(sum);
    }
    (0..n)
        .map(|_| {
            let x = rng.next_f64() * sum;
            cumulative
                .partition_point(|&c| c <= x)
                .min(weights.len() - 1)
        })
        .collect()
}

/// The normalised mean of up to `k` distinct captions of a row, drawn by `rng`.
fn caption_target(captions: &[Vec<f32>], k: usize, rng: &mut SplitMix64) -> Vec<f32> {
    if k <= 1 || captions.len() == 1 {
        return captions[rng.below(captions.len())].clone();
    }
    let mut picks: Vec<usize> = (0..captions.len()).collect();
    rng.shuffle(&mut picks);
    let mut mean = vec![0f32; captions[0].len()];
    for &p in picks.iter().take(k) {
        for (m, v) in mean.iter_mut().zip(&captions[p]) {
            *m += v;
        }
    }
    let norm = mean
        .iter()
        .map(|v| v * v)
        .sum::<f32>()
        .sqrt()
        .max(f32::MIN_POSITIVE);
    mean.iter().map(|v| v / norm).collect()
}

/// Items `[windows x dim]` stacked, and the `[items x windows]` matrix that averages each
/// item's windows.
fn stack(items: &[&Item], dim: usize, device: &Device) -> (Tensor<2>, Tensor<2>) {
    let total: usize = items.iter().map(|i| i.count).sum();
    let mut values = Vec::with_capacity(total * dim);
    let mut mean = vec![0f32; items.len() * total];
    let mut w = 0;
    for (r, item) in items.iter().enumerate() {
        values.extend_from_slice(&item.windows);
        for k in 0..item.count {
            mean[r * total + w + k] = 1.0 / item.count as f32;
        }
        w += item.count;
    }
    (
        Tensor::from_data(TensorData::new(values, [total, dim]), device),
        Tensor::from_data(TensorData::new(mean, [items.len(), total]), device),
    )
}

/// Each item's clip embedding, one vector per item (see [`embed_items`]).
pub(super) fn clip_embeddings(model: &Contrastive, items: &[Item], dim: usize) -> Vec<Vec<f32>> {
    let items: Vec<&Item> = items.iter().collect();
    to_vec(embed_items(model, &items, dim, &Device::flex()))
        .chunks(model.audio.proj.weight.val().dims()[1])
        .map(<[f32]>::to_vec)
        .collect()
}

/// Clip embeddings: the head on each window, the mean, L2-normalised (as `audio_embed`).
fn embed_items(model: &Contrastive, items: &[&Item], dim: usize, device: &Device) -> Tensor<2> {
    let (windows, mean) = stack(items, dim, device);
    l2_normalize(mean.matmul(model.audio.head(windows)))
}

/// The optimiser's place in the schedule, carried from epoch to epoch.
struct Schedule {
    step: usize,
    total: usize,
    warmup: usize,
}

/// Trains the head of `config` for its epochs, validating as `validate_every` asks and writing
/// each epoch's line to the run's metrics file; saves the head and the last checkpoint's state.
pub(super) fn train_head(
    config: &RunConfig,
    rows: &[Row],
    draws: &Draws,
    validation: &Validation,
    run_dir: &Path,
) -> Result<(Vec<EpochLog>, Contrastive)> {
    let t = &config.train;
    let base = Device::flex();
    let ad = base.clone().autodiff();
    base.seed(t.seed);
    let mut model = config.model.init(&ad);
    let mut optim = AdamWConfig::new()
        .with_weight_decay(t.weight_decay as f32)
        .init();
    let dim = config.model.encoder.pooled_dim();
    let steps = rows.len().div_ceil(t.batch_size);
    let mut schedule = Schedule {
        step: 0,
        total: steps * t.epochs,
        warmup: (t.warmup_epochs * steps as f64).round() as usize,
    };
    let mut logs = Vec::new();
    let metrics_path = run_dir.join(crate::run::METRICS_FILE);
    let _ = std::fs::remove_file(&metrics_path);
    for epoch in 1..=t.epochs {
        let started = Instant::now();
        base.seed(t.seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9));
        let (loss_sum, done, lr);
        (model, loss_sum, done, lr) = train_epoch(
            model,
            &mut optim,
            config,
            rows,
            draws,
            epoch,
            &mut schedule,
            &ad,
        )?;
        let mut log = EpochLog {
            epoch,
            steps: done,
            train_loss: loss_sum / done.max(1) as f64,
            temperature: model.temperature(config.model.temperature),
            lr,
            ..Default::default()
        };
        let train_seconds = started.elapsed().as_secs_f64();
        log.seconds_per_step = train_seconds / done.max(1) as f64;
        let validate_now = epoch % t.validate_every.max(1) == 0 || epoch == t.epochs;
        if validate_now && !validation.items.is_empty() {
            let v = Instant::now();
            validate(&model.valid(), validation, dim, &mut log);
            log.validation_seconds = v.elapsed().as_secs_f64();
        }
        log.seconds = started.elapsed().as_secs_f64();
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&metrics_path)
            .with_context(|| format!("cannot write {}", metrics_path.display()))?;
        writeln!(file, "{}", serde_json::to_string(&log)?)?;
        println!("{}", epoch_line(&log, t.epochs));
        logs.push(log);
    }
    save_head(&model.valid(), &run_dir.join(HEAD_FILE))?;
    write_last_checkpoint(run_dir, t.epochs, schedule.step)?;
    if let Err(e) = crate::plot::write_plots(run_dir, &logs) {
        eprintln!("warning: cannot draw the plots: {e:#}");
    }
    Ok((logs, model.valid()))
}

/// `fit-head --ensemble K`: K heads trained apart, each from its own seed (the run's seed, then
/// the next ones), in `heads/<k>/` of the run, then joined into one head (see [`join_heads`])
/// that the run keeps, validated as the last line of its metrics. One head is trained as it is.
pub(super) fn train_heads(
    config: &RunConfig,
    rows: &[Row],
    draws: &Draws,
    validation: &Validation,
    run_dir: &Path,
) -> Result<(Vec<EpochLog>, Contrastive)> {
    let members = config.head.as_ref().map_or(1, |h| h.sampling.ensemble);
    if members <= 1 {
        return train_head(config, rows, draws, validation, run_dir);
    }
    let mut member = config.clone();
    member.model.encoder.fc_dim = config.model.encoder.fc_dim / members;
    let (mut heads, mut last_logs) = (Vec::new(), Vec::new());
    for k in 0..members {
        member.train.seed = config.train.seed.wrapping_add(k as u64);
        println!("head {} of {members} (seed {})", k + 1, member.train.seed);
        let dir = run_dir.join("heads").join(k.to_string());
        std::fs::create_dir_all(&dir)?;
        let (logs, head) = train_head(&member, rows, draws, validation, &dir)?;
        // The joined head holds every member's weights exactly: their own files would be copies.
        std::fs::remove_file(dir.join(HEAD_FILE))?;
        if k == 0 {
            if let Err(e) = crate::plot::write_plots(run_dir, &logs) {
                eprintln!("warning: cannot draw the plots: {e:#}");
            }
        }
        last_logs.push(logs.last().cloned().unwrap_or_default());
        heads.push(head);
    }
    let joined = join_heads(&heads);
    let t = &config.train;
    let mut log = EpochLog {
        epoch: t.epochs,
        steps: last_logs.iter().map(|l| l.steps).sum(),
        train_loss: last_logs.iter().map(|l| l.train_loss).sum::<f64>() / members as f64,
        temperature: joined.temperature(config.model.temperature),
        lr: last_logs[0].lr,
        ..Default::default()
    };
    if !validation.items.is_empty() {
        validate(
            &joined,
            validation,
            config.model.encoder.pooled_dim(),
            &mut log,
        );
    }
    let metrics = run_dir.join(crate::run::METRICS_FILE);
    std::fs::write(&metrics, serde_json::to_string(&log)? + "\n")
        .with_context(|| format!("cannot write {}", metrics.display()))?;
    println!("joined {members} heads: {}", epoch_line(&log, t.epochs));
    save_head(&joined, &run_dir.join(HEAD_FILE))?;
    write_last_checkpoint(run_dir, t.epochs, last_logs[0].steps * t.epochs)?;
    Ok((vec![log], joined))
}

/// `checkpoints/last.json`: the head file holds the last epoch's weights (`export --checkpoint last`).
fn write_last_checkpoint(run_dir: &Path, epochs: usize, step: usize) -> Result<()> {
    let state = CheckpointState {
        epoch: epochs,
        step,
        best_epoch: None,
        best_map10: None,
    };
    let dir = run_dir.join(crate::run::CHECKPOINT_DIR);
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("last.json"),
        serde_json::to_string_pretty(&state)? + "\n",
    )?;
    Ok(())
}

/// Heads of one shape joined into one whose output, before the L2 norm, is the mean of theirs:
/// the hidden layers side by side (their `fc` rows stacked), and `proj` taking each hidden
/// layer's share divided by the count. ReLU acts unit by unit, so the join is exact.
pub(super) fn join_heads(heads: &[Contrastive]) -> Contrastive {
    let count = heads.len() as f32;
    let mut joined = heads[0].clone();
    let fc = &mut joined.audio.fc;
    fc.weight = Param::from_tensor(Tensor::cat(
        heads.iter().map(|h| h.audio.fc.weight.val()).collect(),
        1,
    ));
    fc.bias = heads[0].audio.fc.bias.as_ref().map(|_| {
        Param::from_tensor(Tensor::cat(
            heads
                .iter()
                .filter_map(|h| h.audio.fc.bias.as_ref().map(|b| b.val()))
                .collect(),
            0,
        ))
    });
    let proj = &mut joined.audio.proj;
    proj.weight = Param::from_tensor(
        Tensor::cat(heads.iter().map(|h| h.audio.proj.weight.val()).collect(), 0).div_scalar(count),
    );
    proj.bias = mean_param(heads.iter().map(|h| h.audio.proj.bias.as_ref()));
    joined.log_scale = mean_param(heads.iter().map(|h| h.log_scale.as_ref()));
    joined
}

/// The mean of one optional vector parameter over heads of one shape (absent in all or none).
fn mean_param<'a>(
    params: impl Iterator<Item = Option<&'a Param<Tensor<1>>>>,
) -> Option<Param<Tensor<1>>> {
    let values: Vec<Tensor<1>> = params.flatten().map(|p| p.val()).collect();
    let count = values.len() as f32;
    let sum = values.into_iter().reduce(|a, b| a + b)?;
    Some(Param::from_tensor(sum.div_scalar(count)))
}

/// One epoch of steps: the rows in a seeded order (or drawn by their weights), each step's
/// rows sometimes swapped for a mix, one version and one caption target drawn per row.
/// Returns the model, the sum of the losses, the steps taken and the last learning rate.
#[allow(clippy::too_many_arguments)]
fn train_epoch(
    mut model: Contrastive,
    optim: &mut ModuleOptimizer,
    config: &RunConfig,
    rows: &[Row],
    draws: &Draws,
    epoch: usize,
    schedule: &mut Schedule,
    ad: &Device,
) -> Result<(Contrastive, f64, usize, f64)> {
    let t = &config.train;
    let dim = config.model.encoder.pooled_dim();
    let text_dim = config.model.encoder.embedding_dim;
    let mut shuffle = SplitMix64::derive(t.seed, &[epoch as u64, 1]);
    let order: Vec<usize> = match &draws.weights {
        Some(w) => weighted_order(w, rows.len(), &mut shuffle),
        None => {
            let mut order: Vec<usize> = (0..rows.len()).collect();
            shuffle.shuffle(&mut order);
            order
        }
    };
    let mut pick = SplitMix64::derive(t.seed, &[epoch as u64, 2]);
    let mut aug = SplitMix64::derive(t.seed, &[epoch as u64, 3]);
    let (mut loss_sum, mut done, mut lr) = (0.0, 0usize, 0.0);
    for batch in order.chunks(t.batch_size).filter(|b| b.len() >= 2) {
        let chosen: Vec<&Row> = batch
            .iter()
            .map(|&r| {
                if !draws.mix_rows.is_empty() && aug.next_f64() < t.mix.probability {
                    &draws.mix_rows[aug.below(draws.mix_rows.len())]
                } else if !draws.background_rows.is_empty()
                    && aug.next_f64() < draws.background_prob
                {
                    &draws.background_rows[aug.below(draws.background_rows.len())]
                } else {
                    &rows[r]
                }
            })
            .collect();
        let items: Vec<&Item> = chosen
            .iter()
            .map(|r| r.items[aug.below(r.items.len())])
            .collect();
        let (windows, mean) = stack(&items, dim, ad);
        let audio = l2_normalize(mean.matmul(model.audio.head(windows)));
        let mut text = Vec::with_capacity(chosen.len() * text_dim);
        for row in &chosen {
            text.extend(caption_target(
                &row.captions,
                draws.captions_per_step,
                &mut pick,
            ));
        }
        let text = model.text(Tensor::from_data(
            TensorData::new(text, [chosen.len(), text_dim]),
            ad,
        ));
        let keys: Vec<u64> = chosen.iter().map(|r| r.key).collect();
        let scale = model.scale(config.model.temperature, ad);
        let loss = t.loss.compute(audio, text, scale, &keys);
        let value = to_vec(loss.clone())[0] as f64;
        if !value.is_finite() {
            bail!(
                "the loss became {value} at step {} (epoch {epoch}); lower --lr",
                schedule.step + 1
            );
        }
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        lr = lr_at(
            schedule.step,
            schedule.total,
            schedule.warmup,
            t.lr,
            t.min_lr_ratio,
        );
        model = optim.step(lr, model, grads);
        schedule.step += 1;
        done += 1;
        loss_sum += value;
    }
    Ok((model, loss_sum, done, lr))
}

fn epoch_line(log: &EpochLog, epochs: usize) -> String {
    let mut line = format!(
        "epoch {}/{epochs}: loss {:.4}, temperature {:.4}, lr {:.2e}",
        log.epoch, log.train_loss, log.temperature, log.lr
    );
    if let (Some(p1), Some(map)) = (log.class_p1, log.class_map10) {
        line += &format!("; queries: class P@1 {p1:.3}, class mAP@10 {map:.3}");
    }
    if let (Some(r1), Some(map)) = (log.t2a_r1, log.t2a_map10) {
        line += &format!("; captions: R@1 {r1:.3}, mAP@10 {map:.3}");
    }
    if let Some(p) = log.class_p10 {
        line += &format!(", class P@10 {p:.3}");
    }
    if let Some(o) = &log.open_world {
        line += &format!(
            "; ESC-50 P@1 {:.3} alone, {:.3} among {} clips; others P@1 {}, caption mAP@10 {:.3}",
            o.reference_alone_p1,
            o.reference_with_distractors_p1,
            o.gallery_clips,
            o.others_p1.map_or("-".into(), |p| format!("{p:.3}")),
            o.others_caption_map10
        );
    }
    line
}

/// Writes the head (fc, proj and the learned scale) in PyTorch's `nn.Linear` layout.
fn save_head(model: &Contrastive, path: &Path) -> Result<()> {
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    for (name, linear) in [("fc", &model.audio.fc), ("proj", &model.audio.proj)] {
        let [i, o] = linear.weight.val().dims();
        tensors.push((
            format!("{name}.weight"),
            vec![o, i],
            crate::encoders::blocks::out_in(linear),
        ));
        if let Some(b) = &linear.bias {
            tensors.push((format!("{name}.bias"), vec![o], to_vec(b.val())));
        }
    }
    if let Some(s) = &model.log_scale {
        tensors.push(("log_scale".into(), vec![1], to_vec(s.val())));
    }
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
        .into_iter()
        .map(|(n, shape, v)| (n, v.iter().flat_map(|x| x.to_le_bytes()).collect(), shape))
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = bytes
        .iter()
        .map(|(n, b, shape)| {
            Ok((
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), b)?,
            ))
        })
        .collect::<Result<_>>()?;
    let data = safetensors::serialize(views, None)?;
    std::fs::write(path, data).with_context(|| format!("cannot write {}", path.display()))
}

/// Loads a head written by [`save_head`] into `model` (on `device`).
pub fn load_head(mut model: Contrastive, path: &Path, device: &Device) -> Result<Contrastive> {
    let state = crate::checkpoint::read_safetensors(path)
        .with_context(|| format!("cannot read the head {}", path.display()))?;
    for (name, linear) in [("fc", &mut model.audio.fc), ("proj", &mut model.audio.proj)] {
        let [i, o] = linear.weight.lazy_shape().dims::<2>();
        let w = state
            .get(&format!("{name}.weight"))
            .with_context(|| format!("{} has no {name}.weight", path.display()))?;
        if w.shape != [o, i] {
            bail!(
                "{}: {name}.weight is {:?}, the run's encoder needs [{o}, {i}]",
                path.display(),
                w.shape
            );
        }
        let t = audiotext_assemble::layers::transpose(&w.data, o, i);
        linear.weight = Param::from_tensor(Tensor::from_data(TensorData::new(t, [i, o]), device));
        if linear.bias.is_some() {
            let b = state
                .get(&format!("{name}.bias"))
                .with_context(|| format!("{} has no {name}.bias", path.display()))?;
            linear.bias = Some(Param::from_tensor(Tensor::from_data(
                TensorData::new(b.data.clone(), [o]),
                device,
            )));
        }
    }
    if model.log_scale.is_some() {
        if let Some(s) = state.get("log_scale") {
            model.log_scale = Some(Param::from_tensor(Tensor::from_data(
                TensorData::new(s.data.clone(), [1]),
                device,
            )));
        }
    }
    Ok(model)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joined_heads_give_the_mean_of_their_outputs_before_the_norm() {
        use crate::model::{ContrastiveConfig, EncoderConfig};
        use burn::tensor::{activation::relu, Distribution};
        let encoder = EncoderConfig::cnn10(16, 8).with_width(4);
        let config = ContrastiveConfig {
            encoder: EncoderConfig {
                fc_dim: 6,
                ..encoder
            },
            text_head: false,
            temperature: 0.05,
            learn_temperature: true,
        };
        let device = Device::flex();
        let heads: Vec<Contrastive> = (0..3)
            .map(|k| {
                device.seed(10 + k);
                config.init(&device)
            })
            .collect();
        let joined = join_heads(&heads);
        assert_eq!(
            joined.audio.fc.weight.val().dims(),
            [config.encoder.pooled_dim(), 18]
        );
        assert_eq!(joined.audio.proj.weight.val().dims(), [18, 8]);
        let x = Tensor::<2>::random(
            [5, config.encoder.pooled_dim()],
            Distribution::Normal(0.0, 1.0),
            &device,
        );
        let out = |h: &Contrastive| h.audio.proj.forward(relu(h.audio.fc.forward(x.clone())));
        let mean = heads
            .iter()
            .map(out)
            .reduce(|a, b| a + b)
            .unwrap()
            .div_scalar(3.0);
        let (want, got) = (to_vec(mean), to_vec(out(&joined)));
        assert!(
            want.iter().any(|v| v.abs() > 1e-3),
            "the heads' outputs should not be all zero"
        );
        let worst = want
            .iter()
            .zip(&got)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(
            worst < 1e-5,
            "joined head differs from the members' mean by {worst}"
        );
    }

    #[test]
    fn source_weights_share_an_epoch_by_a_power_of_the_counts() {
        let sources: Vec<Option<String>> = ["a", "a", "a", "b"]
            .iter()
            .map(|s| Some(s.to_string()))
            .collect();
        assert_eq!(source_weights(&sources, 1.0), None);
        let equal = source_weights(&sources, 0.0).unwrap();
        let share_a: f64 = equal[..3].iter().sum();
        assert!((share_a - 0.5).abs() < 1e-12 && (equal[3] - 0.5).abs() < 1e-12);
        // Square root: shares 3^0.5 : 1.
        let root = source_weights(&sources, 0.5).unwrap();
        let ratio = root[..3].iter().sum::<f64>() / root[3];
        assert!((ratio - 3f64.sqrt()).abs() < 1e-9);
        assert_eq!(source_weights(&sources[..3], 0.0), None);
    }

    #[test]
    fn weighted_draws_follow_the_weights() {
        let mut rng = SplitMix64::derive(7, &[]);
        let order = weighted_order(&[0.75, 0.0, 0.25], 40_000, &mut rng);
        let count = |k| order.iter().filter(|&&i| i == k).count() as f64 / 40_000.0;
        assert!((count(0) - 0.75).abs() < 0.01, "{}", count(0));
        assert_eq!(count(1), 0.0);
        assert!((count(2) - 0.25).abs() < 0.01);
    }

    #[test]
    fn caption_targets_average_distinct_captions() {
        let captions = vec![vec![1.0, 0.0], vec![0.0, 1.0]];
        let mut rng = SplitMix64::derive(1, &[]);
        let one = caption_target(&captions, 1, &mut rng);
        assert!(one == captions[0] || one == captions[1]);
        let both = caption_target(&captions, 2, &mut rng);
        let h = std::f32::consts::FRAC_1_SQRT_2;
        assert!((both[0] - h).abs() < 1e-6 && (both[1] - h).abs() < 1e-6);
        // Asking for more captions than a row has uses them all.
        assert_eq!(caption_target(&captions, 5, &mut rng), both);
    }
}
