//! Safe start: `tidepool pool --check` and the daemon share one validation, a pool starts only
//! in a directory `tidepool init` marked (or an old pool directory holding metadata), and the
//! generated man pages and completions (the package's assets) name the commands.

use std::fs;
use std::path::Path;

use tidepool_pool::process::pool_dir::MARKER;
use tidepool_tests::{Cluster, Output};

/// A command's error message: its standard error from the `tidepool: ` line on (a message may
/// run over several lines, as a TOML parse error does), without the log lines before it.
fn message(out: &Output) -> Vec<&str> {
    match out.stderr.find("tidepool: ") {
        Some(at) => vec![out.stderr[at..].trim_end()],
        None => Vec::new(),
    }
}

/// Runs `--check` and the daemon on the pool's config as it is now; both must fail, with one
/// and the same message, which is returned.
#[track_caller]
fn refused_alike(cluster: &Cluster, pool: &str) -> String {
    let check = cluster.check(pool);
    let daemon = cluster.start_refused(pool);
    check.assert_code(1, "tidepool pool --check");
    daemon.assert_code(1, "tidepool pool");
    assert!(check.stdout.is_empty(), "a failed check prints no summary:\n{check}");
    let (from_check, from_daemon) = (message(&check), message(&daemon));
    assert_eq!(from_check.len(), 1, "{check}");
    assert_eq!(from_check, from_daemon, "--check and the daemon disagree:\n{check}\n{daemon}");
    from_check[0].to_string()
}

#[test]
fn check_accepts_a_good_config_and_refuses_a_bad_one_with_the_daemons_message() {
    let cluster = Cluster::new(&[("pool1", &["disk"])]);
    let ok = cluster.check("pool1");
    ok.assert_success("tidepool pool --check");
    assert!(ok.stdout.contains("ok, pool pool1 would start"), "{ok}");
    assert!(ok.stdout.contains(&format!("{} (marked)", cluster.data_dir("pool1").display())), "{ok}");
    assert!(ok.stdout.contains(&cluster.spec("pool1").p2p.to_string()), "{ok}");

    let config = fs::read_to_string(cluster.config_path("pool1")).unwrap();
    let cert = fs::read_to_string(cluster.path("pool1.pool.crt")).unwrap();
    let members = fs::read_to_string(cluster.cluster_file()).unwrap();
    let restore = |cluster: &Cluster| {
        fs::write(cluster.config_path("pool1"), &config).unwrap();
        fs::write(cluster.path("pool1.pool.crt"), &cert).unwrap();
        fs::write(cluster.cluster_file(), &members).unwrap();
    };
    cluster.set_capacity("pool1", "0");
    assert!(refused_alike(&cluster, "pool1").contains("capacity must be more than 0 bytes"));
    restore(&cluster);
    cluster.append_config("pool1", "colour = \"red\"\n");
    assert!(refused_alike(&cluster, "pool1").contains("colour"));
    restore(&cluster);
    fs::write(cluster.path("pool1.pool.crt"), "not a certificate\n").unwrap();
    assert!(refused_alike(&cluster, "pool1").contains("pool1.pool.crt: holds no certificate"));
    restore(&cluster);
    // An admin's certificate: the pool would speak as someone else.
    cluster.append_config("pool1", "[tls]\ncert = \"admin.admin.crt\"\n");
    assert!(refused_alike(&cluster, "pool1").contains("is admin:admin, not pool:pool1"));
    restore(&cluster);
    fs::write(
        cluster.cluster_file(),
        "[[pool]]\nname = \"elsewhere\"\np2p = \"127.0.0.1:1\"\nadmin = \"127.0.0.1:2\"\n",
    )
    .unwrap();
    assert!(refused_alike(&cluster, "pool1").contains("pool pool1 is not listed in the cluster file"));

    // The failed starts changed nothing: repaired, the same files pass.
    restore(&cluster);
    cluster.check("pool1").assert_success("--check after the repairs");
}

