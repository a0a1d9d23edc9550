//! `hdpo data ...`: dataset commands (argument parsing and printing only).

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};

use hdpo::data::inspect::{inspect, InspectOptions};
use hdpo::data::{DatasetFormat, LoadOptions, Split};
use hdpo::heatmap::io::SUBTLE_THRESHOLD;

#[derive(Args, Debug)]
pub struct DataArgs {
    #[command(subcommand)]
    pub command: DataCommand,
}

#[derive(Subcommand, Debug)]
pub enum DataCommand {
    /// Count a dataset's samples per split and answer type, images found or
    /// missing, mask coverage and subtle lesions.
    Inspect(InspectArgs),
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// The dataset folder (or its main file).
    pub path: PathBuf,
    /// Dataset format; detected from the files present when omitted.
    #[arg(long, value_enum)]
    pub format: Option<DatasetFormat>,
    /// Only this split.
    #[arg(long, value_enum)]
    pub split: Option<Split>,
    /// Question language (SLAKE's q_lang); "all" keeps every language.
    #[arg(long, default_value = "en")]
    pub lang: String,
    /// Skip and count malformed records instead of stopping at the first.
    #[arg(long)]
    pub skip_bad: bool,
    /// A lesion below this share of the image area is subtle.
    #[arg(long, default_value_t = SUBTLE_THRESHOLD)]
    pub subtle_threshold: f64,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: DataArgs) -> Result<()> {
    match args.command {
        DataCommand::Inspect(a) => {
            let opts = InspectOptions {
                format: a.format,
                load: LoadOptions {
                    split: a.split,
                    lang: a.lang,
                    skip_bad: a.skip_bad,
                    require_images: false,
                    skip_missing: false,
                },
                subtle_threshold: a.subtle_threshold,
            };
            let report = inspect(&a.path, &opts)?;
            let text = if a.json {
                serde_json::to_string_pretty(&report)? + "\n"
            } else {
                report.to_table()
            };
            print_out(&text)
        }
    }
}

/// Print to stdout; a closed pipe (`| head`) ends quietly instead of panicking.
fn print_out(text: &str) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}
