//! Conditions on what a host reports of itself (its facts), for `[select] when = [...]`: a
//! campaign then covers only the hosts whose facts hold every condition when a run starts
//! (and when a plan is made), e.g. only hosts with more than one tmpfs stacked on `/dev/shm`.
//!
//! A condition is one of:
//! * `FACT` or `not FACT` for a yes/no fact (`reboot_required`);
//! * `FACT OP N` for a count (`shm_tmpfs_mounts`, `pending_updates`), with `OP` one of `>`,
//!   `>=`, `<`, `<=`, `==`, `!=` and `N` a whole number.
//!
//! A host that has reported no facts yet matches no condition, and neither does a count the
//! host could not make (`pending_updates` before its first count): a campaign is never run
//! on a guess.

use std::fmt;

use serde::{Deserialize, Serialize};

/// What the conditions read of a host: its latest facts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HostFacts {
    /// The package manager (or `/run/reboot-required`) says a reboot is needed.
    pub reboot_required: bool,
    /// How many tmpfs mounts are stacked on `/dev/shm` (the UCP backup warning: more than one).
    pub shm_tmpfs_mounts: u32,
    /// Package updates pending, when counted.
    #[serde(default)]
    pub pending_updates: Option<u32>,
}

/// A fact a condition can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fact {
    RebootRequired,
    ShmTmpfsMounts,
    PendingUpdates,
}

/// Every fact, with its spelling, for parsing and messages.
const FACTS: [(Fact, &str); 3] = [
    (Fact::RebootRequired, "reboot_required"),
    (Fact::ShmTmpfsMounts, "shm_tmpfs_mounts"),
    (Fact::PendingUpdates, "pending_updates"),
];

impl Fact {
    pub fn as_str(self) -> &'static str {
        FACTS
            .iter()
            .find(|(f, _)| *f == self)
            .map(|(_, s)| *s)
            .unwrap_or("?")
    }

    fn is_count(self) -> bool {
        !matches!(self, Fact::RebootRequired)
    }

    fn parse(text: &str) -> Option<Fact> {
        FACTS.iter().find(|(_, s)| *s == text).map(|(f, _)| *f)
    }
}

/// How a count is compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compare {
    Gt,
    Ge,
    Lt,
    Le,
    Eq,
    Ne,
}

/// The operators, longest first so `>=` is not read as `>`.
const COMPARES: [(Compare, &str); 6] = [
    (Compare::Ge, ">="),
    (Compare::Le, "<="),
    (Compare::Eq, "=="),
    (Compare::Ne, "!="),
    (Compare::Gt, ">"),
    (Compare::Lt, "<"),
];

impl Compare {
    fn as_str(self) -> &'static str {
        COMPARES
            .iter()
            .find(|(c, _)| *c == self)
            .map(|(_, s)| *s)
            .unwrap_or("?")
    }

    fn holds(self, value: u64, than: u64) -> bool {
        match self {
            Compare::Gt => value > than,
            Compare::Ge => value >= than,
            Compare::Lt => value < than,
            Compare::Le => value <= than,
            Compare::Eq => value == than,
            Compare::Ne => value != than,
        }
    }
}

/// One condition of `[select] when`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Condition {
    /// A yes/no fact is (or, with `not`, is not) set.
    Flag { fact: Fact, want: bool },
    /// A count compares with a number.
    Count { fact: Fact, op: Compare, value: u64 },
}

impl Condition {
    /// Reads one condition; the error says what is wrong and what is accepted.
    pub fn parse(text: &str) -> Result<Condition, String> {
        let t = text.trim();
        let known = || FACTS.iter().map(|(_, s)| *s).collect::<Vec<_>>().join(", ");
        if let Some((i, op)) = COMPARES
            .iter()
            .find_map(|(c, s)| t.find(s).map(|i| (i, (*c, *s))))
        {
            let (name, number) = (t[..i].trim(), t[i + op.1.len()..].trim());
            let fact = Fact::parse(name)
                .ok_or_else(|| format!("{name:?} is not a fact; conditions read {}", known()))?;
            if !fact.is_count() {
                return Err(format!(
                    "{name} is yes or no, not a count: write \"{name}\" or \"not {name}\""
                ));
            }
            let value = number.parse::<u64>().map_err(|_| {
                format!(
                    "{number:?} is not a whole number; write e.g. \"{name} {} 1\"",
                    op.1
                )
            })?;
            return Ok(Condition::Count {
                fact,
                op: op.0,
                value,
            });
        }
        let (name, want) = match t.strip_prefix("not ") {
            Some(rest) => (rest.trim(), false),
            None => (t, true),
        };
        let fact = Fact::parse(name).ok_or_else(|| {
            format!(
                "{t:?} is not a condition; write a fact ({}), \"not FACT\", or \"COUNT > N\" (>, >=, <, <=, ==, !=)",
                known()
            )
        })?;
        if fact.is_count() {
            return Err(format!(
                "{name} is a count: compare it, e.g. \"{name} > 0\""
            ));
        }
        Ok(Condition::Flag { fact, want })
    }