#[test]
fn a_missing_data_dir_is_refused_with_the_way_to_initialise_it() {
    let mut cluster = Cluster::new(&[("pool1", &[])]);
    let dir = cluster.data_dir("pool1");
    fs::remove_dir_all(&dir).unwrap();
    let message = refused_alike(&cluster, "pool1");
    assert!(message.contains("does not exist"), "{message}");
    let hint = format!("tidepool init --config {}", cluster.config_path("pool1").display());
    assert!(message.contains(&hint), "{message}");
    assert!(!dir.exists(), "a refused start creates nothing");

    let init = cluster.init("pool1");
    init.assert_success("tidepool init");
    assert!(init.stdout.contains("created"), "{init}");
    assert!(dir.join(MARKER).is_file());
    cluster.start("pool1");
    assert!(cluster.info("pool1").contains("pool1"));
}

#[test]
fn an_empty_directory_without_a_marker_is_refused_like_an_unmounted_disk() {
    let mut cluster = Cluster::new(&[("pool1", &[])]);
    let dir = cluster.data_dir("pool1");
    fs::remove_dir_all(&dir).unwrap();
    fs::create_dir(&dir).unwrap();
    let message = refused_alike(&cluster, "pool1");
    assert!(message.contains("is not a pool directory") && message.contains("tidepool init --config"), "{message}");
    assert_eq!(fs::read_dir(&dir).unwrap().count(), 0, "a refused start leaves the directory empty");

    let init = cluster.init("pool1");
    init.assert_success("tidepool init");
    assert!(init.stdout.contains("marked the existing directory"), "{init}");
    cluster.start("pool1");
}

#[test]
fn a_pool_directory_from_before_markers_still_starts_and_gets_its_marker() {
    let mut cluster = Cluster::new(&[("pool1", &[])]);
    cluster.start("pool1");
    let file = cluster.write_file("a.dat", b"kept across the upgrade");
    let ids = cluster.put_ok("pool1", &[&file], &[]);
    cluster.stop("pool1");
    let marker = cluster.data_dir("pool1").join(MARKER);
    fs::remove_file(&marker).unwrap();

    let check = cluster.check("pool1");
    check.assert_success("--check of an unmarked pool directory");
    assert!(check.stdout.contains("without a marker; the daemon marks it at start"), "{check}");
    assert!(!marker.exists(), "--check changes nothing");

    cluster.start("pool1");
    assert!(marker.is_file(), "the daemon marked the directory");
    let listed: Vec<String> = cluster.rep_ls("pool1").into_iter().map(|r| r.pnfsid).collect();
    assert_eq!(listed, ids);
    cluster.wait_for_log_line("pool1", &["marked the pool directory"], std::time::Duration::from_secs(10));
}

#[test]
fn init_never_takes_a_directory_marked_for_another_pool() {
    let mut cluster = Cluster::new(&[("pool1", &[]), ("pool2", &[])]);
    let theirs = cluster.data_dir("pool2").join(MARKER);
    let ours = cluster.data_dir("pool1").join(MARKER);
    fs::copy(&theirs, &ours).unwrap();
    let before = fs::read(&ours).unwrap();

    let init = cluster.init("pool1");
    init.assert_code(1, "tidepool init over pool2's marker");
    let expected = format!(
        "tidepool: data_dir {} belongs to pool pool2 (its {MARKER} marker says so), not to pool1",
        cluster.data_dir("pool1").display()
    );
    assert_eq!(message(&init), [expected.as_str()], "{init}");
    assert_eq!(fs::read(&ours).unwrap(), before, "the marker is left alone");
    assert_eq!(refused_alike(&cluster, "pool1"), expected);

    fs::remove_file(&ours).unwrap();
    cluster.init("pool1").assert_success("tidepool init once the directory is free");
    cluster.start("pool1");
}

