//! pitcrew coordinator library.
