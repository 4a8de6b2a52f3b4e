//! Permanent migration jobs, `save`, and their restore when a real `tidepool pool` daemon
//! restarts (issue 6): a saved job comes back after `kill -9` with its id, command and
//! concurrency and every file reaches the target once; cancelled-and-saved jobs and jobs created
//! after the last `save` stay gone; a cancelled job that was not saved comes back, and
//! `migration ls` says so beforehand; a damaged saved entry is reported and skipped; SIGTERM
//! with jobs under way leaves no partial replica on any target.
//!
//! As in `migration.rs`, nothing sleeps to let a job get somewhere. A job is held where a test
//! needs it: `pp set max active 0` on a target queues the job's copies there, and
//! [`Cluster::freeze`] (SIGSTOP) stops a target that is receiving a file.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tidepool_p2p::ErrorCode;
use tidepool_repository::{ReplicaStore, SledStore};
use tidepool_tests::{
    CACHED, Cluster, JobLine, PpState, assert_bytes, assert_no_partial_replica, create, ok, rc, report_field, started,
    stored, two_pools, wait_until,
};

/// How long a small job may take to finish (a few seconds at most in a debug build).
const JOB_WAIT: Duration = Duration::from_secs(20);
/// How long a test waits for something it has caused to show (a queued transfer, a state).
const SHOW_WAIT: Duration = Duration::from_secs(10);
/// The key of the pool's metadata store under which `save` keeps the migration module's
/// settings and permanent jobs (`pool/src/migration_env.rs`).
const SAVED_KEY: &str = "migration-saved";
/// The header of the saved text.
const SAVE_HEADER: &str = "tidepool-migration-save 1";
/// The header of the migration section at the end of a pool's `info`.
const INFO_SECTION: &str = "--- migration (Replica migration module client) ---";

/// `(len, seed)` for `put_samples`: one file per seed, of 1,000 to about 120,000 bytes.
fn seeds(range: std::ops::Range<u64>) -> Vec<(usize, u64)> {
    range.map(|seed| (1000 + (seed as usize * 7919) % 120_000, seed)).collect()
}

fn ids(files: &[(String, Vec<u8>)]) -> BTreeSet<String> {
    files.iter().map(|(id, _)| id.clone()).collect()
}

/// `migration ls` as (id, state, command without its mark, mark).
#[track_caller]
fn ls(cluster: &Cluster, pool: &str) -> Vec<(String, String, String, Option<String>)> {
    cluster
        .migration_ls(pool)
        .iter()
        .map(|j| {
            let (command, mark) = j.saved_mark();
            (j.id.clone(), j.state.clone(), command.to_string(), mark.map(str::to_string))
        })
        .collect()
}

/// `migration ls` has exactly one job, `id` with `command`, not ended and without a mark
/// (saved jobs that could not be restored, listed as UNRESTORED, are not counted).
#[track_caller]
fn assert_only_job(cluster: &Cluster, pool: &str, id: &str, command: &str) {
    let jobs: Vec<_> = ls(cluster, pool).into_iter().filter(|j| j.1 != "UNRESTORED").collect();
    assert_eq!(jobs.len(), 1, "one job expected: {jobs:?}");
    let (got_id, state, got_command, mark) = &jobs[0];
    assert_eq!((got_id.as_str(), got_command.as_str(), mark), (id, command, &None), "{jobs:?}");
    assert!(
        !["FINISHED", "CANCELLED", "CANCELLING", "FAILED", "STOPPING"].contains(&state.as_str()),
        "a permanent job runs: {jobs:?}"
    );
}

/// The `save` reply for `jobs` permanent jobs with default concurrency `default`.
fn saved_reply(default: usize, jobs: usize) -> String {
    format!(
        "Saved: default concurrency {default}, {jobs} permanent migration job{}\n",
        if jobs == 1 { "" } else { "s" }
    )
}

/// The lines after the migration section's header in the pool's `info` (empty when there is
/// no such section).
#[track_caller]
fn info_migration_lines(cluster: &Cluster, pool: &str) -> Vec<String> {
    let info = cluster.info(pool);
    // The section ends at the next one (`--- service ---`) or at the end.
    info.lines()
        .skip_while(|l| *l != INFO_SECTION)
        .skip(1)
        .take_while(|l| !l.starts_with("--- "))
        .map(str::to_string)
        .collect()
}

