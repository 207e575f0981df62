//! `fit`'s training loop: epochs of steps on log-mel batches, validation, checkpoints and
//! resume, and the metrics file.

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use burn::store::ModuleRecord;
use indicatif::{MultiProgress, ProgressBar};
use serde::Serialize;

use crate::cache::Features;
use crate::metrics::{self, RetrievalMetrics};
use crate::split::SplitMix64;

use crate::embed::bar_style;
use crate::mix::{mix_features, Mix};
use crate::model::{input_tensor, to_vec, waveform_tensor, Contrastive};
use crate::run::{
    checkpoint_path, device, embed_clips, embed_texts, pad_value, CheckpointState, DeviceKind,
    RunConfig, TrainOptions, CHECKPOINT_DIR, METRICS_FILE,
};
use crate::specaug::make_batch;

pub use crate::run::EpochLog;

use super::*;

/// Summary of [`train`].
#[derive(Debug, Clone)]
#[cfg_attr(not(test), allow(dead_code))]
pub struct TrainSummary {
    pub epochs: Vec<EpochLog>,
    /// Loss of every optimizer step of this call, in order.
    pub step_losses: Vec<f64>,
}

fn optimizer(t: &TrainOptions) -> ModuleOptimizer {
    let mut c = AdamWConfig::new().with_weight_decay(t.weight_decay as f32);
    if t.clip_grad_norm > 0.0 {
        c = c.with_grad_clipping(Some(burn::grad_clipping::GradientClippingConfig::Norm(
            t.clip_grad_norm as f32,
        )));
    }
    c.init()
}

fn save_record(model: &Contrastive, path: &Path) -> Result<()> {
    let tmp = path.with_extension("bpk.tmp");
    model
        .clone()
        .into_record()
        .save(&tmp)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    std::fs::write(path, serde_json::to_string_pretty(value)? + "\n")
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Reads `metrics.jsonl` (missing file: no epochs).
pub fn read_metrics(run_dir: &Path) -> Result<Vec<EpochLog>> {
    let path = run_dir.join(METRICS_FILE);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(Vec::new());
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).with_context(|| format!("{}: bad line {l:?}", path.display()))
        })
        .collect()
}

