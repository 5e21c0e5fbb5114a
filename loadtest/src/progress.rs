//! A progress bar on standard error while a phase runs (hidden when it is no terminal).

use std::future::Future;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use crate::clock::now_ns;

/// Runs `fut` with a bar that fills over `expected`, labelled `label`.
pub async fn with_bar<F: Future>(label: &str, expected: Duration, fut: F) -> F::Output {
    let total = expected.as_millis().max(1) as u64;
    let bar = ProgressBar::new(total);
    let style = ProgressStyle::with_template("{msg:>24} [{bar:40}] {elapsed:>4}")
        .expect("a valid template")
        .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message(label.to_owned());
    let start = now_ns();
    tokio::pin!(fut);
    // Bounded by the future itself; the bar only redraws while it runs.
    let out = loop {
        tokio::select! {
            out = &mut fut => break out,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {
                bar.set_position(((now_ns() - start) / 1_000_000).min(total));
            }
        }
    };
    bar.finish_and_clear();
    out
}
