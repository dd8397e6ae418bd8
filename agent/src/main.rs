//! pitcrew-agent.
fn main() {}
