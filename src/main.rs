//! The `hdpo` command-line tool. All logic lives in the library; this binary
//! parses arguments (`hdpo::cli` is private to it) and shows progress.

mod cli;

fn main() {
    if let Err(e) = cli::run() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