/// Waits until `pool` holds every pnfsid of `want` (and maybe others); returns what it holds.
#[track_caller]
fn wait_holds(cluster: &Cluster, pool: &str, want: &BTreeSet<String>, timeout: Duration) -> BTreeSet<String> {
    wait_until(&format!("{pool} holding all {} files", want.len()), timeout, || {
        // Only committed replicas (cached or precious): one still arriving cannot be read yet.
        let committed = |r: &tidepool_tests::RepLine| r.flags.starts_with("<C") || r.flags.starts_with("<-P");
        let held: BTreeSet<String> = cluster.rep_ls(pool).into_iter().filter(committed).map(|r| r.pnfsid).collect();
        held.is_superset(want).then_some(held)
    })
}

/// Waits until `pool` has no incoming transfer running or queued.
#[track_caller]
fn wait_no_transfers(cluster: &Cluster, pool: &str, timeout: Duration) {
    wait_until(&format!("{pool} ending its incoming transfers"), timeout, || {
        let counts = cluster.pp_ls(pool).counts;
        (counts.active + counts.queued == 0).then_some(())
    });
}

/// How many transfers into `pool` completed (`DONE` in `pp ls -l`), by pnfsid.
#[track_caller]
fn done_transfers(cluster: &Cluster, pool: &str) -> BTreeMap<String, usize> {
    let mut done = BTreeMap::new();
    for t in cluster.pp_ls(pool).transfers {
        if let PpState::Done { .. } = t.state {
            *done.entry(t.pnfsid).or_insert(0) += 1;
        }
    }
    done
}

