//! Enrollment (being written).
