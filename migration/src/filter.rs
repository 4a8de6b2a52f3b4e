//! Which source replicas a job selects (docs/dcache-compatibility.md#job-options). All given criteria must hold; with
//! none, every CACHED or PRECIOUS replica matches. Replicas in any other state never do.

use tidepool_p2p::PnfsId;
use tidepool_p2p::model::{AccessLatency, EpochMillis, FileAttributes, ReplicaState, RetentionPolicy, StickyRecord};

use crate::MigrationError;

/// A closed interval of integers: `n`, `n..`, `..m`, `n..m`, `..`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interval {
    pub min: Option<i64>,
    pub max: Option<i64>,
}

impl Interval {
    /// Parses dCache's interval syntax: split at the first `..`; each bound a signed decimal.
    pub fn parse(text: &str) -> Result<Interval, MigrationError> {
        let invalid = || MigrationError::invalid(format!("{text}: Invalid interval"));
        let bound = |s: &str| -> Result<Option<i64>, MigrationError> {
            if s.is_empty() { Ok(None) } else { s.parse().map(Some).map_err(|_| invalid()) }
        };
        let interval = match text.split_once("..") {
            None => {
                let n = bound(text)?.ok_or_else(invalid)?;
                Interval { min: Some(n), max: Some(n) }
            }
            Some((lo, hi)) => {
                if hi.contains("..") {
                    return Err(invalid());
                }
                Interval { min: bound(lo)?, max: bound(hi)? }
            }
        };
        if let (Some(lo), Some(hi)) = (interval.min, interval.max)
            && hi < lo
        {
            return Err(invalid());
        }
        Ok(interval)
    }

    pub fn contains(&self, v: i64) -> bool {
        self.min.is_none_or(|lo| v >= lo) && self.max.is_none_or(|hi| v <= hi)
    }
}

/// `-sticky`: bare (any record), or owners that must (or, with `-`, must not) have a record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StickyFilter {
    Any,
    Owners { required: Vec<String>, forbidden: Vec<String> },
}

/// Everything `-state -storage -cache -pnfsid -al -rp -size -accessed -sticky` asked for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileFilter {
    /// Only this state (CACHED or PRECIOUS); `None`: both.
    pub state: Option<ReplicaState>,
    pub storage_class: Option<String>,
    /// `Some("")` selects replicas without a cache class.
    pub cache_class: Option<String>,
    pub pnfsids: Option<Vec<PnfsId>>,
    pub access_latency: Option<AccessLatency>,
    pub retention_policy: Option<RetentionPolicy>,
    pub size: Option<Interval>,
    /// Seconds since the last access.
    pub accessed: Option<Interval>,
    pub sticky: Option<StickyFilter>,
}

/// What the filter looks at: a replica's attributes, state and sticky records.
pub struct Candidate<'a> {
    pub attrs: &'a FileAttributes,
    pub state: ReplicaState,
    pub sticky: &'a [StickyRecord],
}

/// The criterion of a [`FileFilter`] a replica fails (the first, in the order of the options'
/// help), as a dry run reports the replicas a job leaves out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Criterion {
    /// Not CACHED or PRECIOUS (or not the `-state` asked for).
    State,
    Storage,
    Cache,
    Pnfsid,
    AccessLatency,
    RetentionPolicy,
    Size,
    Accessed,
    Sticky,
}

impl Criterion {
    /// The option (or, for the state, the rule) as the operator knows it.
    pub fn as_str(self) -> &'static str {
        match self {
            Criterion::State => "-state",
            Criterion::Storage => "-storage",
            Criterion::Cache => "-cache",
            Criterion::Pnfsid => "-pnfsid",
            Criterion::AccessLatency => "-al",
            Criterion::RetentionPolicy => "-rp",
            Criterion::Size => "-size",
            Criterion::Accessed => "-accessed",
            Criterion::Sticky => "-sticky",
        }
    }
}

impl FileFilter {
    pub fn accepts(&self, c: &Candidate<'_>, now: EpochMillis) -> bool {
        self.miss(c, now).is_none()
    }