/// A saved permanent job survives `kill -9` of its pool: it comes back with its id, command and
/// concurrency, and every file (written before the job, before the save, after the save while
/// the target held the job's copies, and after the restart) reaches the target exactly once.
#[test]
fn a_saved_job_comes_back_after_kill_9_and_every_file_arrives_once() {
    let mut cluster = Cluster::new(&[("pool1", &["disk"]), ("pool2", &["disk"])]);
    // A file whose copy fails is tried again after 1 s rather than 10 s (see the end).
    // One file per unit: the test counts the copies waiting on pool2 against the concurrency.
    cluster.append_config("pool1", "\n[migration]\nretry_base_seconds = 1\nbatch_files = 1\n");
    cluster.start("pool1");
    cluster.start("pool2");
    let command = "migration copy -permanent -concurrency=3 pool2";
    let stored_command = stored(command);
    let mut files = cluster.put_samples("pool1", &seeds(0..8), &[]);
    let job = create(&cluster, "pool1", command);
    // Written after the job started: a permanent job copies them as they arrive.
    files.extend(cluster.put_samples("pool1", &seeds(8..12), &[]));
    wait_holds(&cluster, "pool2", &ids(&files), JOB_WAIT);
    cluster.wait_for_job("pool1", &job, "SLEEPING", JOB_WAIT);
    let jobs = ls(&cluster, "pool1");
    assert_eq!(jobs, vec![(job.clone(), "SLEEPING".into(), stored_command.clone(), Some("not saved".into()))]);

    assert_eq!(ok(&cluster, "pool1", "save\n"), saved_reply(1, 1));
    assert_only_job(&cluster, "pool1", &job, &stored_command);

    // pool2 now admits no transfer: the copies of the next files wait in its queue, so they
    // are certainly not on pool2 when pool1 is killed.
    let max_active = cluster.pp_ls("pool2").counts.max_active;
    ok(&cluster, "pool2", "pp set max active 0\n");
    let after_save = cluster.put_samples("pool1", &seeds(12..18), &[]);
    let after_save_ids = ids(&after_save);
    wait_until("a copy of a file written after the save queued in pool2", SHOW_WAIT, || {
        let pp = cluster.pp_ls("pool2");
        pp.transfers
            .iter()
            .any(|t| t.state == PpState::Queued && t.source == "pool1" && after_save_ids.contains(&t.pnfsid))
            .then_some(())
    });
    // At most `-concurrency` of them have a copy waiting in pool2; the others are known only
    // to the job that is about to be killed, so only the restored job's scan can find them.
    let waiting: BTreeSet<String> = cluster
        .pp_ls("pool2")
        .transfers
        .into_iter()
        .map(|t| t.pnfsid)
        .filter(|id| after_save_ids.contains(id))
        .collect();
    assert!(waiting.len() < after_save_ids.len(), "{waiting:?}");
    assert!(cluster.rep_ls("pool2").iter().all(|r| !after_save_ids.contains(&r.pnfsid)));
    files.extend(after_save);
    assert_only_job(&cluster, "pool1", &job, &stored_command);

    cluster.kill9("pool1");
    cluster.start("pool1");
    assert_only_job(&cluster, "pool1", &job, &stored_command);
    let info = cluster.migration_info("pool1", &job);
    assert_eq!(report_field(&info, "Command"), Some(stored_command.as_str()), "{info}");
    assert_eq!(report_field(&info, "Concurrency"), Some("3"), "{info}");
    assert_eq!(report_field(&info, "Targets"), Some("pool2"), "{info}");
    let section = info_migration_lines(&cluster, "pool1");
    assert_eq!(section, vec![format!("[{job}] {:<12} {stored_command}", ls(&cluster, "pool1")[0].1)]);

    // Written after the restart: the restored job follows the pool's changes again.
    files.extend(cluster.put_samples("pool1", &seeds(18..22), &[]));
    ok(&cluster, "pool2", &format!("pp set max active {max_active}\n"));
    let all = ids(&files);
    assert_eq!(all.len(), 22);
    let held = wait_holds(&cluster, "pool2", &all, JOB_WAIT);
    assert_eq!(held, all, "pool2 holds exactly the files of pool1");
    cluster.wait_for_job("pool1", &job, "SLEEPING", JOB_WAIT);
    wait_no_transfers(&cluster, "pool2", SHOW_WAIT);

    // Exactly once: one completed transfer per file into pool2, whatever failed on the way
    // (the copies queued for the killed pool1).
    let done = done_transfers(&cluster, "pool2");
    let twice: Vec<(&String, &usize)> = done.iter().filter(|(_, n)| **n != 1).collect();
    assert_eq!(
        twice,
        Vec::<(&String, &usize)>::new(),
        "a file was transferred more than once\n{:?}",
        cluster.pp_ls("pool2")
    );
    assert_eq!(done.keys().cloned().collect::<BTreeSet<String>>(), all, "one transfer per file");
    let source = cluster.rep_ls("pool1");
    assert_eq!(source.len(), 22, "a copy leaves the source alone");
    assert_eq!(cluster.rep_ls("pool2"), source, "the same replicas, sizes and states (CACHED)");
    assert!(source.iter().all(|r| r.flags == CACHED), "{source:?}");
    assert_bytes(&cluster, "pool2", &files);
    assert_no_partial_replica(&cluster, "pool2");
    assert_only_job(&cluster, "pool1", &job, &stored_command);

    // The job's own account agrees once its retries are done: every file completed, none
    // waiting. (A copy queued in pool2 before the kill and the restored job's copy of the same
    // file may both run; the one that commits second fails with "already in this pool", and
    // the job tries that file again, after 1 s here, and finds it in place.)
    let info = wait_until("the job counting all 22 files completed", JOB_WAIT, || {
        let info = cluster.migration_info("pool1", &job);
        let completed = report_field(&info, "Completed").is_some_and(|c| c.starts_with("22 files;"));
        (completed && report_field(&info, "Queued") == Some("0")).then_some(info)
    });
    assert_eq!(report_field(&info, "Waiting"), None, "{info}");
    assert_eq!(report_field(&info, "Failed"), None, "{info}");
    assert_eq!(report_field(&info, "State"), Some("SLEEPING"), "{info}");
}

