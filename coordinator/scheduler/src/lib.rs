//! pitcrew scheduler (being written).
