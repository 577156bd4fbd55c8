//! The `socketcluster` command.

fn main() {}