/// Trains for `config.train.epochs` epochs (from the last checkpoint when `resume`). The
/// epoch loop reads in one piece, in the order it runs: steps, validation, checkpoints.
pub fn train(
    config: &RunConfig,
    data: &Prepared,
    run_dir: &Path,
    resume: bool,
    device_kind: DeviceKind,
    max_steps: Option<usize>,
    show_progress: bool,
) -> Result<TrainSummary> {
    let t = &config.train;
    let base = device(device_kind)?;
    let ad = base.clone().autodiff();
    let ckpt_dir = run_dir.join(CHECKPOINT_DIR);
    std::fs::create_dir_all(&ckpt_dir)
        .with_context(|| format!("cannot create {}", ckpt_dir.display()))?;

    let (mut model, mut optim, mut state, mut logs) = if resume {
        resume_run(config, run_dir, &ad)?
    } else {
        base.seed(t.seed);
        start_run(config, &ad)?
    };

    let steps = steps_per_epoch(data.train.len(), t.batch_size);
    if steps == 0 {
        bail!(
            "training needs at least two training clips, got {}",
            data.train.len()
        );
    }
    let total_steps = steps * t.epochs;
    let warmup = (t.warmup_epochs * steps as f64).round() as usize;
    let mut step_losses = Vec::new();
    let multi = MultiProgress::new();
    if !show_progress {
        multi.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }

    for epoch in state.epoch + 1..=t.epochs {
        if max_steps.is_some_and(|m| state.step >= m) {
            break;
        }
        let started = Instant::now();
        base.seed(t.seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9));
        let mut order = data.train.clone();
        SplitMix64::derive(t.seed, &[epoch as u64, 1]).shuffle(&mut order);
        let mut pick = SplitMix64::derive(t.seed, &[epoch as u64, 2]);
        let mut aug = SplitMix64::derive(t.seed, &[epoch as u64, 3]);
        let bar = multi.add(ProgressBar::new(steps as u64).with_style(bar_style("steps")));
        bar.set_message(format!("epoch {epoch}/{}", t.epochs));
        let mut loss_sum = 0.0;
        let mut done = 0usize;
        let mut step_time = 0.0;
        let mut lr = 0.0;
        let batches: Vec<&[usize]> = order
            .chunks(t.batch_size)
            .filter(|b| b.len() >= 2)
            .collect();
        for batch in batches {
            if max_steps.is_some_and(|m| state.step >= m) {
                break;
            }
            let step_start = Instant::now();
            let (b, text, keys) = assemble_batch(batch, data, config, &mut aug, &mut pick);
            let loss = batch_loss(&model, b, text, &keys, config, &ad);
            let loss_value = to_vec(loss.clone())[0] as f64;
            if !loss_value.is_finite() {
                bail!("the loss became {loss_value} at step {} (epoch {epoch}); lower --lr or set --clip-grad-norm", state.step + 1);
            }
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            lr = lr_at(state.step, total_steps, warmup, t.lr, t.min_lr_ratio);
            model = optim.step(lr, model, grads);
            state.step += 1;
            done += 1;
            loss_sum += loss_value;
            step_losses.push(loss_value);
            step_time += step_start.elapsed().as_secs_f64();
            bar.set_prefix(format!("loss {:.4}", loss_sum / done as f64));
            bar.inc(1);
        }
        bar.finish_and_clear();
        if done == 0 {
            break;
        }
        let train_seconds = started.elapsed().as_secs_f64();

        // Validation.
        let val_start = Instant::now();
        let mut log = EpochLog {
            epoch,
            steps: done,
            train_loss: loss_sum / done as f64,
            temperature: model.temperature(config.model.temperature),
            lr,
            seconds_per_step: step_time / done as f64,
            ..Default::default()
        };
        let last_epoch = epoch == t.epochs || max_steps.is_some_and(|m| state.step >= m);
        let validate_now = epoch % t.validate_every.max(1) == 0 || last_epoch;
        if validate_now && !data.validation.is_empty() {
            record_validation(&mut log, validate(&model, config, data, &multi)?);
        }
        log.validation_seconds = val_start.elapsed().as_secs_f64();
        log.seconds = started.elapsed().as_secs_f64();

        // Metrics first, then checkpoints: a resume drops metric lines past the checkpoint.
        append_metrics(run_dir, &log)?;
        logs.push(log.clone());
        let improved = save_epoch(&model, &optim, &mut state, &log, run_dir, t)?;
        if let Err(e) = crate::plot::write_plots(run_dir, &logs) {
            eprintln!("warning: cannot draw the plots: {e:#}");
        }
        let line = epoch_line(&log, t.epochs, train_seconds, improved);
        // On standard output whether or not the bars are drawn (a log file gets every line).
        multi.suspend(|| println!("{line}"));
    }
    Ok(TrainSummary {
        epochs: logs,
        step_losses,
    })
}

/// The model, optimiser, schedule state and metric lines of a run's last checkpoint; metric
/// lines past it are dropped from the file too.
fn resume_run(
    config: &RunConfig,
    run_dir: &Path,
    ad: &Device,
) -> Result<(Contrastive, ModuleOptimizer, CheckpointState, Vec<EpochLog>)> {
    let t = &config.train;
    let ckpt_dir = run_dir.join(CHECKPOINT_DIR);
    let state: CheckpointState = serde_json::from_str(
        &std::fs::read_to_string(ckpt_dir.join("last.json"))
            .context("the run has no checkpoint to resume from")?,
    )?;
    let record = ModuleRecord::load(checkpoint_path(run_dir, "last", "model"))
        .map_err(|e| anyhow::anyhow!("cannot read the last model checkpoint: {e}"))?;
    let model = config.model.init(ad).load_record(record);
    let optim = optimizer(t)
        .load(checkpoint_path(run_dir, "last", "optim"))
        .map_err(|e| anyhow::anyhow!("cannot read the last optimizer checkpoint: {e}"))?;
    let logs: Vec<EpochLog> = read_metrics(run_dir)?
        .into_iter()
        .filter(|l| l.epoch <= state.epoch)
        .collect();
    rewrite_metrics(run_dir, &logs)?;
    println!("resuming after epoch {} (step {})", state.epoch, state.step);
    Ok((model, optim, state, logs))
}

