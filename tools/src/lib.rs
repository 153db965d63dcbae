//! What runs on the test lab but is not a test: the benchmark suites behind
//! `cargo xtask bench` (`src/bin/bench.rs`) and the demo behind `cargo xtask run`
//! (`src/bin/demo.rs`).
pub mod bench;