/// A permanent job cancelled and then saved again does not come back, and the saved default
/// concurrency does.
#[test]
fn a_cancelled_and_saved_job_does_not_come_back() {
    let mut cluster = two_pools();
    let command = "migration copy -permanent pool2";
    let job = create(&cluster, "pool1", command);
    assert_eq!(ok(&cluster, "pool1", "save\n"), saved_reply(1, 1));

    let out = ok(&cluster, "pool1", &format!("migration cancel {job}\n"));
    let reply = JobLine::parse(out.trim_end()).unwrap_or_else(|| panic!("not a summary line: {out:?}"));
    assert!(["CANCELLING", "CANCELLED"].contains(&reply.state.as_str()), "{out}");
    cluster.wait_for_job("pool1", &job, "CANCELLED", JOB_WAIT);
    assert_eq!(ok(&cluster, "pool1", "migration set concurrency-default 2\n"), "Default concurrency set to 2\n");
    assert_eq!(ok(&cluster, "pool1", "save\n"), saved_reply(2, 0));
    assert_eq!(
        ls(&cluster, "pool1"),
        vec![(job.clone(), "CANCELLED".into(), stored(command), None)],
        "saved as it is: no mark"
    );

    cluster.stop("pool1");
    cluster.start("pool1");
    assert_eq!(cluster.migration_ls("pool1"), vec![], "the cancelled job stays gone");
    assert_eq!(info_migration_lines(&cluster, "pool1"), Vec::<String>::new(), "no migration section in info");
    assert_eq!(ok(&cluster, "pool1", "migration get concurrency-default\n"), "Current default concurrency: 2\n");
}

/// A saved permanent job cancelled without a new `save` comes back at restart, and
/// `migration ls` (and `info`) say so before the restart.
#[test]
fn a_cancelled_job_that_was_not_saved_again_comes_back_and_ls_says_so() {
    let mut cluster = two_pools();
    let command = "migration copy -permanent -concurrency=2 pool2";
    let stored_command = stored(command);
    let job = create(&cluster, "pool1", command);
    assert_eq!(ok(&cluster, "pool1", "save\n"), saved_reply(1, 1));
    ok(&cluster, "pool1", &format!("migration cancel {job}\n"));
    cluster.wait_for_job("pool1", &job, "CANCELLED", JOB_WAIT);

    let mark = "saved CANCELLED: comes back at restart until the next `save`";
    assert_eq!(
        ls(&cluster, "pool1"),
        vec![(job.clone(), "CANCELLED".into(), stored_command.clone(), Some(mark.into()))]
    );
    let line = format!("[{job}] CANCELLED    {stored_command} ({mark})");
    assert_eq!(ok(&cluster, "pool1", "migration ls\n"), format!("{line}\n"));
    assert_eq!(info_migration_lines(&cluster, "pool1"), vec![line], "info lists the job with its mark");

    cluster.kill9("pool1");
    cluster.start("pool1");
    assert_only_job(&cluster, "pool1", &job, &stored_command);
    let info = cluster.migration_info("pool1", &job);
    assert_eq!(report_field(&info, "Concurrency"), Some("2"), "{info}");
    // It runs: a file written now reaches pool2.
    let files = cluster.put_samples("pool1", &seeds(30..31), &[]);
    wait_holds(&cluster, "pool2", &ids(&files), JOB_WAIT);
    assert_bytes(&cluster, "pool2", &files);
}

/// A job created after the last `save` is marked ` (not saved)`, as is a saved job whose
/// concurrency changed since; after `kill -9` and a restart the new job is gone and the saved
/// one is back as it was saved. Non-permanent jobs carry no mark and do not come back.
#[test]
fn a_job_created_after_the_last_save_is_marked_and_gone_after_a_restart() {
    let mut cluster = two_pools();
    let saved_command = stored("migration copy -permanent -storage=test:a pool2");
    let saved = create(&cluster, "pool1", "migration copy -permanent -storage=test:a pool2");
    assert_eq!(ok(&cluster, "pool1", "save\n"), saved_reply(1, 1));
    let unsaved_command = stored("migration copy -permanent -storage=test:b pool2");
    let unsaved = create(&cluster, "pool1", "migration copy -permanent -storage=test:b pool2");
    let once = create(&cluster, "pool1", "migration copy -storage=test:c pool2");
    cluster.wait_for_job("pool1", &once, "FINISHED", JOB_WAIT);
    assert!(![saved.as_str(), unsaved.as_str()].contains(&once.as_str()));

    let marks = |cluster: &Cluster| -> Vec<(String, Option<String>)> {
        ls(cluster, "pool1").into_iter().map(|(id, _, _, mark)| (id, mark)).collect()
    };
    assert_eq!(
        marks(&cluster),
        vec![(saved.clone(), None), (unsaved.clone(), Some("not saved".into())), (once.clone(), None)]
    );
    assert!(
        info_migration_lines(&cluster, "pool1")
            .contains(&format!("[{unsaved}] {:<12} {unsaved_command} (not saved)", ls(&cluster, "pool1")[1].1)),
        "info shows the mark too"
    );
    assert_eq!(
        ok(&cluster, "pool1", &format!("migration set concurrency {saved} 4\n")),
        format!("[{saved}] Concurrency set to 4\n")
    );
    assert_eq!(
        marks(&cluster),
        vec![(saved.clone(), Some("not saved".into())), (unsaved.clone(), Some("not saved".into())), (once, None)],
        "a changed concurrency is not saved either"
    );

    cluster.kill9("pool1");
    cluster.start("pool1");
    assert_only_job(&cluster, "pool1", &saved, &saved_command);
    let info = cluster.migration_info("pool1", &saved);
    assert_eq!(report_field(&info, "Concurrency"), Some("1"), "the concurrency saved, not the later one\n{info}");
    let out = cluster.admin_in("pool1", &format!("migration info {unsaved}\n"));
    out.assert_code(1, "migration info of the unsaved job");
    assert!(out.stderr.contains(&rc(ErrorCode::JobNotFound)), "{out}");
    // The next job gets an id no restored job has.
    let next = create(&cluster, "pool1", "migration copy -permanent -storage=test:d pool2");
    assert_ne!(next, saved);
    assert_eq!(marks(&cluster), vec![(saved, None), (next, Some("not saved".into()))]);
}