/// A new model (with the pretrained weights, if any) and optimiser.
fn start_run(
    config: &RunConfig,
    ad: &Device,
) -> Result<(Contrastive, ModuleOptimizer, CheckpointState, Vec<EpochLog>)> {
    let mut model = config.model.init(ad);
    if let Some(p) = &config.pretrained {
        // On the autodiff device, so the imported weights are trained.
        model.audio = crate::pretrained::import(model.audio, &config.model.encoder, p, ad)?;
    }
    let state = CheckpointState {
        epoch: 0,
        step: 0,
        best_epoch: None,
        best_map10: None,
    };
    Ok((model, optimizer(&config.train), state, Vec::new()))
}

/// One step's inputs: each row a clip or (at `--mix-prob`) a mix of two with the mix's joined
/// caption; the clips cropped and augmented into a batch; one caption drawn per clip.
fn assemble_batch(
    batch: &[usize],
    data: &Prepared,
    config: &RunConfig,
    aug: &mut SplitMix64,
    pick: &mut SplitMix64,
) -> (crate::specaug::Batch, Vec<f32>, Vec<u64>) {
    let t = &config.train;
    let dim = config.model.encoder.embedding_dim;
    let min_frames = config.model.encoder.min_frames();
    let pad = pad_value(&config.front_end);
    // Rows replaced by a mix of two clips (with the mix's joined caption).
    let mixed: Vec<Option<(Features, &Mix)>> = batch
        .iter()
        .map(|_| {
            let p = t.mix.probability;
            (p > 0.0 && !data.mixes.is_empty() && aug.next_f64() < p).then(|| {
                let m = &data.mixes[aug.below(data.mixes.len())];
                let (a, b) = (&data.clips[m.first], &data.clips[m.second]);
                (mix_features(&a.features, &b.features), m)
            })
        })
        .collect();
    let feats: Vec<&Features> = batch
        .iter()
        .zip(&mixed)
        .map(|(&i, m)| match m {
            Some((f, _)) => f,
            None => data.clips[i].features.as_ref(),
        })
        .collect();
    let b = make_batch(
        &feats,
        t.max_frames,
        min_frames,
        pad,
        config.model.encoder.n_mels,
        &t.specaug,
        aug,
    );
    let mut text = Vec::with_capacity(batch.len() * dim);
    let mut keys = Vec::with_capacity(batch.len());
    for (&i, m) in batch.iter().zip(&mixed) {
        match m {
            Some((_, mix)) => {
                text.extend_from_slice(&mix.embedding);
                keys.push(mix.key);
            }
            None => {
                let clip = &data.clips[i];
                text.extend_from_slice(&clip.captions[pick.below(clip.captions.len())]);
                keys.push(clip.caption_key);
            }
        }
    }
    (b, text, keys)
}

/// The contrastive loss of one assembled batch.
fn batch_loss(
    model: &Contrastive,
    b: crate::specaug::Batch,
    text: Vec<f32>,
    keys: &[u64],
    config: &RunConfig,
    ad: &Device,
) -> Tensor<1> {
    let (n, dim) = (b.batch, config.model.encoder.embedding_dim);
    let x = input_tensor(
        b.values,
        b.batch,
        b.frames,
        b.mels,
        config.model.encoder.input_channels,
        ad,
    );
    let text = Tensor::<2>::from_data(TensorData::new(text, [n, dim]), ad);
    let waveform = waveform_tensor(b.waveform, n, ad);
    let audio = model.audio.forward_with(x, waveform);
    let text = model.text(text);
    let scale = model.scale(config.model.temperature, ad);
    config.train.loss.compute(audio, text, scale, keys)
}

