//! The `orch` binary: parse arguments, set up logging, run the subcommand.
//! Everything else lives in the library (`src/lib.rs`).

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use orch::cli::Cli;
use tracing_subscriber::filter::Targets;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return usage_error(err),
    };
    if let Err(err) = init_tracing(cli.log_level.as_deref()) {
        eprintln!("error: {err}");
        return ExitCode::from(2);
    }
    match orch::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::debug!(?err, "command failed");
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// `--help` and `--version` print as usual. A usage error prints one line
/// saying what is wrong (with clap's suggestion folded in), then the usage,
/// and exits 2.
fn usage_error(err: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        err.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = err.print();
        return ExitCode::from(if err.use_stderr() { 2 } else { 0 });
    }
    let rendered = err.render().to_string();
    let mut message: Vec<String> = Vec::new();
    let mut in_error = false;
    for line in rendered.lines() {
        let trimmed = line.trim();
        if let Some(rest) = trimmed.strip_prefix("error:") {
            message.push(rest.trim().to_owned());
            in_error = true;
        } else if let Some(rest) = trimmed.strip_prefix("tip:") {
            message.push(rest.trim().to_owned());
        } else if in_error && line.starts_with(char::is_whitespace) && !trimmed.is_empty() {
            // The list under "the following required arguments were not provided:".
            if let Some(last) = message.last_mut() {
                last.push(' ');
                last.push_str(trimmed);
            }
        } else {
            in_error = false;
        }
    }
    eprintln!("error: {}", message.join("; "));
    eprintln!("usage: {} (see --help)", usage_for_args());
    ExitCode::from(2)
}

/// The usage line of the subcommand named on the command line, or of orch.
fn usage_for_args() -> String {
    use clap::CommandFactory;
    let mut cmd = Cli::command();
    let named = std::env::args()
        .skip(1)
        .find(|a| cmd.find_subcommand(a).is_some());
    let usage = match named.and_then(|n| cmd.find_subcommand_mut(&n).map(|c| c.render_usage())) {
        Some(usage) => usage,
        None => cmd.render_usage(),
    };
    let usage = usage.to_string();
    let usage = usage.trim().trim_start_matches("Usage:").trim();
    if usage.starts_with("orch") {
        usage.to_owned()
    } else {
        format!("orch {usage}")
    }
}

/// `--log-level` wins, then `RUST_LOG`, then `info`.
fn init_tracing(level: Option<&str>) -> Result<(), String> {
    let spec = level
        .map(str::to_owned)
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| "info".to_owned());
    let filter: Targets = spec.parse().map_err(|e| {
        format!("invalid log level {spec:?} ({e}); use error, warn, info, debug or trace")
    })?;
    use tracing_subscriber::prelude::*;
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_filter(filter),
        )
        .init();
    Ok(())
}