/// A damaged saved entry is reported (in `info` and the log) and skipped while the pool starts;
/// the other saved job comes back and runs. A job that was read but could not be recreated
/// stays saved (`migration ls` lists it, `save` keeps it) until `migration cancel` drops it; a
/// line too damaged to read is dropped by the next `save`.
///
/// The saved set is edited with the pool stopped, through the store's own `get_meta`/`put_meta`
/// (the same calls the pool makes): one job line becomes garbage, and another names an option
/// the parser does not know, as after an upgrade that removed it.
#[test]
fn a_damaged_saved_job_is_reported_and_skipped_while_the_pool_starts() {
    let mut cluster = two_pools();
    let commands = [
        "migration copy -permanent -storage=test:a pool2",
        "migration copy -permanent -storage=test:b pool2",
        "migration cache -permanent -storage=test:c pool2",
    ];
    let jobs: Vec<String> = commands.iter().map(|c| create(&cluster, "pool1", c)).collect();
    assert_eq!(ok(&cluster, "pool1", "save\n"), saved_reply(1, 3));
    cluster.stop("pool1");

    let damaged_command = stored(commands[2]).replace(" -- ", " -no-such-option -- ");
    // The garbage line's number in the saved text (counting from 1), as the report names it.
    let garbage_line;
    {
        let store = SledStore::open(&cluster.data_dir("pool1")).expect("open pool1's store");
        let bytes = store.get_meta(SAVED_KEY).expect("read the saved set").expect("a saved set");
        let text = String::from_utf8(bytes).expect("the saved set is text");
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        // The header, then the module's settings (`<name> <value>`), then one line per job.
        assert_eq!(lines[0], SAVE_HEADER, "{text}");
        let first_job = lines.iter().position(|l| l.starts_with("job ")).unwrap_or(lines.len());
        let settings = &lines[1..first_job];
        assert!(settings.contains(&"concurrency-default 1".to_string()), "{text}");
        assert!(settings.iter().all(|l| l.split(' ').count() == 2), "{text}");
        assert_eq!(lines.len() - first_job, 3, "three job lines after the settings:\n{text}");
        for (line, (id, command)) in lines[first_job..].iter().zip(jobs.iter().zip(commands)) {
            let fields = [
                format!("\"id\":\"{id}\""),
                format!("\"command\":\"{}\"", stored(command)),
                "\"concurrency\":1".to_string(),
                "\"created\":".to_string(),
            ];
            assert!(line.starts_with("job {") && line.ends_with('}'), "{line}");
            for f in &fields {
                assert!(line.contains(f.as_str()), "{f} in {line}");
            }
        }
        lines[first_job + 1] = "job {\"id\":\"2\", this is not JSON".to_string();
        lines[first_job + 2] = lines[first_job + 2].replace(&stored(commands[2]), &damaged_command);
        assert!(lines[first_job + 2].contains("-no-such-option"), "{}", lines[first_job + 2]);
        garbage_line = first_job + 2;
        let text = lines.join("\n") + "\n";
        store.put_meta(SAVED_KEY, text.as_bytes()).expect("write the saved set");
        store.flush().expect("flush the store");
    }

    cluster.start("pool1");
    assert_only_job(&cluster, "pool1", &jobs[0], &stored(commands[0]));
    let section = info_migration_lines(&cluster, "pool1");
    let restore: Vec<&String> = section.iter().filter(|l| l.starts_with("restore: ")).collect();
    assert_eq!(restore.len(), 2, "one line per skipped entry:\n{section:#?}");
    let garbage = format!("restore: a saved migration job was skipped: line {garbage_line}: unreadable job (");
    assert!(restore[0].starts_with(&garbage), "{garbage}... expected (the line's number names it):\n{section:#?}");
    let skipped = format!("restore: saved job [{}] `{damaged_command}` was skipped: ", jobs[2]);
    assert!(restore[1].starts_with(&skipped), "{skipped}... expected:\n{section:#?}");
    assert!(restore[1].contains("-no-such-option"), "the reason names the unknown option:\n{section:#?}");
    let log = cluster.log("pool1");
    assert!(log.contains(&format!("line {garbage_line}: unreadable job")), "the log reports the garbage line");
    assert!(log.contains(&format!("saved job [{}]", jobs[2])), "the log reports the job it skipped");

    // The good job runs: a file of its storage class written now reaches pool2.
    let files = cluster.put_samples("pool1", &seeds(40..41), &["--storage", "test:a"]);
    wait_holds(&cluster, "pool2", &ids(&files), JOB_WAIT);

    // The job that could not be recreated is listed, not run, and kept by a save; the
    // unreadable line is not (there is nothing of it to keep).
    let ls = ok(&cluster, "pool1", "migration ls\n");
    let listed = format!("[{}] UNRESTORED   {damaged_command} (could not be restored at start: ", jobs[2]);
    assert!(ls.contains(&listed), "{listed}... expected in:\n{ls}");
    let kept = "Saved: default concurrency 1, 2 permanent migration jobs (1 of them could not be restored at start \
                and does not run; `migration ls` shows it)\n";
    assert_eq!(ok(&cluster, "pool1", "save\n"), kept);
    let taken = cluster.admin(&format!("cd pool1\nmigration copy -id={} -storage=test:d pool2\n", jobs[2]));
    assert!(taken.stderr.contains("already in use by a saved job that could not be restored"), "{taken}");
    let info = cluster.admin(&format!("cd pool1\nmigration info {}\n", jobs[2]));
    let why = format!("Job {} could not be restored at start (", jobs[2]);
    assert!(info.stderr.contains(&why) && info.stderr.contains("only `migration cancel"), "{info}");
    cluster.stop("pool1");
    cluster.start("pool1");
    let section = info_migration_lines(&cluster, "pool1");
    let restore: Vec<&String> = section.iter().filter(|l| l.starts_with("restore: ")).collect();
    assert_eq!(restore.len(), 1, "the kept job is tried again and reported again:\n{section:#?}");
    assert!(restore[0].starts_with(&skipped), "{skipped}... expected:\n{section:#?}");

    // Dropped by the operator, then saved: the next start has nothing to report.
    let dropped = ok(&cluster, "pool1", &format!("migration cancel {}\n", jobs[2]));
    assert_eq!(
        dropped,
        format!(
            "[{}] UNRESTORED {damaged_command}: dropped; the next `save` removes it from the saved jobs\n",
            jobs[2]
        )
    );
    let ls = ok(&cluster, "pool1", "migration ls\n");
    let pending =
        format!("[{}] UNRESTORED   {damaged_command} (dropped: comes back at restart until the next `save`)", jobs[2]);
    assert!(ls.contains(&pending), "{pending} expected in:\n{ls}");
    assert_eq!(ok(&cluster, "pool1", "save\n"), saved_reply(1, 1));
    assert!(!ok(&cluster, "pool1", "migration ls\n").contains("UNRESTORED"), "saved: nothing left of it");
    cluster.stop("pool1");
    cluster.start("pool1");
    assert_only_job(&cluster, "pool1", &jobs[0], &stored(commands[0]));
    let section = info_migration_lines(&cluster, "pool1");
    assert!(section.iter().all(|l| !l.starts_with("restore: ")), "{section:#?}");
}

