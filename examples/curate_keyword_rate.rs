//! The k* rate on the phantom benchmark (issue 4), for BENCHMARKS.md:
//! `hdpo::curate::bench::keyword_rate` generates a phantom set, aligns a small
//! dual encoder on its training split, curates the test split with mask and
//! with uniform heatmaps, and prints how often k* names the lesion's finding
//! or its location phrase.
//!
//! ```text
//! cargo run --release --example curate_keyword_rate -- [OUT_DIR] [TRAIN] [EPOCHS] [report|findings] [regions|global] [SEED]
//! ```

use hdpo::curate::bench::{keyword_rate, KeywordRateConfig};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut cfg = KeywordRateConfig::default();
    if let Some(d) = args.next() {
        cfg.dir = d.into();
    }
    if let Some(n) = args.next() {
        cfg.train = n.parse()?;
    }
    if let Some(e) = args.next() {
        cfg.epochs = e.parse()?;
    }
    if let Some(t) = args.next() {
        cfg.texts = t;
    }
    if let Some(r) = args.next() {
        cfg.regions = match r.as_str() {
            "regions" => true,
            "global" => false,
            other => anyhow::bail!("expected regions or global, got {other:?}"),
        };
    }
    if let Some(s) = args.next() {
        cfg.seed = s.parse()?;
    }
    let r = keyword_rate(&cfg)?;
    if let Some(a) = &r.align_regions {
        println!("alignment: {}", a.describe());
    }
    for s in &r.sources {
        println!(
            "heatmaps {:<8} k* names the finding or location for {}/{} abnormal test studies ({:.3}); k* categories {:?}",
            s.heatmaps, s.hits, s.studies, s.rate, s.keyword_categories
        );
    }
    println!("{}", serde_json::to_string(&r)?);
    Ok(())
}
