//! pitcrew test harness.
