//! pitcrew-coordinator.
fn main() {}
