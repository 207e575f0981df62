//! The trainer: `audiotext-train` subcommands.
