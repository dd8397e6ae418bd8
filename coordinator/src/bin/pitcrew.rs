//! pitcrew CLI.
fn main() {}