/// SIGTERM while jobs copy: the pool cancels them ("pool shutdown"), a target receiving a file
/// keeps no partial replica, a target holding a queued copy drops it, and at the next start the
/// saved permanent job comes back (and finishes the copy) while the other job does not.
///
/// Both jobs are held mid-way: pool2 is frozen (SIGSTOP) once it holds part of a 32 MiB file,
/// so it can neither commit that file nor confirm it; pool3 admits no transfer
/// (`pp set max active 0`), so the other job's copy waits in its queue. pool2 is thawed once
/// pool1 has exited.
#[test]
fn sigterm_with_jobs_under_way_leaves_no_partial_replica_and_only_saved_jobs_come_back() {
    const SIZE: usize = 32 << 20;
    let mut cluster = started(&[("pool1", &["disk"]), ("pool2", &["disk"]), ("pool3", &["disk"])]);
    let big = cluster.put_samples("pool1", &[(SIZE, 50), (SIZE, 51)], &["--storage", "test:big"]);
    let small = cluster.put_samples("pool1", &[(50_000, 52)], &["--storage", "test:small"]);
    ok(&cluster, "pool3", "pp set max active 0\n");

    let permanent_command = stored("migration copy -permanent -storage=test:big -concurrency=1 pool2");
    let permanent = create(&cluster, "pool1", "migration copy -permanent -storage=test:big -concurrency=1 pool2");
    assert_eq!(ok(&cluster, "pool1", "save\n"), saved_reply(1, 1));
    let other = create(&cluster, "pool1", "migration copy -storage=test:small pool3");
    wait_until("the small file's copy queued in pool3", SHOW_WAIT, || {
        cluster.pp_ls("pool3").of(&small[0].0).iter().any(|t| t.state == PpState::Queued).then_some(())
    });
    cluster.freeze_while_receiving("pool2", SIZE as u64, JOB_WAIT);

    let status = cluster.stop("pool1");
    cluster.thaw("pool2");
    assert!(status.success(), "pool1 exits cleanly on SIGTERM: {status}");
    let log = cluster.log("pool1");
    for job in [&permanent, &other] {
        assert!(
            log.lines().any(|l| l.contains("cancelling job: pool shutdown") && l.contains(&format!("job={job}"))),
            "job {job} cancelled at shutdown; the log of pool1:\n{log}"
        );
    }

    // pool3 was told to drop the queued copy (it still admits nothing, so only a cancel ends
    // it); pool2 drops the file it was receiving.
    wait_no_transfers(&cluster, "pool3", SHOW_WAIT);
    wait_no_transfers(&cluster, "pool2", SHOW_WAIT);
    assert_no_partial_replica(&cluster, "pool3");
    assert_eq!(cluster.rep_ls("pool3"), vec![]);
    assert_no_partial_replica(&cluster, "pool2");
    let kept: Vec<(String, Vec<u8>)> = {
        let held: BTreeSet<String> = cluster.rep_ls("pool2").into_iter().map(|r| r.pnfsid).collect();
        big.iter().filter(|(id, _)| held.contains(id)).cloned().collect()
    };
    assert!(kept.len() < big.len(), "pool1 stopped before the job copied every file");
    assert_bytes(&cluster, "pool2", &kept);

    // At the next start the saved job is back and completes the copy; the other one is gone.
    cluster.start("pool1");
    assert_only_job(&cluster, "pool1", &permanent, &permanent_command);
    let out = cluster.admin_in("pool1", &format!("migration info {other}\n"));
    assert!(out.code == Some(1) && out.stderr.contains("Job not found"), "{out}");
    wait_holds(&cluster, "pool2", &ids(&big), JOB_WAIT);
    cluster.wait_for_job("pool1", &permanent, "SLEEPING", JOB_WAIT);
    wait_no_transfers(&cluster, "pool2", SHOW_WAIT);
    assert_bytes(&cluster, "pool2", &big);
    assert_no_partial_replica(&cluster, "pool2");
    assert_eq!(cluster.rep_ls("pool3"), vec![], "nothing reaches pool3: its job did not come back");
}