#[test]
fn generated_man_pages_and_completions_name_the_commands() {
    let cluster = Cluster::new(&[("pool1", &[])]);
    let out = cluster.path("generated");
    let listed = cluster.tidepool(&["generate", "all", "--out"], &[out.as_os_str()]);
    listed.assert_success("tidepool generate all");
    let read = |rel: &str| {
        let path = out.join(rel);
        assert!(listed.stdout.lines().any(|l| Path::new(l) == path), "{} not listed:\n{listed}", path.display());
        let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        assert!(!text.trim().is_empty(), "{} is empty", path.display());
        text
    };
    let man = read("man/tidepool.1");
    assert!(man.starts_with(".ie") || man.contains(".TH"), "roff: {man}");
    for sub in ["pool", "init", "ca", "put", "get", "demo", "generate"] {
        assert!(man.contains(sub), "tidepool.1 names {sub}");
    }
    assert!(read("man/tidepool-pool.1").contains("check"));
    assert!(read("man/tidepool-init.1").contains("config"));
    assert!(read("man/tidepool-admin.1").contains("cluster"));
    let bash = read("completions/bash/tidepool");
    for sub in ["pool", "init", "ca", "put", "get", "demo", "generate", "--check", "--config"] {
        assert!(bash.contains(sub), "the bash completion names {sub}");
    }
    assert!(read("completions/bash/tidepool-admin").contains("--cluster"));
    assert!(read("completions/zsh/_tidepool").contains("init"));
    assert!(read("completions/zsh/_tidepool-admin").contains("--cluster"));
    assert!(read("completions/fish/tidepool.fish").contains("init"));
    assert!(read("completions/fish/tidepool-admin.fish").contains("cluster"));

    // One shell at a time, as documented.
    let zsh = cluster.path("zsh");
    cluster.tidepool(&["generate", "completions", "zsh", "--out"], &[zsh.as_os_str()]).assert_success("zsh");
    assert!(zsh.join("_tidepool").is_file() && zsh.join("_tidepool-admin").is_file());
}

/// The Debian package (pool/Cargo.toml, `[package.metadata.deb]`) takes its files from where
/// `tidepool generate all --out target/release/generated` writes them: every asset must match
/// at least one file, so the package cannot silently lose its man pages or completions.
#[test]
fn every_package_asset_is_there_once_generated() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace").to_path_buf();
    let pool = root.join("pool");
    let manifest: toml::Table = toml::from_str(&fs::read_to_string(pool.join("Cargo.toml")).unwrap()).unwrap();
    let assets = manifest["package"]["metadata"]["deb"]["assets"].as_array().expect("deb assets").clone();
    let cluster = Cluster::new(&[("pool1", &[])]);
    let generated = cluster.path("generated");
    cluster.tidepool(&["generate", "all", "--out"], &[generated.as_os_str()]).assert_success("generate all");
    let mut checked = 0;
    for asset in &assets {
        let source = asset[0].as_str().expect("an asset's source");
        let path = if let Some(rest) = source.strip_prefix("target/release/generated/") {
            generated.join(rest)
        } else if let Some(binary) = source.strip_prefix("target/release/") {
            // The binaries the tests run, built by `cargo build --workspace --bins`.
            let bins = tidepool_tests::binaries();
            bins.tidepool.with_file_name(binary)
        } else {
            pool.join(source)
        };
        let (dir, pattern) = (path.parent().unwrap(), path.file_name().unwrap().to_str().unwrap());
        let matches = fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("asset {source}: read {}: {e}", dir.display()))
            .filter_map(|e| e.ok())
            .filter(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                match pattern.split_once('*') {
                    Some((head, tail)) => name.starts_with(head) && name.ends_with(tail),
                    None => name == pattern,
                }
            })
            .filter(|e| e.metadata().is_ok_and(|m| m.is_file() && m.len() > 0))
            .count();
        assert!(matches > 0, "asset {source}: no such file ({})", path.display());
        checked += 1;
    }
    assert!(checked >= 7, "binaries, unit, man pages, three shells: {assets:?}");
}
