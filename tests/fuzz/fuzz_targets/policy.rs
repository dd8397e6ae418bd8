//! Fuzz target `policy`: policy matching. A `[policy]` table (`LocalPolicy`, as the agent's
//! configuration holds it) and a typed action (`v1::Action`, as the coordinator sends it), the
//! action checked against the policy the way the agent's gate and the planner both check it.
//!
//! Input: the policy's TOML, a NUL byte, then the action prost-encoded. Nothing may panic.
//! Checked besides: the policy survives the facts' wire form (`from_proto(to_proto())`), and
//! the whole policy is never more permissive than its planner's view (`LocalPolicy::check`
//! applies `Policy::check` first), so a plan never promises what the agent refuses to check.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pitcrew_fuzz::split_nul;
use pitcrew_proto::policy::LocalPolicy;
use pitcrew_proto::{actions, v1};
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let parts = split_nul(data, 2);
    let policy = std::str::from_utf8(parts[0])
        .ok()
        .and_then(|text| toml::from_str::<LocalPolicy>(text).ok());
    let action = parts
        .get(1)
        .and_then(|bytes| v1::Action::decode(*bytes).ok());

    if let Some(policy) = &policy {
        let _ = policy.validate();
        assert_eq!(
            &LocalPolicy::from_proto(&policy.to_proto()),
            policy,
            "the policy changed through the facts' wire form"
        );
    }
    let Some(action) = action else {
        return;
    };
    let _ = actions::describe(Some(&action));
    let policies = [policy, Some(LocalPolicy::default())];
    for policy in policies.iter().flatten() {
        let verdict = policy.check(&action);
        if verdict.is_ok() {
            assert!(
                policy.rules().check(&action).is_ok(),
                "the agent allows {action:?} but its planner's view refuses it"
            );
        }
        if let Some(v1::action::Kind::SignalUnit(s)) = &action.kind {
            let _ = policy.signal_allowed(&s.signal);
        }
        if let Some(v1::action::Kind::RemovePath(r)) = &action.kind {
            let _ = policy.removal_allowed(&r.path);
        }
    }
});
