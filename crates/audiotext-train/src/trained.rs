//! A trained model from its run folder, whichever command made it: `fit`'s burn checkpoints, or
//! `fit-head`'s head on the recorded pretrained backbone. Above `run` (the folder's format),
//! `backbone`, `pretrained` and `head`, so that none of them has to reach up for it.

use std::path::Path;

use anyhow::{bail, Context, Result};
use burn::prelude::*;

use crate::model::Contrastive;
use crate::run::{checkpoint_path, CheckpointState, RunConfig, Which, CHECKPOINT_DIR};

/// Loads a run's model (in validation mode, on `device`).
pub fn load_model(
    run_dir: &Path,
    config: &RunConfig,
    which: Which,
    device: &Device,
) -> Result<(Contrastive, CheckpointState)> {
    if let Some(head) = &config.head {
        return load_head_run(run_dir, config, head, device);
    }
    let mut stem = which.file_stem();
    if which == Which::Best && !checkpoint_path(run_dir, "best", "model").is_file() {
        // A run without validation has no best checkpoint.
        eprintln!(
            "note: {} has no best checkpoint, using the last one",
            run_dir.display()
        );
        stem = "last";
    }
    let path = checkpoint_path(run_dir, stem, "model");
    if !path.is_file() {
        bail!(
            "{} not found; the run has no completed epoch yet",
            path.display()
        );
    }
    let record = burn::store::ModuleRecord::load(&path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    let model = config
        .model
        .init(device)
        .try_load_record(record)
        .map_err(|e| {
            anyhow::anyhow!(
                "{} does not fit the run's model config: {e}",
                path.display()
            )
        })?;
    let state_path = run_dir.join(CHECKPOINT_DIR).join(format!("{stem}.json"));
    let state: CheckpointState = serde_json::from_str(
        &std::fs::read_to_string(&state_path)
            .with_context(|| format!("cannot read {}", state_path.display()))?,
    )?;
    Ok((model.valid(), state))
}

/// A `fit-head` run's model: the recorded pretrained backbone with the run's head.
fn load_head_run(
    run_dir: &Path,
    config: &RunConfig,
    head: &crate::run::HeadRun,
    device: &Device,
) -> Result<(Contrastive, CheckpointState)> {
    let info = config
        .pretrained
        .as_ref()
        .context("the fit-head run records no pretrained backbone")?;
    let info = crate::backbone::resolve_checkpoint(info)?;
    let mut model = config.model.init(device);
    model.audio = crate::pretrained::import(model.audio, &config.model.encoder, &info, device)?;
    let model = crate::head::load_head(model, &run_dir.join(&head.head_file), device)?;
    let state_path = run_dir.join(CHECKPOINT_DIR).join("last.json");
    let state: CheckpointState = serde_json::from_str(
        &std::fs::read_to_string(&state_path)
            .with_context(|| format!("cannot read {}", state_path.display()))?,
    )?;
    Ok((model.valid(), state))
}
