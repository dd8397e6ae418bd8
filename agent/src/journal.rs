//! The action journal (being written).
