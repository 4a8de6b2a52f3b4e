//! The `-smode` and `-tmode` grammar (docs/dcache-compatibility.md#job-options):
//! `STATE[+OWNER[(LIFETIME)]]...`, STATE a keyword, OWNER `[A-Za-z0-9_]+`, LIFETIME an
//! optionally negative 32-bit number of seconds (`-1` or absent: never expires; `0`: already
//! expired, which removes the owner's record where it is applied with overwrite).
//!
//! Lifetimes are kept relative here; [`ModeRecord::at`] makes them absolute from a given
//! moment (the job's creation, or its restoration after a restart).

use tidepool_p2p::model::{EpochMillis, NEVER, StickyRecord};

use crate::MigrationError;

/// What becomes of the source replica after a successful copy (docs/dcache-compatibility.md#source-and-target-modes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceState {
    Same,
    Cached,
    Precious,
    Removable,
    Delete,
}

/// The state of the target replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetState {
    /// The source's current state.
    Same,
    Cached,
    Precious,
}

/// A sticky record to set, with a relative lifetime.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModeRecord {
    pub owner: String,
    /// Seconds; `None` never expires.
    pub lifetime: Option<i64>,
}

impl ModeRecord {
    /// The record with its expiry counted from `from`.
    pub fn at(&self, from: EpochMillis) -> StickyRecord {
        let expire = match self.lifetime {
            None => NEVER,
            Some(0) => 0,
            Some(s) => from.saturating_add(s.saturating_mul(1000)),
        };
        StickyRecord::new(self.owner.clone(), expire)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceMode {
    pub state: SourceState,
    pub records: Vec<ModeRecord>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetMode {
    pub state: TargetState,
    pub records: Vec<ModeRecord>,
}

fn split(text: &str) -> Result<(&str, Vec<ModeRecord>), MigrationError> {
    let mut parts = text.split('+');
    let keyword = parts.next().unwrap_or("");
    let mut records = Vec::new();
    for part in parts {
        let syntax = || MigrationError::invalid(format!("{part}: Syntax error"));
        let (owner, lifetime) = match part.split_once('(') {
            None => (part, None),
            Some((owner, rest)) => {
                let digits = rest.strip_suffix(')').ok_or_else(syntax)?;
                let n: i32 = digits.parse().map_err(|_| syntax())?;
                if n < -1 {
                    return Err(MigrationError::invalid(format!("{n}: Invalid lifetime")));
                }
                (owner, if n == -1 { None } else { Some(i64::from(n)) })
            }
        };
        if owner.is_empty() || !owner.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(syntax());
        }
        records.push(ModeRecord { owner: owner.to_string(), lifetime });
    }
    Ok((keyword, records))
}

impl SourceMode {
    pub fn parse(text: &str) -> Result<SourceMode, MigrationError> {
        let (keyword, records) = split(text)?;
        let state = match keyword {
            "same" => SourceState::Same,
            "cached" => SourceState::Cached,
            "precious" => SourceState::Precious,
            "removable" => SourceState::Removable,
            "delete" => SourceState::Delete,
            _ => return Err(MigrationError::invalid(format!("{text}: Invalid value"))),
        };
        Ok(SourceMode { state, records })
    }
}

impl TargetMode {
    pub fn parse(text: &str) -> Result<TargetMode, MigrationError> {
        let (keyword, records) = split(text)?;
        let state = match keyword {
            "same" => TargetState::Same,
            "cached" => TargetState::Cached,
            "precious" => TargetState::Precious,
            _ => return Err(MigrationError::invalid(format!("{text}: Invalid value"))),
        };
        Ok(TargetMode { state, records })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(owner: &str, lifetime: Option<i64>) -> ModeRecord {
        ModeRecord { owner: owner.into(), lifetime }
    }

    #[test]
    fn source_modes() {
        let ok: &[(&str, SourceState, Vec<ModeRecord>)] = &[
            ("same", SourceState::Same, vec![]),
            ("delete", SourceState::Delete, vec![]),
            ("removable", SourceState::Removable, vec![]),
            ("cached+alice", SourceState::Cached, vec![rec("alice", None)]),
            (
                "precious+a(60)+b_2(-1)+c(0)",
                SourceState::Precious,
                vec![rec("a", Some(60)), rec("b_2", None), rec("c", Some(0))],
            ),
        ];
        for (text, state, records) in ok {
            assert_eq!(
                SourceMode::parse(text).unwrap(),
                SourceMode { state: *state, records: records.clone() },
                "{text}"
            );
        }
        let bad: &[(&str, &str)] = &[
            ("gone", "gone: Invalid value"),
            ("", ": Invalid value"),
            ("same+a(-2)", "-2: Invalid lifetime"),
            ("same+a(x)", "a(x): Syntax error"),
            ("same+a(1", "a(1: Syntax error"),
            ("same+", ": Syntax error"),
            ("same+a-b", "a-b: Syntax error"),
            ("same+a(99999999999)", "a(99999999999): Syntax error"),
        ];
        for (text, msg) in bad {
            assert_eq!(SourceMode::parse(text).unwrap_err().to_string(), *msg, "{text}");
        }
    }

    #[test]
    fn target_modes_refuse_destructive_states() {
        assert_eq!(TargetMode::parse("precious+x").unwrap().state, TargetState::Precious);
        for text in ["delete", "removable", "removable+x"] {
            assert_eq!(TargetMode::parse(text).unwrap_err().to_string(), format!("{text}: Invalid value"));
        }
    }

    #[test]
    fn lifetimes_become_absolute_from_a_moment() {
        assert_eq!(rec("a", None).at(1000), StickyRecord::new("a", NEVER));
        assert_eq!(rec("a", Some(0)).at(1000), StickyRecord::new("a", 0));
        assert_eq!(rec("a", Some(60)).at(1000), StickyRecord::new("a", 61_000));
    }
}
