//! A job's target set (reference §2.5, Appendix A): pools by name or the pools of pool groups,
//! narrowed by `-include`/`-exclude` globs, never the source itself. Resolved once, when the
//! job is created, against the cluster file; a name the cluster file does not know is refused
//! there rather than left to sleep for ever.

use tidepool_p2p::PoolName;

use crate::MigrationError;
use crate::definition::Targets;

/// What the module knows of the cluster.
pub trait Cluster {
    fn pools(&self) -> Vec<PoolName>;
    fn pool_group(&self, group: &str) -> Vec<PoolName>;
    fn groups_of(&self, pool: &PoolName) -> Vec<String>;
}

/// Whole-name glob match: `*` any sequence, `?` any one character.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// The pools a job may use, in cluster-file order.
pub fn resolve(
    cluster: &dyn Cluster,
    source: &PoolName,
    targets: &Targets,
    include: &[String],
    exclude: &[String],
) -> Result<Vec<PoolName>, MigrationError> {
    let known = cluster.pools();
    let mut chosen: Vec<PoolName> = match targets {
        Targets::Pools(names) => {
            for n in names {
                if !known.contains(n) {
                    return Err(MigrationError::invalid(format!("pool {n} is not in the cluster file")));
                }
            }
            known.iter().filter(|p| names.contains(p)).cloned().collect()
        }
        Targets::PoolGroups(groups) => {
            let groups = if groups.is_empty() {
                let own = cluster.groups_of(source);
                match own.len() {
                    1 => own,
                    0 => {
                        return Err(MigrationError::invalid(format!(
                            "Pool {source} is not a member of any pool group; name the target pool groups"
                        )));
                    }
                    _ => {
                        return Err(MigrationError::invalid(format!(
                            "Pool {source} is a member of multiple pool groups: [{}]",
                            own.join(", ")
                        )));
                    }
                }
            } else {
                groups.clone()
            };
            let mut members = Vec::new();
            for g in &groups {
                let pools = cluster.pool_group(g);
                if pools.is_empty() {
                    return Err(MigrationError::invalid(format!("no pool group named {g} in the cluster file")));
                }
                members.extend(pools);
            }
            known.iter().filter(|p| members.contains(p)).cloned().collect()
        }
    };
    chosen.retain(|p| p != source);
    chosen.retain(|p| !exclude.iter().any(|g| glob_match(g, p.as_str())));
    if !include.is_empty() {
        chosen.retain(|p| include.iter().any(|g| glob_match(g, p.as_str())));
    }
    if chosen.is_empty() {
        return Err(MigrationError::invalid(format!(
            "no target pools: every candidate is the source pool {source} or excluded by -include/-exclude"
        )));
    }
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed;

    fn p(n: &str) -> PoolName {
        n.parse().unwrap()
    }

    impl Cluster for Fixed {
        fn pools(&self) -> Vec<PoolName> {
            ["pool1", "pool2", "pool3", "tape1"].iter().map(|n| p(n)).collect()
        }
        fn pool_group(&self, group: &str) -> Vec<PoolName> {
            match group {
                "disk" => vec![p("pool1"), p("pool2"), p("pool3")],
                "tape" => vec![p("tape1")],
                "both" => vec![p("pool3"), p("tape1")],
                _ => vec![],
            }
        }
        fn groups_of(&self, pool: &PoolName) -> Vec<String> {
            match pool.as_str() {
                "pool1" | "pool2" => vec!["disk".into()],
                "pool3" => vec!["disk".into(), "both".into()],
                _ => vec![],
            }
        }
    }

    fn names(v: Vec<PoolName>) -> Vec<String> {
        v.into_iter().map(|p| p.to_string()).collect()
    }

    #[test]
    fn globs() {
        for (pat, text, want) in [
            ("pool*", "pool12", true),
            ("pool?", "pool1", true),
            ("pool?", "pool12", false),
            ("*", "", true),
            ("p*l*2", "pool12", true),
            ("pool1", "pool12", false),
            ("", "a", false),
        ] {
            assert_eq!(glob_match(pat, text), want, "{pat} on {text}");
        }
    }

    #[test]
    fn targets_resolve_against_the_cluster() {
        let src = p("pool1");
        let pools = |names: &[&str]| Targets::Pools(names.iter().map(|n| p(n)).collect());
        let groups = |g: &[&str]| Targets::PoolGroups(g.iter().map(|s| s.to_string()).collect());
        let ok = |t: Targets, inc: &[&str], exc: &[&str]| {
            let inc: Vec<String> = inc.iter().map(|s| s.to_string()).collect();
            let exc: Vec<String> = exc.iter().map(|s| s.to_string()).collect();
            resolve(&Fixed, &src, &t, &inc, &exc).map(names).map_err(|e| e.to_string())
        };
        assert_eq!(ok(pools(&["pool3", "pool2"]), &[], &[]).unwrap(), ["pool2", "pool3"]);
        assert_eq!(ok(pools(&["pool1", "pool2"]), &[], &[]).unwrap(), ["pool2"], "the source is never a target");
        assert_eq!(ok(groups(&[]), &[], &[]).unwrap(), ["pool2", "pool3"], "the source's own group");
        assert_eq!(ok(groups(&["disk", "tape"]), &[], &["pool3"]).unwrap(), ["pool2", "tape1"]);
        assert_eq!(ok(groups(&["disk", "tape"]), &["t*"], &[]).unwrap(), ["tape1"]);
        assert_eq!(ok(pools(&["pool9"]), &[], &[]).unwrap_err(), "pool pool9 is not in the cluster file");
        assert_eq!(ok(groups(&["nope"]), &[], &[]).unwrap_err(), "no pool group named nope in the cluster file");
        assert!(ok(pools(&["pool1"]), &[], &[]).unwrap_err().starts_with("no target pools"));
        let three = resolve(&Fixed, &p("pool3"), &groups(&[]), &[], &[]).unwrap_err().to_string();
        assert_eq!(three, "Pool pool3 is a member of multiple pool groups: [disk, both]");
    }
}