/// A validation pass's metrics into the epoch's line.
fn record_validation(log: &mut EpochLog, v: Validation) {
    log.val_loss = Some(v.loss);
    log.t2a_r1 = Some(v.t2a.r1);
    log.t2a_r5 = Some(v.t2a.r5);
    log.t2a_r10 = Some(v.t2a.r10);
    log.t2a_map10 = Some(v.t2a.map10);
    log.a2t_r1 = Some(v.a2t.r1);
    log.a2t_r5 = Some(v.a2t.r5);
    log.a2t_r10 = Some(v.a2t.r10);
    log.a2t_map10 = Some(v.a2t.map10);
    log.class_p10 = v.class_p10;
}

/// The epoch's checkpoints: `last` always, `best` when the caption mAP@10 improved (returned),
/// and the last `keep_checkpoints` epochs by number.
fn save_epoch(
    model: &Contrastive,
    optim: &ModuleOptimizer,
    state: &mut CheckpointState,
    log: &EpochLog,
    run_dir: &Path,
    t: &TrainOptions,
) -> Result<bool> {
    let epoch = log.epoch;
    let ckpt_dir = run_dir.join(CHECKPOINT_DIR);
    state.epoch = epoch;
    let improved = log
        .t2a_map10
        .is_some_and(|m| state.best_map10.is_none_or(|b| m > b));
    if improved {
        state.best_epoch = Some(epoch);
        state.best_map10 = log.t2a_map10;
    }
    save_record(model, &checkpoint_path(run_dir, "last", "model"))?;
    optim
        .save(checkpoint_path(run_dir, "last", "optim"))
        .map_err(|e| anyhow::anyhow!("cannot write the optimizer checkpoint: {e}"))?;
    write_json(&ckpt_dir.join("last.json"), &state)?;
    if improved {
        std::fs::copy(
            checkpoint_path(run_dir, "last", "model"),
            checkpoint_path(run_dir, "best", "model"),
        )?;
        write_json(&ckpt_dir.join("best.json"), &state)?;
    }
    if t.keep_checkpoints > 0 {
        std::fs::copy(
            checkpoint_path(run_dir, "last", "model"),
            checkpoint_path(run_dir, &format!("epoch-{epoch:03}"), "model"),
        )?;
        if epoch > t.keep_checkpoints {
            let _ = std::fs::remove_file(checkpoint_path(
                run_dir,
                &format!("epoch-{:03}", epoch - t.keep_checkpoints),
                "model",
            ));
        }
    }
    Ok(improved)
}

fn epoch_line(log: &EpochLog, epochs: usize, train_seconds: f64, best: bool) -> String {
    let mut line = format!(
        "epoch {:>3}/{epochs}: loss {:.4}",
        log.epoch, log.train_loss
    );
    if let Some(v) = log.val_loss {
        line += &format!(" (val {v:.4})");
    }
    if let (Some(r1), Some(r5), Some(r10), Some(m)) =
        (log.t2a_r1, log.t2a_r5, log.t2a_r10, log.t2a_map10)
    {
        line += &format!(" | t2a R@1 {r1:.3} R@5 {r5:.3} R@10 {r10:.3} mAP@10 {m:.3}");
    }
    if let Some(m) = log.a2t_map10 {
        line += &format!(" | a2t mAP@10 {m:.3}");
    }
    if let Some(p) = log.class_p10 {
        line += &format!(" | class P@10 {p:.3}");
    }
    line += &format!(
        " | T {:.4} lr {:.2e} | {:.1} s ({:.2} s/step, val {:.1} s){}",
        log.temperature,
        log.lr,
        log.seconds,
        log.seconds_per_step,
        log.validation_seconds,
        if best { " *best" } else { "" }
    );
    let _ = train_seconds;
    line
}

