//! Curation throughput on a ViT-B/16-sized tower (random seeded weights),
//! for BENCHMARKS.md. Run in release mode:
//!
//! ```text
//! cargo run --release --example curate_bench -- [SAMPLES] [CHUNKS]
//! ```
//!
//! Prints the `BenchReport` as JSON. Per sample: patch embeddings f_v(p_i),
//! Eq. 2 weights, v (Eq. 3), chunk embeddings and cosines (Eq. 4-5).

use hdpo::curate::bench::{curation_throughput, BenchConfig};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut cfg = BenchConfig::default();
    if let Some(n) = args.next() {
        cfg.samples = n.parse()?;
    }
    if let Some(c) = args.next() {
        cfg.chunks = c.parse()?;
    }
    let r = curation_throughput(&cfg)?;
    println!("{}", serde_json::to_string_pretty(&r)?);
    Ok(())
}
