//! pitcrew-agent: the small root daemon on every host. It enrolls with a join token, holds one
//! mTLS session to the coordinator, reports the host's facts, and runs typed maintenance actions
//! only as far as its local policy allows.
#![forbid(unsafe_code)]

pub mod actions;
pub mod config;
pub mod enroll;
pub mod facts;
pub mod holds;
pub mod journal;
pub mod mounts;
pub mod session;
pub mod systemd;
pub mod updates;
