//! Codec benchmarks (filled in with the criterion suite).

fn main() {}
