//! Cross-crate test harness: spawn servers and clusters, kill processes, drive real clients.