fn append_metrics(run_dir: &Path, log: &EpochLog) -> Result<()> {
    use std::io::Write;
    let path = run_dir.join(METRICS_FILE);
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    writeln!(f, "{}", serde_json::to_string(log)?)?;
    Ok(())
}

fn rewrite_metrics(run_dir: &Path, logs: &[EpochLog]) -> Result<()> {
    let mut text = String::new();
    for l in logs {
        text += &serde_json::to_string(l)?;
        text.push('\n');
    }
    std::fs::write(run_dir.join(METRICS_FILE), text)?;
    Ok(())
}

/// Validation results.
pub struct Validation {
    pub loss: f64,
    pub t2a: RetrievalMetrics,
    pub a2t: RetrievalMetrics,
    pub class_p10: Option<f64>,
}

/// Retrieval metrics on the validation clips (all captions of each clip are queries), and the
/// contrastive loss with each clip's first caption.
pub fn validate(
    model: &Contrastive,
    config: &RunConfig,
    data: &Prepared,
    multi: &MultiProgress,
) -> Result<Validation> {
    let valid = model.valid();
    let device = valid.audio.fc.weight.val().device();
    let clips: Vec<&ClipData> = data.validation.iter().map(|&i| &data.clips[i]).collect();
    let feats: Vec<&Features> = clips.iter().map(|c| c.features.as_ref()).collect();
    let bar = multi.add(
        ProgressBar::new(feats.len() as u64)
            .with_style(bar_style("windows"))
            .with_message("validation"),
    );
    let audio = embed_clips(
        &valid,
        &feats,
        config,
        config.train.batch_size,
        &device,
        |n| bar.inc(n as u64),
    )?;
    bar.finish_and_clear();
    let mut texts = Vec::new();
    let mut caption_clip = Vec::new();
    for (c, clip) in clips.iter().enumerate() {
        for caption in &clip.captions {
            texts.push(caption.clone());
            caption_clip.push(c);
        }
    }
    let texts = embed_texts(&valid, &texts, &device);
    let sim = metrics::similarity(&texts, &audio);
    let t2a = metrics::text_to_audio(&sim, &caption_clip, clips.len());
    let a2t = metrics::audio_to_text(
        &metrics::transpose(&sim, texts.len(), clips.len()),
        &caption_clip,
        clips.len(),
    );
    let class_p10 = if clips.iter().all(|c| c.class.is_some()) {
        let classes: Vec<usize> = clips.iter().map(|c| c.class.unwrap_or(0)).collect();
        Some(metrics::class_precision_at(
            &sim,
            &caption_clip,
            &classes,
            10,
        ))
    } else {
        None
    };
    // Loss with the first caption of each clip, in training-size batches.
    let first: Vec<usize> = clips
        .iter()
        .enumerate()
        .map(|(c, _)| caption_clip.iter().position(|&x| x == c).unwrap_or(0))
        .collect();
    let scale = valid.scale(config.model.temperature, &device);
    let dim = config.model.encoder.embedding_dim;
    let mut loss_sum = 0.0;
    let mut batches = 0;
    let idx: Vec<usize> = (0..clips.len()).collect();
    for chunk in idx
        .chunks(config.train.batch_size.max(2))
        .filter(|c| c.len() >= 2)
    {
        let a: Vec<f32> = chunk
            .iter()
            .flat_map(|&c| audio[c].iter().copied())
            .collect();
        let t: Vec<f32> = chunk
            .iter()
            .flat_map(|&c| texts[first[c]].iter().copied())
            .collect();
        let keys: Vec<u64> = chunk.iter().map(|&c| clips[c].caption_key).collect();
        let n = chunk.len();
        let loss = config.train.loss.compute(
            Tensor::from_data(TensorData::new(a, [n, dim]), &device),
            Tensor::from_data(TensorData::new(t, [n, dim]), &device),
            scale.clone(),
            &keys,
        );
        loss_sum += to_vec(loss)[0] as f64;
        batches += 1;
    }
    Ok(Validation {
        loss: loss_sum / batches.max(1) as f64,
        t2a,
        a2t,
        class_p10,
    })
}