    /// The first criterion `c` fails; `None`: the filter selects it.
    pub fn miss(&self, c: &Candidate<'_>, now: EpochMillis) -> Option<Criterion> {
        let state_ok = match self.state {
            Some(s) => c.state == s,
            None => c.state.is_committed(),
        };
        let a = c.attrs;
        let checks = [
            (Criterion::State, state_ok),
            (
                Criterion::Storage,
                self.storage_class.as_ref().is_none_or(|s| a.storage_class.as_deref() == Some(s.as_str())),
            ),
            (
                Criterion::Cache,
                self.cache_class.as_ref().is_none_or(|s| match (s.as_str(), a.cache_class.as_deref()) {
                    ("", None) => true,
                    (want, Some(have)) => want == have,
                    _ => false,
                }),
            ),
            (Criterion::Pnfsid, self.pnfsids.as_ref().is_none_or(|ids| ids.contains(&a.pnfsid))),
            (Criterion::AccessLatency, self.access_latency.is_none_or(|al| a.access_latency == Some(al))),
            (Criterion::RetentionPolicy, self.retention_policy.is_none_or(|rp| a.retention_policy == Some(rp))),
            (Criterion::Size, self.size.is_none_or(|i| i64::try_from(a.size).is_ok_and(|s| i.contains(s)))),
            (Criterion::Accessed, self.accessed.is_none_or(|i| i.contains((now - a.access_time) / 1000))),
            (
                Criterion::Sticky,
                self.sticky.as_ref().is_none_or(|f| match f {
                    StickyFilter::Any => !c.sticky.is_empty(),
                    StickyFilter::Owners { required, forbidden } => {
                        let has = |o: &String| c.sticky.iter().any(|r| &r.owner == o);
                        required.iter().all(has) && !forbidden.iter().any(has)
                    }
                }),
            ),
        ];
        checks.into_iter().find(|(_, ok)| !ok).map(|(why, _)| why)
    }
}

