//! Session (being written).
