//! `audiotext-train`: builds the model bundles the `audiotext0` SQLite extension loads.
//!
//! Subcommands:
//! - `export-text --from DIR --out DIR [--head FILE]`: export a sentence-transformers text
//!   model (BERT or MPNet family, e.g. all-MiniLM-L6-v2, all-mpnet-base-v2) to `text.onnx` + `tokenizer.json` + `manifest.json`.
//! - `fit --data DIR --text-bundle DIR --out RUN_DIR`: contrastive training of the audio encoder
//!   against the frozen sentence embeddings of the captions (`--resume RUN_DIR` continues).
//! - `eval --run RUN_DIR | --bundle DIR --data DIR`: retrieval metrics (R@k, mAP@10) both ways.
//! - `export --run RUN_DIR --out BUNDLE_DIR`: writes `audio.onnx` and the manifest's audio
//!   section next to the text encoder, then checks ONNX Runtime against the trainer.
//! - `ensemble --member DIR --member DIR [...] --out DIR`: one bundle whose embedding is the
//!   members' concatenated and scaled by 1/sqrt(n) (cosine = mean of the members' cosines).
//!
//! - `report --runs DIR --out FILE.md`: the comparison table of a cross-validated grid of runs
//!   (`scripts/compare.sh`), with plots.
//!
//! Everything it runs lives in the `audiotext_train` library; this file is only the argument
//! parsing and the dispatch to one module per command.
//!
//! Errors are printed once, with their chain of causes, and the exit code is 2.

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

use audiotext_train::export_text::ExportTextOptions;
use audiotext_train::{backbone, ensemble, eval, export_audio, export_text, fit, head, report};

#[derive(Debug, Parser)]
#[command(
    name = "audiotext-train",
    version,
    about = "Build model bundles for the audiotext0 SQLite extension"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Export a sentence-transformers text model (BERT or MPNet family) to a model bundle folder.
    ExportText(ExportTextOptions),
    /// Train the audio encoder contrastively against frozen caption embeddings.
    Fit(fit::FitArgs),
    /// Evaluate a run or a bundle: text-to-audio and audio-to-text R@1, R@5, R@10, mAP@10.
    Eval(eval::EvalArgs),
    /// Export a run's audio encoder to audio.onnx in a bundle folder, and check it.
    Export(export_audio::ExportArgs),
    /// Combine bundles into one whose embedding is the members' concatenated / sqrt(n).
    Ensemble(ensemble::EnsembleArgs),
    /// Tabulate a cross-validated grid of runs (mean and spread over folds) with plots.
    Report(report::ReportArgs),
    /// Train a projection head on a frozen pretrained backbone (aiSFX), on cached outputs.
    FitHead(head::FitHeadArgs),
    /// Write a pretrained backbone (aiSFX) as backbone.onnx, checked against the trainer.
    ExportBackbone(backbone::ExportBackboneArgs),
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(error) => {
            eprintln!("audiotext-train: error: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Command::ExportText(args) => export_text(&args)?.print(),
        Command::Fit(args) => fit::run(args)?,
        Command::Eval(args) => eval::run(args)?,
        Command::Export(args) => export_audio::run(args)?,
        Command::Ensemble(args) => ensemble::run(args)?,
        Command::Report(args) => report::run(args)?,
        Command::FitHead(args) => head::run(args)?,
        Command::ExportBackbone(args) => backbone::run_export(args)?,
    }
    Ok(ExitCode::SUCCESS)
}
