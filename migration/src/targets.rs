//! A job's target set (docs/dcache-compatibility.md#job-options): pools by name or the pools of pool groups,
//! narrowed by `-include`/`-exclude` globs, never the source itself. Resolved once, when the
//! job is created, against the cluster file; a name the cluster file does not know is refused
//! there rather than left to sleep for ever.

use chrono::{Datelike, Timelike};
use tidepool_p2p::PoolName;
use tidepool_p2p::message::PoolCost;

use crate::MigrationError;
use crate::definition::Targets;
use crate::expr::{self, Expr, ExprError, Value};

/// What the module knows of the cluster.
pub trait Cluster {
    fn pools(&self) -> Vec<PoolName>;
    fn pool_group(&self, group: &str) -> Vec<PoolName>;
    fn groups_of(&self, pool: &PoolName) -> Vec<String>;
    /// The pool groups of a link; `None` if there is no such link.
    fn link(&self, name: &str) -> Option<Vec<String>>;
    /// The pools attached to an HSM instance.
    fn hsm_pools(&self, hsm: &str) -> Vec<PoolName>;
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

/// `source.<field>` or `target.<field>` of a pool (docs/dcache-compatibility.md#the-expression-language).
/// `cpuCost` is the number of transfers the pool is receiving (Tidepool has no cost module).
pub fn pool_value(name: &PoolName, cost: &PoolCost, field: &str) -> Option<Value> {
    let n = |v: u64| Some(Value::Number(v as f64));
    match field {
        "name" => Some(Value::String(name.to_string())),
        "cpuCost" => Some(Value::Number(f64::from(cost.load))),
        "free" => n(cost.space.free),
        "total" => n(cost.space.total),
        "removable" => n(cost.space.removable),
        "used" => n(cost.space.used),
        _ => None,
    }
}

/// Whether an online target passes the expression filters
/// (docs/dcache-compatibility.md#the-expression-language): excluded if `-exclude-when` holds; included if
/// `-include-when` holds, unless `-include` globs were given (then the globs alone decide, in [`resolve`]).
/// An expression that cannot be evaluated is an error (the caller leaves the pool out).
pub fn passes(
    include_when: Option<&Expr>,
    exclude_when: Option<&Expr>,
    include_globs: bool,
    source: (&PoolName, &PoolCost),
    target: (&PoolName, &PoolCost),
    now: &(impl Datelike + Timelike),
) -> Result<bool, ExprError> {
    let values = |sym: &str| -> Option<Value> {
        if let Some(field) = sym.strip_prefix("source.") {
            pool_value(source.0, source.1, field)
        } else if let Some(field) = sym.strip_prefix("target.") {
            pool_value(target.0, target.1, field)
        } else {
            expr::time_value(sym, now)
        }
    };
    if let Some(e) = exclude_when
        && e.eval_bool(&values)?
    {
        return Ok(false);
    }
    match include_when {
        Some(e) if !include_globs => e.eval_bool(&values),
        _ => Ok(true),
    }
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
        Targets::Link(link) => {
            let groups = cluster
                .link(link)
                .ok_or_else(|| MigrationError::invalid(format!("no link named {link} in the cluster file")))?;
            let members: Vec<PoolName> = groups.iter().flat_map(|g| cluster.pool_group(g)).collect();
            known.iter().filter(|p| members.contains(p)).cloned().collect()
        }
        Targets::Hsm(names) => {
            let members: Vec<PoolName> = names.iter().flat_map(|h| cluster.hsm_pools(h)).collect();
            if members.is_empty() {
                return Err(MigrationError::invalid(format!(
                    "no pool of the cluster file is attached to {}",
                    names.join(" or ")
                )));
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
        fn link(&self, name: &str) -> Option<Vec<String>> {
            (name == "write-link").then(|| vec!["tape".into(), "both".into()])
        }
        fn hsm_pools(&self, hsm: &str) -> Vec<PoolName> {
            if hsm == "osm" { vec![p("tape1"), p("pool3")] } else { vec![] }
        }
    }

    fn names(v: Vec<PoolName>) -> Vec<String> {
        v.into_iter().map(|p| p.to_string()).collect()
    }

    fn cost(free: u64, total: u64) -> PoolCost {
        let space = tidepool_p2p::model::SpaceInfo { total, used: total - free, free, precious: 0, removable: 0 };
        PoolCost { space, load: 0, accepts: true, enabled: true, run: 0 }
    }

    /// The expression cases dCache's own pool-list filter tests check
    /// (docs/dcache-compatibility.md#the-expression-language).
    #[test]
    fn expression_filters() {
        let e = |text: &str| expr::parse_boolean(text, &expr::target_symbols).unwrap();
        let now = chrono::NaiveDate::from_ymd_opt(2026, 11, 22).unwrap().and_hms_opt(3, 0, 0).unwrap();
        let src = p("source");
        let sc = cost(50, 100);
        let keep = |inc: Option<&Expr>, exc: Option<&Expr>, globs: bool| -> Vec<&str> {
            ["pool1", "pool2", "pool3"]
                .into_iter()
                .filter(|n| passes(inc, exc, globs, (&src, &sc), (&p(n), &cost(10, 100)), &now).unwrap())
                .collect()
        };
        let name12 = e("target.name =~ 'pool[12]'");
        assert_eq!(keep(None, Some(&name12), false), ["pool3"], "exclude-when");
        assert_eq!(keep(Some(&name12), None, false), ["pool1", "pool2"], "include-when");
        assert_eq!(
            keep(Some(&name12), None, true),
            ["pool1", "pool2", "pool3"],
            "-include globs win over -include-when"
        );
        assert_eq!(
            keep(Some(&name12), Some(&name12), false),
            Vec::<&str>::new(),
            "both included and excluded: dropped"
        );
        assert_eq!(keep(None, Some(&e("source.name == 'source'")), false), Vec::<&str>::new());
        let emptier = e("target.free > source.free");
        assert!(passes(Some(&emptier), None, false, (&src, &sc), (&p("a"), &cost(60, 100)), &now).unwrap());
        assert!(!passes(Some(&emptier), None, false, (&src, &sc), (&p("a"), &cost(40, 100)), &now).unwrap());
        let night = e("time.hour < 6");
        assert!(passes(Some(&night), None, false, (&src, &sc), (&p("a"), &cost(1, 1)), &now).unwrap());
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
        assert_eq!(ok(Targets::Link("write-link".into()), &[], &[]).unwrap(), ["pool3", "tape1"]);
        assert_eq!(ok(Targets::Link("nope".into()), &[], &[]).unwrap_err(), "no link named nope in the cluster file");
        assert_eq!(ok(Targets::Hsm(vec!["osm".into(), "x".into()]), &[], &[]).unwrap(), ["pool3", "tape1"]);
        assert_eq!(
            ok(Targets::Hsm(vec!["x".into()]), &[], &[]).unwrap_err(),
            "no pool of the cluster file is attached to x"
        );
        let three = resolve(&Fixed, &p("pool3"), &groups(&[]), &[], &[]).unwrap_err().to_string();
        assert_eq!(three, "Pool pool3 is a member of multiple pool groups: [disk, both]");
    }
}
