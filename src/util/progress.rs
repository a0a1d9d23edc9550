//! The one progress bar of hdpo: the subcommands and the library's long loops
//! (training, reference log-probs, prediction) share its look. Hidden when
//! stderr is not a terminal unless `HDPO_PROGRESS=1`.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A progress bar over `len` items with the label `what`.
pub fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    if std::env::var_os("HDPO_PROGRESS").is_none()
        && !std::io::IsTerminal::is_terminal(&std::io::stderr())
    {
        pb.set_draw_target(ProgressDrawTarget::hidden());
    }
    pb.set_style(
        ProgressStyle::with_template(
            "{prefix:>12} [{bar:30}] {pos}/{len} {per_sec} eta {eta} {msg}",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    pb.set_prefix(what.to_string());
    pb
}