/// Parses the `-sticky` value: empty (bare flag) or `[-]owner[,...]`. Empty entries between
/// commas are skipped, but a list that names no owner (`,`) or a `-` without an owner is
/// refused: either would select every replica, which is never what such a typo meant.
pub fn parse_sticky(value: &str) -> Result<StickyFilter, MigrationError> {
    if value.is_empty() {
        return Ok(StickyFilter::Any);
    }
    let shown = tidepool_p2p::error::truncate_echo(value, tidepool_p2p::error::MAX_ECHO);
    let (mut required, mut forbidden) = (Vec::new(), Vec::new());
    for owner in value.split(',').filter(|o| !o.is_empty()) {
        match owner.strip_prefix('-') {
            Some("") => {
                return Err(MigrationError::invalid(format!(
                    "{shown}: Invalid value for option -sticky: '-' must be followed by an owner"
                )));
            }
            Some(o) => forbidden.push(o.to_string()),
            None => required.push(owner.to_string()),
        }
    }
    if required.is_empty() && forbidden.is_empty() {
        return Err(MigrationError::invalid(format!("{shown}: Invalid value for option -sticky: no owner given")));
    }
    Ok(StickyFilter::Owners { required, forbidden })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_000_000_000;

    fn attrs() -> FileAttributes {
        FileAttributes {
            pnfsid: PnfsId::from_random([1; 16]),
            size: 1000,
            checksum: None,
            storage_class: Some("atlas:raw".into()),
            cache_class: None,
            access_latency: Some(AccessLatency::Nearline),
            retention_policy: Some(RetentionPolicy::Custodial),
            hsm: None,
            creation_time: 0,
            access_time: NOW - 90_000,
        }
    }

    #[test]
    fn intervals() {
        type Bounds = Option<(Option<i64>, Option<i64>)>;
        let table: &[(&str, Bounds)] = &[
            ("5", Some((Some(5), Some(5)))),
            ("5..", Some((Some(5), None))),
            ("..7", Some((None, Some(7)))),
            ("-3..7", Some((Some(-3), Some(7)))),
            ("..", Some((None, None))),
            ("7..5", None),
            ("1..2..3", None),
            ("a..3", None),
            ("", None),
            ("1k", None),
        ];
        for (text, want) in table {
            let got = Interval::parse(text).ok().map(|i| (i.min, i.max));
            assert_eq!(got, *want, "{text}");
        }
        assert_eq!(Interval::parse("7..5").unwrap_err().to_string(), "7..5: Invalid interval");
    }

    fn check(filter: FileFilter, state: ReplicaState, sticky: &[StickyRecord], want: bool) {
        let a = attrs();
        let c = Candidate { attrs: &a, state, sticky };
        assert_eq!(filter.accepts(&c, NOW), want, "{filter:?} on {state} {sticky:?}");
    }

    #[test]
    fn a_miss_names_the_first_criterion_that_fails() {
        use ReplicaState::*;
        let a = attrs();
        let pin = [StickyRecord { owner: "alice".into(), expire: -1 }];
        let none = FileFilter::default();
        let sticky = FileFilter { sticky: Some(parse_sticky("-alice").unwrap()), ..none.clone() };
        let small = FileFilter { size: Some(Interval::parse("..10").unwrap()), ..sticky.clone() };
        let table: &[(&FileFilter, ReplicaState, &[StickyRecord], Option<Criterion>)] = &[
            (&none, Cached, &[], None),
            (&none, Broken, &[], Some(Criterion::State)),
            (&sticky, Precious, &pin, Some(Criterion::Sticky)),
            (&sticky, Precious, &[], None),
            (&small, Precious, &pin, Some(Criterion::Size)),
        ];
        for (filter, state, sticky, want) in table {
            let c = Candidate { attrs: &a, state: *state, sticky };
            assert_eq!(filter.miss(&c, NOW), *want, "{filter:?} on {state} {sticky:?}");
            assert_eq!(filter.accepts(&c, NOW), want.is_none());
        }
    }

    #[test]
    fn criteria_are_anded_and_transient_states_never_match() {
        use ReplicaState::*;
        let none = FileFilter::default();
        check(none.clone(), Cached, &[], true);
        check(none.clone(), Precious, &[], true);
        for s in [New, FromClient, FromPool, FromStore, Broken, Removed, Destroyed] {
            check(none.clone(), s, &[], false);
        }
        check(FileFilter { state: Some(Precious), ..none.clone() }, Cached, &[], false);
        check(FileFilter { storage_class: Some("atlas:raw".into()), ..none.clone() }, Cached, &[], true);
        check(FileFilter { storage_class: Some("atlas:*".into()), ..none.clone() }, Cached, &[], false);
        check(FileFilter { cache_class: Some(String::new()), ..none.clone() }, Cached, &[], true);
        check(FileFilter { cache_class: Some("x".into()), ..none.clone() }, Cached, &[], false);
        check(FileFilter { access_latency: Some(AccessLatency::Online), ..none.clone() }, Cached, &[], false);
        check(FileFilter { retention_policy: Some(RetentionPolicy::Custodial), ..none.clone() }, Cached, &[], true);
        check(FileFilter { size: Some(Interval::parse("1000").unwrap()), ..none.clone() }, Cached, &[], true);
        check(FileFilter { size: Some(Interval::parse("1001..").unwrap()), ..none.clone() }, Cached, &[], false);
        // Accessed 90 s ago.
        check(FileFilter { accessed: Some(Interval::parse("0..60").unwrap()), ..none.clone() }, Cached, &[], false);
        check(FileFilter { accessed: Some(Interval::parse("60..").unwrap()), ..none.clone() }, Cached, &[], true);
        check(FileFilter { pnfsids: Some(vec![PnfsId::from_random([2; 16])]), ..none.clone() }, Cached, &[], false);
    }

    #[test]
    fn sticky_owners_and_negation() {
        use ReplicaState::Cached;
        let recs = [StickyRecord::new("alice", 5), StickyRecord::new("PinManager-1", -1)];
        let f = |v: &str| FileFilter { sticky: Some(parse_sticky(v).unwrap()), ..FileFilter::default() };
        check(f(""), Cached, &recs, true);
        check(f(""), Cached, &[], false);
        check(f("alice"), Cached, &recs, true);
        check(f("alice,bob"), Cached, &recs, false);
        check(f("-bob"), Cached, &recs, true);
        check(f("-alice"), Cached, &recs, false);
        check(f("-bob"), Cached, &[], true);
        check(f("alice,-PinManager-1"), Cached, &recs, false);
        check(f("alice,"), Cached, &recs, true);
    }

    /// Values that would select every replica are refused, naming the value.
    #[test]
    fn sticky_values_without_an_owner_are_refused() {
        let table: &[(&str, &str)] = &[
            (",", ",: Invalid value for option -sticky: no owner given"),
            (",,", ",,: Invalid value for option -sticky: no owner given"),
            ("-", "-: Invalid value for option -sticky: '-' must be followed by an owner"),
            ("alice,-", "alice,-: Invalid value for option -sticky: '-' must be followed by an owner"),
            ("-,", "-,: Invalid value for option -sticky: '-' must be followed by an owner"),
        ];
        for (value, want) in table {
            assert_eq!(parse_sticky(value).unwrap_err().to_string(), *want, "{value:?}");
        }
        assert_eq!(parse_sticky(""), Ok(StickyFilter::Any));
        assert_eq!(
            parse_sticky("a,-b"),
            Ok(StickyFilter::Owners { required: vec!["a".into()], forbidden: vec!["b".into()] })
        );
    }
}