    /// Whether a host with these facts (None: none reported yet) holds the condition.
    pub fn holds(&self, facts: Option<&HostFacts>) -> bool {
        let Some(facts) = facts else {
            return false;
        };
        match *self {
            Condition::Flag { fact, want } => match fact {
                Fact::RebootRequired => facts.reboot_required == want,
                Fact::ShmTmpfsMounts | Fact::PendingUpdates => false,
            },
            Condition::Count { fact, op, value } => {
                let count = match fact {
                    Fact::ShmTmpfsMounts => Some(facts.shm_tmpfs_mounts),
                    Fact::PendingUpdates => facts.pending_updates,
                    Fact::RebootRequired => None,
                };
                count.is_some_and(|c| op.holds(u64::from(c), value))
            }
        }
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Condition::Flag { fact, want: true } => f.write_str(fact.as_str()),
            Condition::Flag { fact, want: false } => write!(f, "not {}", fact.as_str()),
            Condition::Count { fact, op, value } => {
                write!(f, "{} {} {value}", fact.as_str(), op.as_str())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(reboot: bool, shm: u32, updates: Option<u32>) -> HostFacts {
        HostFacts {
            reboot_required: reboot,
            shm_tmpfs_mounts: shm,
            pending_updates: updates,
        }
    }

    #[test]
    fn counts_compare_and_flags_test() {
        let more_than_one = Condition::parse("shm_tmpfs_mounts > 1").unwrap();
        assert!(more_than_one.holds(Some(&facts(false, 2, None))));
        assert!(!more_than_one.holds(Some(&facts(false, 1, None))));
        let at_least = Condition::parse(" shm_tmpfs_mounts>=1 ").unwrap();
        assert!(at_least.holds(Some(&facts(false, 1, None))));
        assert_eq!(at_least.to_string(), "shm_tmpfs_mounts >= 1");
        let reboot = Condition::parse("reboot_required").unwrap();
        assert!(reboot.holds(Some(&facts(true, 0, None))));
        assert!(!reboot.holds(Some(&facts(false, 0, None))));
        let no_reboot = Condition::parse("not reboot_required").unwrap();
        assert!(no_reboot.holds(Some(&facts(false, 0, None))));
        assert_eq!(no_reboot.to_string(), "not reboot_required");
        for (text, value, holds) in [
            ("pending_updates == 0", 0, true),
            ("pending_updates != 0", 0, false),
            ("pending_updates < 5", 4, true),
            ("pending_updates <= 5", 6, false),
        ] {
            let c = Condition::parse(text).unwrap();
            assert_eq!(
                c.holds(Some(&facts(false, 0, Some(value)))),
                holds,
                "{text}"
            );
        }
    }

    #[test]
    fn unknown_facts_never_match() {
        let c = Condition::parse("pending_updates == 0").unwrap();
        assert!(!c.holds(Some(&facts(false, 0, None))), "not counted yet");
        assert!(!Condition::parse("not reboot_required").unwrap().holds(None));
        assert!(
            !Condition::parse("shm_tmpfs_mounts < 5")
                .unwrap()
                .holds(None)
        );
    }

    #[test]
    fn bad_conditions_say_what_is_accepted() {
        let e = Condition::parse("shm_mounts > 1").unwrap_err();
        assert!(e.contains("\"shm_mounts\" is not a fact"), "{e}");
        assert!(e.contains("shm_tmpfs_mounts"), "{e}");
        let e = Condition::parse("shm_tmpfs_mounts > many").unwrap_err();
        assert!(e.contains("not a whole number"), "{e}");
        let e = Condition::parse("reboot_required > 1").unwrap_err();
        assert!(e.contains("yes or no"), "{e}");
        let e = Condition::parse("shm_tmpfs_mounts").unwrap_err();
        assert!(e.contains("is a count"), "{e}");
        let e = Condition::parse("uptime").unwrap_err();
        assert!(e.contains("not a condition"), "{e}");
        assert!(Condition::parse("shm_tmpfs_mounts > -1").is_err());
    }
}
