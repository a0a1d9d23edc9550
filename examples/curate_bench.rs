//! Curation throughput on a ViT-B/16-sized tower (random seeded weights),
//! for BENCHMARKS.md. Run in release mode:
//!
//! ```text
//! cargo run --release --example curate_bench -- [SAMPLES] [CHUNKS] [STUDIES]
//! ```
//!
//! Prints two JSON reports: the encoder part (`curation_throughput`; per
//! sample: patch embeddings f_v(p_i), Eq. 2 weights, v (Eq. 3), chunk
//! embeddings and cosines (Eq. 4-5)), and the end-to-end run
//! (`pipeline_throughput`: `curate::run` with all four kinds on STUDIES
//! phantom reports, default 8; 0 skips it).

use hdpo::curate::bench::{curation_throughput, pipeline_throughput, BenchConfig};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut cfg = BenchConfig::default();
    if let Some(n) = args.next() {
        cfg.samples = n.parse()?;
    }
    if let Some(c) = args.next() {
        cfg.chunks = c.parse()?;
    }
    let studies: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(8);
    let r = curation_throughput(&cfg)?;
    println!("{}", serde_json::to_string_pretty(&r)?);
    if studies > 0 {
        let p = pipeline_throughput(&cfg, studies)?;
        println!("{}", serde_json::to_string_pretty(&p)?);
    }
    Ok(())
}
