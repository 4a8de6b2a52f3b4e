//! The pool's admin commands: declared once in [`COMMANDS`] (name, options, help, examples),
//! parsed purely into a typed [`Command`], executed separately by [`exec`].

pub mod error;
pub mod exec;
pub mod json;
pub mod output;
pub mod psu;
pub mod rebalance;
pub mod remote;
pub mod rep_ls;
pub mod spec;
pub mod tls;

use tidepool_migration::definition::{JobDefinition, JobKind};
use tidepool_migration::grammar;
use tidepool_migration::rate::ByteRate;
use tidepool_p2p::message::{CommandDescription, CommandDetail};
use tidepool_p2p::model::{NEVER, PoolMode, ReplicaState, check_storage_class};
use tidepool_p2p::{JobId, PnfsId, PoolName, TransferId};

use spec::{CommandSpec, Invocation, OptionSpec, OptionValue, ParseError};

use crate::process::logging::{Level, LogTarget};
use rebalance::Metric;

/// A parsed admin command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Help {
        topic: Vec<String>,
    },
    Info {
        /// `-json`: the same figures as one JSON object (docs/json.md).
        json: bool,
    },
    RepLs(RepLs),
    RepStickyLs {
        pnfsid: PnfsId,
        /// `-json`: the valid records as a JSON array.
        json: bool,
    },
    RepSetSticky {
        pnfsid: PnfsId,
        owner: String,
        lifetime_ms: i64,
        on: bool,
    },
    RepSetState {
        pnfsid: PnfsId,
        state: ReplicaState,
    },
    RepRm {
        pnfsid: PnfsId,
        force: bool,
    },
    PoolDisable {
        bits: u32,
        error_code: i32,
        message: String,
    },
    PoolEnable,
    PpGetFile {
        pnfsids: Vec<PnfsId>,
        source: PoolName,
        wait: bool,
        force_source_mode: bool,
    },
    PpLs {
        long: bool,
        json: bool,
    },
    PpSetMaxActive(usize),
    PpSetMaxOutgoing(usize),
    PpRemove(TransferId),
    Save,
    /// `log set <target|all> <level>`.
    LogSet {
        target: LogTarget,
        level: Level,
    },
    /// `log ls`.
    LogLs {
        json: bool,
    },
    /// `psu ...`: the membership (pool groups, pools, links).
    Psu(psu::Psu),
    /// `tls reload`: the credentials read again and put in force, as SIGHUP does.
    TlsReload,
    /// `migration copy|move|cache`: the job as the module will run it, and its stored command
    /// line (docs/dcache-compatibility.md#permanent-jobs-and-save).
    MigrationCreate {
        def: Box<JobDefinition>,
        command: String,
    },
    /// `migration copy|move|cache -dry-run`: the plan of the job, which is not made.
    MigrationDryRun {
        def: Box<JobDefinition>,
        command: String,
        json: bool,
    },
    MigrationLs {
        json: bool,
    },
    MigrationInfo {
        job: JobId,
        view: InfoView,
    },
    /// `migration report`: every file the job selected and what became of it.
    MigrationReport {
        job: JobId,
        /// `-all`: the done files too.
        all: bool,
        json: bool,
    },
    MigrationSuspend {
        job: JobId,
    },
    MigrationResume {
        job: JobId,
    },
    MigrationCancel {
        job: JobId,
        force: bool,
    },
    MigrationClear,
    /// `migration set concurrency`, or its deprecated spelling `migration concurrency`.
    MigrationSetConcurrency {
        job: JobId,
        n: usize,
        deprecated: bool,
    },
    /// `migration set rate`: bytes per second, 0 unlimited.
    MigrationSetRate {
        job: JobId,
        rate: u64,
    },
    MigrationSetDefaultConcurrency(usize),
    MigrationGetDefaultConcurrency,
    /// `migration set refresh-default`: seconds, at least 1.
    MigrationSetDefaultRefresh(u64),
    MigrationGetDefaultRefresh,
    /// `rebalance pgroup`: a `migration move -id=rebalance` on every enabled pool of the group.
    Rebalance {
        group: String,
        metric: Metric,
        /// The jobs' `-refresh`, in seconds.
        refresh: u64,
        /// `-json`: the plan and each pool's outcome as one JSON object.
        json: bool,
        /// `-dry-run`: no job cancelled nor started; each enabled pool prints its job's plan.
        dry_run: bool,
    },
    /// `rebalance cancel pgroup`.
    RebalanceCancel {
        group: String,
        json: bool,
    },
}

/// What `migration info` shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InfoView {
    /// The report of docs/dcache-compatibility.md#output, with rate, ETA and the latest failures.
    Report,
    /// `-failed`: every file that failed, with its last error.
    Failed,
    /// `-json`: the report as one JSON object.
    Json,
}

/// `rep ls` selection and output options.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RepLs {
    /// `-l=`: every listed property must hold.
    pub require: Vec<Property>,
    /// `-storage=`: a glob on the storage class.
    pub storage: Option<String>,
    /// `-s[=unit]`: per-storage-class statistics, sizes divided by the unit.
    pub stats: Option<SizeUnit>,
    /// `-sum`: totals only.
    pub sum: bool,
    /// `-json`: the listing, or with `-s`/`-sum` the statistics, as JSON (sizes in bytes).
    pub json: bool,
    pub pnfsids: Vec<PnfsId>,
}

/// Properties `rep ls -l=` selects on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Property {
    /// `s`: has a sticky record.
    Sticky,
    /// `p`: precious.
    Precious,
    /// `l`: locked, i.e. being written.
    Locked,
    /// `nc`: not cached (precious, receiving or broken).
    NotCached,
    /// `e`: broken.
    Error,
}

/// Unit for `rep ls -s`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SizeUnit {
    B,
    K,
    M,
    G,
    T,
}

impl SizeUnit {
    pub fn divisor(self) -> u64 {
        match self {
            SizeUnit::B => 1,
            SizeUnit::K => 1 << 10,
            SizeUnit::M => 1 << 20,
            SizeUnit::G => 1 << 30,
            SizeUnit::T => 1 << 40,
        }
    }

    pub fn suffix(self) -> &'static str {
        match self {
            SizeUnit::B => "",
            SizeUnit::K => "K",
            SizeUnit::M => "M",
            SizeUnit::G => "G",
            SizeUnit::T => "T",
        }
    }
}

const fn flag(name: &'static str, help: &'static str) -> OptionSpec {
    OptionSpec { name, value: OptionValue::Flag, help }
}

const fn valued(name: &'static str, v: &'static str, help: &'static str) -> OptionSpec {
    OptionSpec { name, value: OptionValue::Required(v), help }
}

/// `-json` on a listing or status command; docs/json.md gives each command's schema.
const JSON: OptionSpec = flag("json", "one JSON document instead of the text (schema: docs/json.md)");

/// Every admin command of a pool.
pub static COMMANDS: &[CommandSpec] = &[
    CommandSpec {
        name: "help",
        args: "[command...]",
        summary: "list the commands, or show one command's help",
        details: "",
        options: &[],
        examples: &["help", "help rep ls", "help pool disable"],
        parse: |inv| Ok(Command::Help { topic: inv.args.iter().map(|t| t.text.clone()).collect() }),
    },
    CommandSpec {
        name: "info",
        args: "",
        summary: "show the pool's name, mode, space, replica counts and recovery findings",
        details: "",
        options: &[JSON],
        examples: &["info", "info -json"],
        parse: |inv| inv.at_most(0).and_then(|()| Ok(Command::Info { json: inv.flag("json")? })),
    },
    CommandSpec {
        name: "rep ls",
        args: "[pnfsid...]",
        summary: "list replicas: <pnfsid> <flags> <size> si={<storage class>}",
        details: "Flags: C cached, P precious, C receiving from a client, S staging, M receiving from a pool,\n\
                  R removed, D destroyed, X sticky, E broken; '-' where not set.\n\
                  Output is streamed; a million replicas never sit in memory at once.",
        options: &[
            valued(
                "l",
                "s|p|l|nc|e...",
                "only replicas with every listed property: s sticky, p precious, l locked (being written), nc not cached, e error",
            ),
            valued("storage", "glob", "only replicas whose storage class matches the glob (* and ?)"),
            OptionSpec {
                name: "s",
                value: OptionValue::Optional("b|k|m|g|t"),
                help: "per-storage-class statistics instead of a listing, in the given unit (default bytes)",
            },
            flag("sum", "totals only (with -s: a total row after the classes)"),
            flag(
                "json",
                "JSON instead of lines: an array of replicas, or with -s/-sum the statistics (every class and the total, in bytes; -s takes no unit)",
            ),
        ],
        examples: &[
            "rep ls",
            "rep ls -json",
            "rep ls -s -json",
            "rep ls -l=sp",
            "rep ls -storage=atlas:*",
            "rep ls -s=m",
            "rep ls -s -sum",
            "rep ls -sum",
            "rep ls 0000A1B2C3D4E5F60718293A4B5C6D7E8F90",
        ],
        parse: parse_rep_ls,
    },
    CommandSpec {
        name: "rep sticky ls",
        args: "<pnfsid>",
        summary: "list a replica's valid sticky records",
        details: "",
        options: &[JSON],
        examples: &["rep sticky ls 0000A1B2C3D4E5F60718293A4B5C6D7E8F90"],
        parse: |inv| {
            let pnfsid = inv.arg_as(0, "pnfsid")?;
            inv.at_most(1)?;
            Ok(Command::RepStickyLs { pnfsid, json: inv.flag("json")? })
        },
    },
    CommandSpec {
        name: "rep set sticky",
        args: "<pnfsid> on|off",
        summary: "set or clear a sticky record (overwrite mode)",
        details: concat!(
            "The lifetime is in milliseconds, as in dCache: plain digits, at least 1000 (a shorter one is most\n",
            "likely meant in seconds and is refused); -1 (the default) never expires. 'off' removes the owner's record.",
        ),
        options: &[
            valued("o", "owner", "owner of the record (default: system)"),
            valued("l", "millis", "lifetime in milliseconds (at least 1000), -1 for ever (default)"),
        ],
        examples: &[
            "rep set sticky 0000A1B2C3D4E5F60718293A4B5C6D7E8F90 on",
            "rep set sticky -o=alice -l=3600000 0000A1B2C3D4E5F60718293A4B5C6D7E8F90 on",
            "rep set sticky -o=alice 0000A1B2C3D4E5F60718293A4B5C6D7E8F90 off",
        ],
        parse: parse_set_sticky,
    },
    CommandSpec {
        name: "rep set cached",
        args: "<pnfsid>",
        summary: "make a replica cached (evictable unless sticky)",
        details: "",
        options: &[],
        examples: &["rep set cached 0000A1B2C3D4E5F60718293A4B5C6D7E8F90"],
        parse: |inv| parse_set_state(inv, ReplicaState::Cached),
    },
    CommandSpec {
        name: "rep set precious",
        args: "<pnfsid>",
        summary: "make a replica precious (never evicted)",
        details: "",
        options: &[],
        examples: &["rep set precious 0000A1B2C3D4E5F60718293A4B5C6D7E8F90"],
        parse: |inv| parse_set_state(inv, ReplicaState::Precious),
    },
    CommandSpec {
        name: "rep rm",
        args: "<pnfsid>",
        summary: "remove a replica; precious or sticky ones only with -force",
        details: "",
        options: &[flag("force", "remove even a precious or sticky replica")],
        examples: &[
            "rep rm 0000A1B2C3D4E5F60718293A4B5C6D7E8F90",
            "rep rm -force 0000A1B2C3D4E5F60718293A4B5C6D7E8F90",
        ],
        parse: |inv| {
            let pnfsid = inv.arg_as(0, "pnfsid")?;
            inv.at_most(1)?;
            Ok(Command::RepRm { pnfsid, force: inv.flag("force")? })
        },
    },
    CommandSpec {
        name: "pool disable",
        args: "[errorCode [errorMessage]]",
        summary: "disable the pool for some or all activities",
        details: "Without options the pool is disabled for everything (as -strict). The mode is saved\n\
                  and survives a restart. errorCode defaults to 1, errorMessage to 'Operator intervention'.",
        options: &[
            flag("fetch", "refuse to deliver data (also to other pools, unless they force the source mode)"),
            flag("store", "refuse client uploads"),
            flag("stage", "refuse staging from tape"),
            flag("p2p-client", "refuse to receive replicas from other pools"),
            flag(
                "p2p-server",
                "mark the pool as not to be chosen as a pool-to-pool source (informational, as in dCache; -fetch refuses reads)",
            ),
            flag("rdonly", "store, stage and p2p-client: the usual mode before vacating a pool"),
            flag("strict", "disable everything"),
            flag("draining", "as -rdonly, marked as draining"),
        ],
        examples: &["pool disable -rdonly", "pool disable -strict 2 \"disk replaced\"", "pool disable"],
        parse: parse_pool_disable,
    },
    CommandSpec {
        name: "pool enable",
        args: "",
        summary: "enable the pool for everything",
        details: "",
        options: &[],
        examples: &["pool enable"],
        parse: |inv| inv.at_most(0).map(|()| Command::PoolEnable),
    },
    CommandSpec {
        name: "save",
        args: "",
        summary: "store the migration settings and permanent jobs; they come back when the pool restarts",
        details: concat!(
            "Stores, in one durable write that replaces what was stored before, the default concurrency,\n",
            "the default refresh interval and every permanent migration job that is not CANCELLED,\n",
            "CANCELLING, STOPPING, FAILED or FINISHED: its id, its command as `migration ls` shows it,\n",
            "its concurrency and its creation time. At start the pool restores the defaults and recreates\n",
            "the jobs; sticky lifetimes of -smode/-tmode count from then.\n",
            "`migration ls` marks permanent jobs that changed since the last save `(not saved)`, and saved\n",
            "jobs that were cancelled since: they come back at restart until the next save.",
        ),
        options: &[],
        examples: &["save"],
        parse: |inv| inv.at_most(0).map(|()| Command::Save),
    },
    CommandSpec {
        name: "log set",
        args: "<target|all> <level>",
        summary: "change the log level of a target (a Rust module path) or of all, until restart",
        details: concat!(
            "Levels: off, error, warn, info, debug, trace. A target is a module path and covers what is\n",
            "below it: tidepool_pool (the daemon), tidepool_pool::transfer, tidepool_migration, sled, ...\n",
            "`all` sets every level and forgets the per-target ones. The change holds until the next\n",
            "`log set`, a SIGHUP that finds a changed [log] filter in the config, or a restart.\n",
            "The reply is the filter now in force; `log ls` lists it.",
        ),
        options: &[],
        examples: &["log set tidepool_pool::transfer debug", "log set all warn", "log set sled off"],
        parse: |inv| {
            let target = inv.arg_as(0, "target")?;
            let level = inv.arg_as(1, "level")?;
            inv.at_most(2)?;
            Ok(Command::LogSet { target, level })
        },
    },
    CommandSpec {
        name: "log ls",
        args: "",
        summary: "list the log levels in force: `all` (every target not listed), then each target",
        details: "Lines: <target> <level>, padded; `all` first, then the targets in order.",
        options: &[JSON],
        examples: &["log ls", "log ls -json"],
        parse: |inv| inv.at_most(0).and_then(|()| Ok(Command::LogLs { json: inv.flag("json")? })),
    },
    CommandSpec {
        name: "psu reload",
        args: "",
        summary: "read the membership again now (the cluster file, or etcd), and say what changed",
        details: concat!(
            "With the cluster file: reads it again, as SIGHUP does; a file that cannot be read or no\n",
            "longer lists this pool changes nothing. With etcd: one full read (the watch keeps the view\n",
            "up to date anyway). Running jobs look at their targets again at once.",
        ),
        options: &[],
        examples: &["psu reload"],
        parse: |inv| inv.at_most(0).map(|()| Command::Psu(psu::Psu::Reload)),
    },
    CommandSpec {
        name: "tls reload",
        args: "",
        summary: "read this pool's credentials again ([tls] of the config) and put them in force, as SIGHUP does",
        details: concat!(
            "Reads the config's [tls] (certificate, key, trust anchors, deny list) and its files again.\n",
            "New connections use them; kept connections made before are not reused; an open connection\n",
            "under a name now denied is closed at its next request. Says what changed (identity, expiry,\n",
            "trust anchors, deny list), or why the credentials in force were kept (rc=20010): a file\n",
            "that does not load, an expired certificate, another identity, or a certificate that does\n",
            "not chain to the new trust anchors.",
        ),
        options: &[],
        examples: &["tls reload"],
        parse: |inv| inv.at_most(0).map(|()| Command::TlsReload),
    },
    CommandSpec {
        name: "psu create pgroup",
        args: "<group>",
        summary: "create a pool group in etcd (the membership must be etcd)",
        details: "A group without pools is kept; `psu addto pgroup` puts pools in it.",
        options: &[],
        examples: &["psu create pgroup disk"],
        parse: psu::parse_create,
    },
    CommandSpec {
        name: "psu remove pgroup",
        args: "<group>",
        summary: "remove an empty pool group that no link names (etcd)",
        details: "",
        options: &[],
        examples: &["psu remove pgroup old-disk"],
        parse: psu::parse_remove,
    },
    CommandSpec {
        name: "psu addto pgroup",
        args: "<group> <pool>",
        summary: "add a registered pool to a pool group (etcd); running -target=pgroup jobs take it up",
        details: concat!(
            "The pool must have registered in etcd (it has started once, or `tidepool membership import`\n",
            "wrote it). Every pool's view follows within a moment; running jobs whose targets are the\n",
            "group use the pool from their next look at the targets, which the change starts at once.",
        ),
        options: &[],
        examples: &["psu addto pgroup disk pool7"],
        parse: psu::parse_addto,
    },
    CommandSpec {
        name: "psu removefrom pgroup",
        args: "<group> <pool>",
        summary: "take a pool out of a pool group (etcd); it is no new target of the group's jobs",
        details: "Nothing on the pool is deleted or copied again; copies already made stay.",
        options: &[],
        examples: &["psu removefrom pgroup disk pool7"],
        parse: psu::parse_removefrom,
    },
    CommandSpec {
        name: "psu remove pool",
        args: "<pool>",
        summary: "remove a stopped pool from the membership (etcd): its record and its group memberships",
        details: concat!(
            "For a pool taken out of service. Refused while the pool is alive: a running pool registers\n",
            "again. Nothing on its disk is touched, and no replica anywhere is deleted or copied; a\n",
            "pool started again later registers again (then `psu addto pgroup` puts it back in groups).",
        ),
        options: &[],
        examples: &["psu remove pool pool7"],
        parse: psu::parse_remove_pool,
    },
    CommandSpec {
        name: "psu set link",
        args: "<link> [<group>...]",
        summary: "make a link name these pool groups (etcd); no group removes the link",
        details: "",
        options: &[],
        examples: &["psu set link disk-link disk", "psu set link old-link"],
        parse: psu::parse_set_link,
    },
    CommandSpec {
        name: "psu ls pgroup",
        args: "",
        summary: "list the pool groups with their pools: <group> : <pool>, ...",
        details: "",
        options: &[],
        examples: &["psu ls pgroup"],
        parse: |inv| inv.at_most(0).map(|()| Command::Psu(psu::Psu::LsGroup)),
    },
    CommandSpec {
        name: "psu ls pool",
        args: "",
        summary: "list the pools: name, addresses, groups, and with etcd whether each is alive",
        details: "A last line says so when the view is stale (etcd cannot be reached).",
        options: &[],
        examples: &["psu ls pool"],
        parse: |inv| inv.at_most(0).map(|()| Command::Psu(psu::Psu::LsPool)),
    },
    CommandSpec {
        name: "psu ls link",
        args: "",
        summary: "list the links: <link> : <group>, ...",
        details: "",
        options: &[],
        examples: &["psu ls link"],
        parse: |inv| inv.at_most(0).map(|()| Command::Psu(psu::Psu::LsLink)),
    },
    CommandSpec {
        name: "pp get file",
        args: "<pnfsid>... <sourcePool>",
        summary: "copy replicas from another pool to this one (pool-to-pool transfers)",
        details: "The new replica is CACHED. It is committed only after its size and checksum match the\n\
                  source's and its data and record are on disk. Without -wait the transfers are queued and\n\
                  the command returns at once; `pp ls` shows them. Several pnfsids may be given (the\n\
                  source pool comes last); each is its own transfer.",
        options: &[
            flag("wait", "wait for the transfer to end and report its result (progress every 10 s)"),
            flag("force-source-mode", "copy even if the source is disabled for fetch"),
        ],
        examples: &[
            "pp get file 0000A1B2C3D4E5F60718293A4B5C6D7E8F90 pool1",
            "pp get file -wait 0000A1B2C3D4E5F60718293A4B5C6D7E8F90 pool1",
        ],
        parse: |inv| {
            inv.arg(1, "source pool")?;
            let (last, ids) = inv.args.split_last().expect("two arguments were checked");
            let source = inv.parse_arg(last, "source pool")?;
            let pnfsids = ids.iter().map(|t| inv.parse_arg(t, "pnfsid")).collect::<Result<_, _>>()?;
            Ok(Command::PpGetFile {
                pnfsids,
                source,
                wait: inv.flag("wait")?,
                force_source_mode: inv.flag("force-source-mode")?,
            })
        },
    },
    CommandSpec {
        name: "pp ls",
        args: "",
        summary: "list incoming pool-to-pool transfers, active and queued",
        details: "Lines: [<id>] <pnfsid> from <pool> ACTIVE <done>/<size> bytes <MiB/s> MiB/s <age> s,\n\
                  or QUEUED <age> s. With -l, the last 50 finished transfers follow (DONE or FAILED).",
        options: &[flag("l", "also list recently finished transfers"), JSON],
        examples: &["pp ls", "pp ls -l", "pp ls -l -json"],
        parse: |inv| inv.at_most(0).and_then(|()| Ok(Command::PpLs { long: inv.flag("l")?, json: inv.flag("json")? })),
    },
    CommandSpec {
        name: "pp set max active",
        args: "<n>",
        summary: "how many incoming transfers run at once (the rest queue); 0 pauses them",
        details: "",
        options: &[],
        examples: &["pp set max active 8"],
        parse: |inv| {
            let n = inv.arg_as(0, "n")?;
            inv.at_most(1)?;
            Ok(Command::PpSetMaxActive(n))
        },
    },
    CommandSpec {
        name: "pp set max outgoing",
        args: "<n>",
        summary: "how many transfers other pools may read from this one at once; beyond it they wait (and fail after their no-progress time)",
        details: "",
        options: &[],
        examples: &["pp set max outgoing 16"],
        parse: |inv| {
            let n = inv.arg_as(0, "n")?;
            inv.at_most(1)?;
            Ok(Command::PpSetMaxOutgoing(n))
        },
    },
    CommandSpec {
        name: "pp remove",
        args: "<id>",
        summary: "cancel an incoming transfer; its partial data is removed (a transfer already committing completes)",
        details: "",
        options: &[],
        examples: &["pp remove 3"],
        parse: |inv| {
            let id = inv.arg_as(0, "transfer id")?;
            inv.at_most(1)?;
            Ok(Command::PpRemove(id))
        },
    },
    CommandSpec {
        name: "migration copy",
        args: "[target...]",
        summary: "copy this pool's replicas to other pools (a migration job)",
        details: concat!(
            "Creates a job that copies every replica of this pool that passes all the filter options\n",
            "(-state -storage -cache -pnfsid -al -rp -size -accessed -sticky; none: every CACHED and\n",
            "PRECIOUS replica) to the targets, one task per file, and starts it. The reply is the job's\n",
            "summary line: [<id>] <STATE> <command line>. A bad option creates no job.\n",
            "The targets are pools of the cluster file, or with -target=pgroup|link|hsm its pool groups, a\n",
            "link's groups, or the pools attached to HSMs. -include-when/-exclude-when filter the targets,\n",
            "-pause-when/-stop-when steer the job; expressions are checked before the job is created.\n",
            "Defaults of migration copy: -smode=same -tmode=same -pins=keep, -verify and -atime off,\n",
            "-select=proportional -target=pool -replicas=1; -concurrency from `migration get\n",
            "concurrency-default`; -refresh from `migration get refresh-default` (300 s unless configured).\n",
            "A file that fails is retried later, after a back-off that doubles (10 s to 10 minutes unless\n",
            "configured); `migration info -failed` shows the last error of each. `migration ls` and\n",
            "`migration info` follow the job.",
        ),
        options: grammar::JOB_OPTIONS,
        examples: &[
            "migration copy -pnfsid=0000A1B2C3D4E5F60718293A4B5C6D7E8F90 pool2",
            "migration copy -state=precious -storage=atlas:raw -concurrency=4 pool2 pool3",
            "migration copy -target=pgroup -replicas=2 -exclude=pool9* disk",
            "migration copy -id=spread -tmode=cached+alice(3600) -target=pgroup",
            "migration copy -sticky -accessed=..3600 -order=-size -select=random pool2",
        ],
        parse: |inv| parse_migration_job(inv, JobKind::Copy),
    },
    CommandSpec {
        name: "migration move",
        args: "[target...]",
        summary: "move this pool's replicas to other pools: copy, then delete the source replica",
        details: concat!(
            "As migration copy, with other defaults: -smode=delete -tmode=same -pins=move -verify -atime.\n",
            "A source replica is deleted only after its copy is committed on the target (data and record\n",
            "on disk, checksum verified); pins move with it. To vacate a pool: `pool disable -rdonly`,\n",
            "then `migration move -target=pgroup` or `migration move <pools...>`.\n",
            "See `help migration copy` for the filters, the targets and the retries.",
        ),
        options: grammar::JOB_OPTIONS,
        examples: &[
            "migration move -target=pgroup",
            "migration move -id=drain -concurrency=8 -eager pool2 pool3",
            "migration move -storage=MCTAPE:MC -concurrency=120 -eager -replicas=1 -target=pgroup MCTAPE-write",
            "migration move -verify=false -smode=removable pool2",
        ],
        parse: |inv| parse_migration_job(inv, JobKind::Move),
    },
    CommandSpec {
        name: "migration cache",
        args: "[target...]",
        summary: "cache this pool's replicas on other pools: copies are CACHED, the source is kept",
        details: concat!(
            "As migration copy, with -tmode=cached by default (other defaults as copy: -smode=same\n",
            "-pins=keep, -verify and -atime off). Spreads popular files over cache pools.\n",
            "See `help migration copy` for the filters, the targets and the retries.",
        ),
        options: grammar::JOB_OPTIONS,
        examples: &[
            "migration cache -accessed=..3600 -target=pgroup -select=random",
            "migration cache -replicas=3 -include=cache* -target=pgroup cache",
        ],
        parse: |inv| parse_migration_job(inv, JobKind::Cache),
    },
    CommandSpec {
        name: "migration ls",
        args: "",
        summary: "list the migration jobs: [<id>] <STATE> <command line>",
        details: concat!(
            "One line per job, in the order the jobs were created. The state is padded to 12 characters.\n",
            "Jobs stay listed after they end, until `migration clear`.",
        ),
        options: &[flag("json", "a JSON array of the jobs ({id, state, command}) instead of lines")],
        examples: &["migration ls", "migration ls -json"],
        parse: |inv| inv.at_most(0).and_then(|()| Ok(Command::MigrationLs { json: inv.flag("json")? })),
    },
    CommandSpec {
        name: "migration info",
        args: "<job>",
        summary: "show a migration job: command, state, progress, rate and ETA, running tasks, notes",
        details: concat!(
            "Lines: Command, State, Queued, Attempts, Targets, Completed, Total, Concurrency (as in dCache),\n",
            "then rate and ETA, Running tasks ([<task>] <pnfsid>: TASK.<State> -> [<target>]), the files\n",
            "that failed most recently with their last error, and the most recent notes.",
        ),
        options: &[
            flag("failed", "list every file that failed, with its attempts and last error"),
            flag("json", "the report as one JSON object"),
        ],
        examples: &["migration info 1", "migration info -failed drain", "migration info -json 1"],
        parse: parse_migration_info,
    },
    CommandSpec {
        name: "migration report",
        args: "<job>",
        summary: "account for every file a job selected: done, already in place, skipped, failed",
        details: concat!(
            "Counts of the job's files by fate (done, already in place, gone from source, no longer\n",
            "selected, given up, cancelled, not tried, queued, running, waiting); they add up to the\n",
            "files selected. Then one line per file not done (with -all: per file): its fate, targets,\n",
            "target state, whether the checksum was compared, failed tries and last error. Kept until\n",
            "`migration clear`; a permanent job counts every distinct file seen so far.",
        ),
        options: &[flag("all", "list every file, the done ones too"), flag("json", "the report as one JSON object")],
        examples: &["migration report 1", "migration report -all drain", "migration report -json -all 1"],
        parse: |inv| {
            let job = job_arg(inv)?;
            Ok(Command::MigrationReport { job, all: inv.flag("all")?, json: inv.flag("json")? })
        },
    },
    CommandSpec {
        name: "migration suspend",
        args: "<job>",
        summary: "suspend a job: running tasks finish, no new task starts",
        details: "Allowed while the job is RUNNING, SLEEPING, PAUSED or SUSPENDED. The reply is the summary line.",
        options: &[],
        examples: &["migration suspend 1"],
        parse: |inv| job_arg(inv).map(|job| Command::MigrationSuspend { job }),
    },
    CommandSpec {
        name: "migration resume",
        args: "<job>",
        summary: "resume a suspended job",
        details: "Allowed only while the job is SUSPENDED. The reply is the summary line.",
        options: &[],
        examples: &["migration resume 1"],
        parse: |inv| job_arg(inv).map(|job| Command::MigrationResume { job }),
    },
    CommandSpec {
        name: "migration cancel",
        args: "<job>",
        summary: "cancel a job: CANCELLING until its running tasks end (-force: at once), then CANCELLED",
        details: concat!(
            "Without -force running tasks finish first, in bounded time. With -force they are\n",
            "cancelled at once, without waiting for their targets: the job is CANCELLED within\n",
            "seconds even if a target does not answer, its file locks are released, and no source is\n",
            "changed for a cancelled copy. The cancel is sent again until each target answers; the\n",
            "target then removes its half-made copy. The reply is the summary line.",
        ),
        options: &[flag("force", "cancel the running tasks too, instead of letting them finish")],
        examples: &["migration cancel 1", "migration cancel -force drain"],
        parse: |inv| {
            let job = job_arg(inv)?;
            Ok(Command::MigrationCancel { job, force: inv.flag("force")? })
        },
    },
    CommandSpec {
        name: "migration clear",
        args: "",
        summary: "forget the jobs that are FINISHED, CANCELLED or FAILED",
        details: "",
        options: &[],
        examples: &["migration clear"],
        parse: |inv| inv.at_most(0).map(|()| Command::MigrationClear),
    },
    CommandSpec {
        name: "migration set concurrency",
        args: "<job> <n>",
        summary: "change how many units (files or batches) a job has under way at once (0 starts none)",
        details: "Applies at once. The reply is `[<id>] Concurrency set to <n>`.",
        options: &[],
        examples: &["migration set concurrency 1 8"],
        parse: |inv| parse_set_concurrency(inv, false),
    },
    CommandSpec {
        name: "migration set rate",
        args: "<job> <rate>",
        summary: "change the most bytes per second a job's transfers send together (0: unlimited)",
        details: concat!(
            "The rate is bytes per second with an optional unit: k M G T (powers of 1000) or Ki Mi Gi Ti\n",
            "(powers of 1024), a trailing B or /s allowed; at least 64Ki, or 0 for unlimited. It applies\n",
            "within a second, to the transfers under way too. The reply is `[<id>] Rate limit set to <rate>`;\n",
            "`migration info` shows it (`Rate limit :`) and `save` keeps it.",
        ),
        options: &[],
        examples: &["migration set rate 1 50Mi", "migration set rate drain 0"],
        parse: |inv| {
            let job = inv.arg_as(0, "job id")?;
            let rate: ByteRate = inv.arg_as(1, "rate")?;
            inv.at_most(2)?;
            Ok(Command::MigrationSetRate { job, rate: rate.0 })
        },
    },
    CommandSpec {
        name: "migration concurrency",
        args: "<job> <n>",
        summary: "deprecated: use migration set concurrency",
        details: "",
        options: &[],
        examples: &["migration concurrency 1 8"],
        parse: |inv| parse_set_concurrency(inv, true),
    },
    CommandSpec {
        name: "migration set concurrency-default",
        args: "<n>",
        summary: "set the concurrency of jobs created without -concurrency (n >= 1)",
        details: "Jobs that exist keep their concurrency. The reply is `Default concurrency set to <n>`.",
        options: &[],
        examples: &["migration set concurrency-default 4"],
        parse: |inv| {
            let t = inv.arg(0, "concurrency")?;
            let n: usize = inv.parse_arg(t, "concurrency")?;
            if n < 1 {
                return Err(ParseError::invalid(t.offset, "Default concurrency must be positive."));
            }
            inv.at_most(1)?;
            Ok(Command::MigrationSetDefaultConcurrency(n))
        },
    },
    CommandSpec {
        name: "migration get concurrency-default",
        args: "",
        summary: "show the concurrency of jobs created without -concurrency",
        details: "",
        options: &[],
        examples: &["migration get concurrency-default"],
        parse: |inv| inv.at_most(0).map(|()| Command::MigrationGetDefaultConcurrency),
    },
    CommandSpec {
        name: "migration set refresh-default",
        args: "<seconds>",
        summary: "set how often jobs created without -refresh fetch their targets' space and load (seconds >= 1)",
        details: concat!(
            "Jobs that exist keep theirs. At start the pool takes the config's [migration] refresh_seconds\n",
            "(300); `save` stores the value and the pool restores it at start. The reply is\n",
            "`Default refresh interval set to <n>`.",
        ),
        options: &[],
        examples: &["migration set refresh-default 60"],
        parse: |inv| {
            let t = inv.arg(0, "refresh interval in seconds")?;
            let n: u64 = inv.parse_arg(t, "seconds")?;
            if n < 1 {
                return Err(ParseError::invalid(t.offset, "Refresh interval must be positive."));
            }
            inv.at_most(1)?;
            Ok(Command::MigrationSetDefaultRefresh(n))
        },
    },
    CommandSpec {
        name: "migration get refresh-default",
        args: "",
        summary: "show how often jobs created without -refresh fetch their targets' space and load",
        details: "",
        options: &[],
        examples: &["migration get refresh-default"],
        parse: |inv| inv.at_most(0).map(|()| Command::MigrationGetDefaultRefresh),
    },
    CommandSpec {
        name: "rebalance pgroup",
        args: "<group>",
        summary: "level the space use of a pool group: a `migration move -id=rebalance` on each of its enabled pools",
        details: concat!(
            "Any pool accepts it. It asks every pool of the group (in the cluster file) for its space;\n",
            "disabled pools and pools that do not answer are left out and named in the reply. On each\n",
            "enabled pool it cancels the job called rebalance (-force) and starts\n",
            "  migration move -id=rebalance -refresh=<n> -include-when=<..> -stop-when=<..> -target=pool -- <the enabled pools>\n",
            "With -metric=relative, F = sum(used)/sum(total) of the enabled pools, and\n",
            "  -include-when='target.used < F * target.total'\n",
            "  -stop-when='targets == 0 or source.used <= F * source.total'\n",
            "so pools above the level move files to pools below it until each is at F.\n",
            "With -metric=free: -include-when='target.free > source.free' -stop-when='targets == 0'.\n",
            "The reply has one line per pool: `<pool>: <job summary line>`, `<pool>: left out: <why>`\n",
            "or `<pool>: failed: <error>`; the command fails if any enabled pool failed.\n",
            "`migration ls` on each pool follows its job; `rebalance cancel pgroup` stops them all.",
        ),
        options: &[
            valued("metric", "relative|free", "level the used fraction, or the free bytes (default: relative)"),
            valued(
                "refresh",
                "seconds",
                "how often each job fetches the other pools' space (default: 30); the levels are only as fresh as this",
            ),
            JSON,
            flag(
                "dry-run",
                "cancel and start nothing: each enabled pool prints the plan of its job (`migration move -dry-run`)",
            ),
        ],
        examples: &[
            "rebalance pgroup disk",
            "rebalance pgroup -metric=free -refresh=10 disk",
            "rebalance pgroup -json disk",
            "rebalance pgroup -dry-run disk",
        ],
        parse: parse_rebalance,
    },
    CommandSpec {
        name: "rebalance cancel pgroup",
        args: "<group>",
        summary: "cancel the rebalance job on every pool of a pool group",
        details: concat!(
            "Runs `migration cancel -force rebalance` on every pool of the group (enabled or not): running\n",
            "transfers stop and half-made copies are removed; what was moved stays moved. One line per\n",
            "pool: the job's summary line, `no rebalance job`, or `failed: <error>` (then the command fails).",
        ),
        options: &[JSON],
        examples: &["rebalance cancel pgroup disk", "rebalance cancel pgroup -json disk"],
        parse: |inv| {
            let group = inv.arg(0, "pool group")?.text.clone();
            inv.at_most(1)?;
            Ok(Command::RebalanceCancel { group, json: inv.flag("json")? })
        },
    },
];

/// Parses a line against [`COMMANDS`]; `Ok(None)` for a blank line.
pub fn parse(line: &str) -> Result<Option<Command>, ParseError> {
    spec::parse_line(COMMANDS, line)
}

/// Whether a pool's certificate may run `line` here: only what `rebalance` sends to the
/// other pools of its group (a move, its dry run, `migration ls`, `migration cancel`), so a
/// pool's key cannot remove replicas or change modes elsewhere (`docs/security.md`).
pub fn a_pool_may_run(line: &str) -> bool {
    matches!(
        parse(line),
        Ok(Some(
            Command::MigrationCreate { .. }
                | Command::MigrationDryRun { .. }
                | Command::MigrationLs { .. }
                | Command::MigrationCancel { .. }
        ))
    )
}

/// The declarations as the shell sees them.
pub fn describe() -> Vec<CommandDescription> {
    COMMANDS
        .iter()
        .map(|c| CommandDescription {
            name: c.name.to_string(),
            summary: c.summary.to_string(),
            options: c.options.iter().map(|o| o.name.to_string()).collect(),
        })
        .collect()
}

/// The declarations with what completion needs (`AdminRequest::DescribeDetails`).
pub fn describe_details() -> Vec<CommandDetail> {
    COMMANDS.iter().map(CommandSpec::detail).collect()
}

fn parse_rep_ls(inv: &Invocation<'_>) -> Result<Command, ParseError> {
    let mut ls = RepLs { sum: inv.flag("sum")?, json: inv.flag("json")?, ..RepLs::default() };
    if let Some((spec, offset)) = inv.value("l") {
        if spec.is_empty() {
            return Err(ParseError::invalid(
                offset,
                "-l: give at least one property: s (sticky), p (precious), l (locked), nc (not cached), e (error)",
            ));
        }
        let mut rest = spec;
        while !rest.is_empty() {
            let (p, len) = match rest.as_bytes()[0] {
                b's' => (Property::Sticky, 1),
                b'p' => (Property::Precious, 1),
                b'l' => (Property::Locked, 1),
                b'e' => (Property::Error, 1),
                b'n' if rest.starts_with("nc") => (Property::NotCached, 2),
                _ => {
                    return Err(ParseError::invalid(
                        offset,
                        format!(
                            "-l: unknown property in {:?}; use s (sticky), p (precious), l (locked), nc (not cached), e (error)",
                            spec::echo(spec)
                        ),
                    ));
                }
            };
            ls.require.push(p);
            rest = &rest[len..];
        }
    }
    if let Some((glob, offset)) = inv.value("storage") {
        check_storage_class(glob).map_err(|e| ParseError::invalid(offset, format!("-storage: {e}")))?;
        ls.storage = Some(glob.to_string());
    }
    if let Some((unit, offset)) = inv.value("s") {
        ls.stats = Some(match unit.to_ascii_lowercase().as_str() {
            "" | "b" => SizeUnit::B,
            "k" => SizeUnit::K,
            "m" => SizeUnit::M,
            "g" => SizeUnit::G,
            "t" => SizeUnit::T,
            _ => {
                let unit = spec::echo(unit);
                return Err(ParseError::invalid(offset, format!("-s: unknown unit {unit:?}; use b, k, m, g or t")));
            }
        });
        if ls.json && ls.stats != Some(SizeUnit::B) {
            return Err(ParseError::invalid(
                offset,
                "-s: -json gives every size in bytes, so -s takes no unit with -json (use -s or -s=b)",
            ));
        }
    }
    for t in &inv.args {
        ls.pnfsids.push(inv.parse_arg(t, "pnfsid")?);
    }
    Ok(Command::RepLs(ls))
}

fn parse_set_sticky(inv: &Invocation<'_>) -> Result<Command, ParseError> {
    let pnfsid = inv.arg_as(0, "pnfsid")?;
    let switch = inv.arg(1, "on|off")?;
    let on = match switch.text.as_str() {
        "on" => true,
        "off" => false,
        other => {
            return Err(ParseError::invalid(switch.offset, format!("expected on or off, not {:?}", spec::echo(other))));
        }
    };
    inv.at_most(2)?;
    let owner = match inv.value("o") {
        None => "system".to_string(),
        Some(("", offset)) => return Err(ParseError::invalid(offset, "-o: the owner must not be empty")),
        Some((o, _)) => o.to_string(),
    };
    let lifetime_ms = match inv.value("l") {
        None => NEVER,
        Some((text, offset)) => sticky_lifetime(text).map_err(|e| ParseError::invalid(offset, e))?,
    };
    Ok(Command::RepSetSticky { pnfsid, owner, lifetime_ms, on })
}

/// The shortest lifetime `rep set sticky -l` takes, in milliseconds: a shorter one expires
/// before it could matter and is most likely meant in seconds.
pub const MIN_STICKY_LIFETIME_MS: i64 = 1000;
/// The longest, in milliseconds (about 100 years); for longer, -1 (for ever).
pub const MAX_STICKY_LIFETIME_MS: i64 = 100 * 366 * 24 * 3600 * 1000;

/// `rep set sticky -l=MILLIS`: milliseconds as in dCache, written as plain digits, from
/// [`MIN_STICKY_LIFETIME_MS`] to [`MAX_STICKY_LIFETIME_MS`]; or `-1` for ever. Signs, units
/// and anything else are refused rather than guessed at.
fn sticky_lifetime(text: &str) -> Result<i64, String> {
    if text == "-1" {
        return Ok(NEVER);
    }
    let shown = spec::echo(text);
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "-l: {shown:?} is not a lifetime; give whole milliseconds (digits only, e.g. -l=3600000 for an hour), or -1 for ever"
        ));
    }
    match text.parse::<i64>() {
        Ok(ms) if ms < MIN_STICKY_LIFETIME_MS => Err(format!(
            "-l: {ms} ms is shorter than a second; the lifetime is in milliseconds (for {ms} seconds give -l={}), at least {MIN_STICKY_LIFETIME_MS}",
            ms * 1000
        )),
        Ok(ms) if ms <= MAX_STICKY_LIFETIME_MS => Ok(ms),
        _ => {
            Err(format!("-l: {shown} ms is longer than 100 years (at most {MAX_STICKY_LIFETIME_MS}); give -1 for ever"))
        }
    }
}

fn parse_set_state(inv: &Invocation<'_>, state: ReplicaState) -> Result<Command, ParseError> {
    let pnfsid = inv.arg_as(0, "pnfsid")?;
    inv.at_most(1)?;
    Ok(Command::RepSetState { pnfsid, state })
}

fn parse_pool_disable(inv: &Invocation<'_>) -> Result<Command, ParseError> {
    let table = [
        ("fetch", PoolMode::FETCH),
        ("store", PoolMode::STORE),
        ("stage", PoolMode::STAGE),
        ("p2p-client", PoolMode::P2P_CLIENT),
        ("p2p-server", PoolMode::P2P_SERVER),
        ("rdonly", PoolMode::RDONLY),
        ("strict", PoolMode::STRICT),
        ("draining", PoolMode::DRAINING),
    ];
    let mut bits = 0;
    for (name, b) in table {
        if inv.flag(name)? {
            bits |= b;
        }
    }
    if bits == 0 {
        bits = PoolMode::STRICT;
    }
    let error_code = match inv.args.first() {
        None => 1,
        Some(t) => inv.parse_arg::<i32>(t, "errorCode")?,
    };
    let message = match inv.args.get(1) {
        None => "Operator intervention".to_string(),
        Some(t) => t.text.clone(),
    };
    inv.at_most(2)?;
    Ok(Command::PoolDisable { bits: bits | PoolMode::DISABLED, error_code, message })
}

/// `migration copy|move|cache`: the migration module's grammar reads the options (with
/// dCache's messages), so a bad line is refused here and no job is made.
fn parse_migration_job(inv: &Invocation<'_>, kind: JobKind) -> Result<Command, ParseError> {
    let targets: Vec<String> = inv.args.iter().map(|t| t.text.clone()).collect();
    let line = grammar::job(kind, &inv.options, &targets).map_err(|e| match e.offset {
        Some(at) => ParseError::invalid(at, e.message),
        None => ParseError::invalid_line(e.message),
    })?;
    let (def, command) = (Box::new(line.def), line.command);
    if line.dry_run {
        return Ok(Command::MigrationDryRun { def, command, json: line.json });
    }
    Ok(Command::MigrationCreate { def, command })
}

/// The one argument of a command about a job.
fn job_arg(inv: &Invocation<'_>) -> Result<JobId, ParseError> {
    let job = inv.arg_as(0, "job id")?;
    inv.at_most(1)?;
    Ok(job)
}

fn parse_migration_info(inv: &Invocation<'_>) -> Result<Command, ParseError> {
    let job = job_arg(inv)?;
    let view = match (inv.flag("failed")?, inv.flag("json")?) {
        (false, false) => InfoView::Report,
        (true, false) => InfoView::Failed,
        (false, true) => InfoView::Json,
        (true, true) => {
            let (_, at) = inv.value("json").expect("-json was given");
            return Err(ParseError::invalid(at, "give -failed or -json, not both (-json includes the failures)"));
        }
    };
    Ok(Command::MigrationInfo { job, view })
}

fn parse_rebalance(inv: &Invocation<'_>) -> Result<Command, ParseError> {
    let group = inv.arg(0, "pool group")?.text.clone();
    inv.at_most(1)?;
    let metric = match inv.value("metric") {
        None => Metric::default(),
        Some((v, offset)) => v.parse().map_err(|e: String| ParseError::invalid(offset, e))?,
    };
    let refresh = match inv.value("refresh") {
        None => rebalance::DEFAULT_REFRESH,
        Some((v, offset)) => match v.parse::<u64>() {
            Ok(n) if n >= 1 => n,
            _ => {
                return Err(ParseError::invalid(
                    offset,
                    format!("-refresh: {v:?} is not a refresh period; give whole seconds, at least 1"),
                ));
            }
        },
    };
    Ok(Command::Rebalance { group, metric, refresh, json: inv.flag("json")?, dry_run: inv.flag("dry-run")? })
}

fn parse_set_concurrency(inv: &Invocation<'_>, deprecated: bool) -> Result<Command, ParseError> {
    let job = inv.arg_as(0, "job id")?;
    let n = inv.arg_as(1, "concurrency")?;
    inv.at_most(2)?;
    Ok(Command::MigrationSetConcurrency { job, n, deprecated })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0000A1B2C3D4E5F60718293A4B5C6D7E8F90";

    fn id() -> PnfsId {
        ID.parse().unwrap()
    }

    fn check(line: &str, want: Command) {
        assert_eq!(parse(line), Ok(Some(want)), "line {line:?}");
    }

    /// Checks that `line` is refused with a message containing `needle`, pointing at `at`.
    fn check_err(line: &str, needle: &str, at: &str) {
        let err = parse(line).expect_err(line);
        assert!(err.message.contains(needle), "{line:?}: {:?} lacks {needle:?}", err.message);
        let want = line.find(at).unwrap_or_else(|| panic!("{at:?} not in {line:?}"));
        assert_eq!(err.offset, Some(want), "{line:?}: {err:?} should point at {at:?}");
    }

    /// A pool's certificate runs what `rebalance` sends, and nothing that removes replicas,
    /// changes a mode or starts a transfer of its choosing.
    #[test]
    fn a_pool_runs_only_the_lines_of_rebalance() {
        for (line, allowed) in [
            ("migration move -target=pgroup -id=rebalance -permanent -- disk", true),
            ("migration move -dry-run -json -- pool2", true),
            ("migration ls -json", true),
            ("migration cancel -force rebalance", true),
            ("rep rm -force 0000000000000000000000000001", false),
            ("pool disable -rdonly", false),
            ("pp get file 0000000000000000000000000001 pool2", false),
            ("rep set sticky 0000000000000000000000000001 on", false),
            ("save", false),
            ("not a command", false),
        ] {
            assert_eq!(a_pool_may_run(line), allowed, "{line}");
        }
    }

    #[test]
    fn every_example_parses() {
        for spec in COMMANDS {
            for example in spec.examples {
                assert!(
                    matches!(parse(example), Ok(Some(_))),
                    "example {example:?} of {}: {:?}",
                    spec.name,
                    parse(example)
                );
            }
        }
    }

    #[test]
    fn good_lines() {
        check("info", Command::Info { json: false });
        check("info -json", Command::Info { json: true });
        check("  info  ", Command::Info { json: false });
        check("help rep ls", Command::Help { topic: vec!["rep".into(), "ls".into()] });
        check("rep ls", Command::RepLs(RepLs::default()));
        check(
            "rep ls -l=spnce -storage=atlas:* -s=M -sum",
            Command::RepLs(RepLs {
                require: vec![Property::Sticky, Property::Precious, Property::NotCached, Property::Error],
                storage: Some("atlas:*".into()),
                stats: Some(SizeUnit::M),
                sum: true,
                json: false,
                pnfsids: vec![],
            }),
        );
        check(&format!("rep ls {ID}"), Command::RepLs(RepLs { pnfsids: vec![id()], ..RepLs::default() }));
        check("rep ls -json", Command::RepLs(RepLs { json: true, ..RepLs::default() }));
        for line in ["rep ls -s -json", "rep ls -json -s=b", "rep ls -json -s=B"] {
            check(line, Command::RepLs(RepLs { json: true, stats: Some(SizeUnit::B), ..RepLs::default() }));
        }
        check("rep ls -sum -json", Command::RepLs(RepLs { json: true, sum: true, ..RepLs::default() }));
        check(
            "rebalance pgroup -json disk",
            Command::Rebalance {
                group: "disk".into(),
                metric: Metric::Relative,
                refresh: rebalance::DEFAULT_REFRESH,
                json: true,
                dry_run: false,
            },
        );
        check("rebalance cancel pgroup -json disk", Command::RebalanceCancel { group: "disk".into(), json: true });
        check(
            &format!("rep set sticky {ID} on"),
            Command::RepSetSticky { pnfsid: id(), owner: "system".into(), lifetime_ms: -1, on: true },
        );
        check(
            &format!("rep set sticky -o=\"my owner\" -l=5000 {ID} off"),
            Command::RepSetSticky { pnfsid: id(), owner: "my owner".into(), lifetime_ms: 5000, on: false },
        );
        check(&format!("rep set precious {ID}"), Command::RepSetState { pnfsid: id(), state: ReplicaState::Precious });
        check(&format!("rep rm -force {ID}"), Command::RepRm { pnfsid: id(), force: true });
        check(&format!("rep rm -force=false {ID}"), Command::RepRm { pnfsid: id(), force: false });
        check(
            "pool disable -rdonly",
            Command::PoolDisable { bits: PoolMode::RDONLY, error_code: 1, message: "Operator intervention".into() },
        );
        check(
            "pool disable -fetch -store 7 'disk swap'",
            Command::PoolDisable {
                bits: PoolMode::DISABLED | PoolMode::FETCH | PoolMode::STORE,
                error_code: 7,
                message: "disk swap".into(),
            },
        );
        check(
            "pool disable",
            Command::PoolDisable { bits: PoolMode::STRICT, error_code: 1, message: "Operator intervention".into() },
        );
        check("pool enable", Command::PoolEnable);
        check(
            &format!("pp get file -wait {ID} pool2"),
            Command::PpGetFile {
                pnfsids: vec![id()],
                source: "pool2".parse().unwrap(),
                wait: true,
                force_source_mode: false,
            },
        );
        check(
            &format!("pp get file {ID} {ID} pool2"),
            Command::PpGetFile {
                pnfsids: vec![id(), id()],
                source: "pool2".parse().unwrap(),
                wait: false,
                force_source_mode: false,
            },
        );
        check("pp ls -l", Command::PpLs { long: true, json: false });
        check("pp ls -json -l", Command::PpLs { long: true, json: true });
        check("pp set max active 0", Command::PpSetMaxActive(0));
        check("pp set max outgoing 4", Command::PpSetMaxOutgoing(4));
        check("pp remove 12", Command::PpRemove(TransferId(12)));
        check("log ls", Command::LogLs { json: false });
        check("log ls -json", Command::LogLs { json: true });
        check(
            "log set tidepool_pool::transfer DEBUG",
            Command::LogSet { target: LogTarget::Target("tidepool_pool::transfer".into()), level: Level::Debug },
        );
        check("log set all off", Command::LogSet { target: LogTarget::All, level: Level::Off });
        assert_eq!(parse("   "), Ok(None));
    }

    #[test]
    fn bad_lines_point_at_the_offending_token() {
        check_err("rep lss", "did you mean 'rep ls'", "rep");
        check_err("frobnicate now", "unknown command 'frobnicate now'", "frobnicate");
        check_err("rep ls -x", "unknown option -x; 'rep ls' takes -l -storage -s -sum", "-x");
        check_err("rep ls -l=sq", "-l: unknown property", "-l");
        check_err("rep ls -s=q", "-s: unknown unit", "-s");
        check_err("rep ls 1234", "not a valid pnfsid", "1234");
        check_err("rep ls -storage", "needs a value", "-storage");
        check_err(&format!("rep set sticky {ID} maybe"), "expected on or off", "maybe");
        check_err(&format!("rep set sticky -l=-5 {ID} on"), "not a lifetime", "-l");
        check_err(&format!("rep set sticky -o= {ID} on"), "must not be empty", "-o");
        check_err(&format!("rep rm {ID} {ID}x"), "unexpected argument", &format!("{ID}x"));
        check_err(&format!("rep rm -force=yes {ID}"), "takes no value", "-force");
        check_err("info extra", "unexpected argument", "extra");
        check_err("pool disable -rdonly notanumber", "errorCode: \"notanumber\" is not a whole number", "notanumber");
        check_err("pool disable -readonly", "unknown option -readonly", "-readonly");
        check_err("rep ls \"unterminated", "unterminated quote", "\"");
        check_err(&format!("pp get file {ID} pool/2"), "not a valid pool name", "pool/2");

        check_err("pp set max active -1", "unknown option -1", "-1");
        check_err("pp set max active many", "n: \"many\" is not a whole number", "many");
        check_err("pp remove x", "not a valid transfer id", "x");
        check_err("log set tidepool_pool verbose", "'verbose' is not a level", "verbose");
        check_err("log set a/b info", "'a/b' is not a target", "a/b");
        check_err("log ls all", "unexpected argument", "all");
    }

    fn job(id: &str) -> JobId {
        id.parse().unwrap()
    }

    /// The definition and stored command line that `line` creates a job with.
    fn created(line: &str) -> (JobDefinition, String) {
        match parse(line) {
            Ok(Some(Command::MigrationCreate { def, command })) => (*def, command),
            other => panic!("{line:?}: {other:?}"),
        }
    }

    #[test]
    fn migration_commands() {
        check("migration ls", Command::MigrationLs { json: false });
        check("migration ls -json", Command::MigrationLs { json: true });
        check("migration info 1", Command::MigrationInfo { job: job("1"), view: InfoView::Report });
        check("migration info -failed drain", Command::MigrationInfo { job: job("drain"), view: InfoView::Failed });
        check("migration info -json=TRUE 1", Command::MigrationInfo { job: job("1"), view: InfoView::Json });
        check("migration suspend 1", Command::MigrationSuspend { job: job("1") });
        check("migration resume rebalance", Command::MigrationResume { job: job("rebalance") });
        check("migration cancel 2", Command::MigrationCancel { job: job("2"), force: false });
        check("migration cancel -force 2", Command::MigrationCancel { job: job("2"), force: true });
        check("migration clear", Command::MigrationClear);
        check(
            "migration set concurrency 1 8",
            Command::MigrationSetConcurrency { job: job("1"), n: 8, deprecated: false },
        );
        check("migration concurrency 1 0", Command::MigrationSetConcurrency { job: job("1"), n: 0, deprecated: true });
        check("migration set concurrency-default 4", Command::MigrationSetDefaultConcurrency(4));
        check("migration set rate 1 50Mi", Command::MigrationSetRate { job: job("1"), rate: 50 << 20 });
        check("migration set rate drain 1GB/s", Command::MigrationSetRate { job: job("drain"), rate: 1_000_000_000 });
        check("migration set rate 1 0", Command::MigrationSetRate { job: job("1"), rate: 0 });
        check("migration get concurrency-default", Command::MigrationGetDefaultConcurrency);

        check_err("migration info -failed -json 1", "give -failed or -json, not both", "-json");
        check_err("migration copy -json pool2", "-json only goes with -dry-run", "-json");
        check_err("migration suspend 1 2", "unexpected argument", "2");
        check_err("migration cancel -force=maybe 1", "takes no value", "-force");
        check_err("migration set concurrency 1 x", "concurrency: \"x\" is not a whole number", "x");
        check_err("migration set concurrency-default 0", "Default concurrency must be positive.", "0");
        check_err("migration get concurrency-default 3", "unexpected argument", "3");
        check_err("migration clear 1", "unexpected argument", "1");
        check("migration set refresh-default 60", Command::MigrationSetDefaultRefresh(60));
        check("migration get refresh-default", Command::MigrationGetDefaultRefresh);
        check_err("migration set refresh-default 0", "Refresh interval must be positive.", "0");
        check_err("migration set refresh-default -5", "unknown option -5", "-5");
        check_err("migration set refresh-default soon", "seconds: \"soon\" is not a whole number", "soon");
        check_err("migration set refresh-default 5 6", "unexpected argument", "6");
        check_err("migration get refresh-default 3", "unexpected argument", "3");
        for (line, what) in
            [("migration info", "missing job id"), ("migration set concurrency 1", "missing concurrency")]
        {
            let err = parse(line).unwrap_err();
            assert!(err.message.starts_with(what), "{line:?}: {err:?}");
            assert_eq!(err.offset, Some(line.len()), "{line:?}");
        }
    }

    #[test]
    fn rebalance_commands() {
        let rebalance = |group: &str, metric, refresh| Command::Rebalance {
            group: group.into(),
            metric,
            refresh,
            json: false,
            dry_run: false,
        };
        check("rebalance pgroup disk", rebalance("disk", Metric::Relative, 30));
        check(
            "rebalance pgroup -dry-run disk",
            Command::Rebalance {
                group: "disk".into(),
                metric: Metric::Relative,
                refresh: 30,
                json: false,
                dry_run: true,
            },
        );
        check("rebalance pgroup -metric=free disk", rebalance("disk", Metric::Free, 30));
        check("rebalance pgroup -refresh=5 -metric=relative disk", rebalance("disk", Metric::Relative, 5));
        check("rebalance cancel pgroup disk", Command::RebalanceCancel { group: "disk".into(), json: false });

        check_err("rebalance pgroup -metric=space disk", "\"space\" is not a metric; use relative or free", "-metric");
        check_err("rebalance pgroup -refresh=0 disk", "-refresh: \"0\" is not a refresh period", "-refresh");
        check_err("rebalance pgroup -refresh=x disk", "whole seconds, at least 1", "-refresh");
        check_err("rebalance pgroup -metric disk", "option -metric needs a value", "-metric");
        check_err(
            "rebalance pgroup -force disk",
            "unknown option -force; 'rebalance pgroup' takes -metric -refresh",
            "-force",
        );
        check_err("rebalance pgroup disk tape", "unexpected argument", "tape");
        check_err("rebalance cancel pgroup disk tape", "unexpected argument", "tape");
        check_err(
            "rebalance cancel pgroup -metric=free disk",
            "unknown option -metric; 'rebalance cancel pgroup' takes -json",
            "-metric",
        );
        check_err("rebalance pgrup disk", "did you mean 'rebalance pgroup'", "rebalance");
        for line in ["rebalance pgroup", "rebalance cancel pgroup"] {
            let err = parse(line).unwrap_err();
            assert!(err.message.starts_with("missing pool group"), "{line:?}: {err:?}");
            assert_eq!(err.offset, Some(line.len()), "{line:?}");
        }
    }

    #[test]
    fn job_defaults_per_command_reach_the_definition() {
        use tidepool_migration::definition::{Pins, Targets};
        use tidepool_migration::mode::{SourceState, TargetState};
        use tidepool_migration::select::Strategy;

        // (command, smode, tmode, pins, verify, atime)
        let table = [
            ("copy", SourceState::Same, TargetState::Same, Pins::Keep, false, false),
            ("move", SourceState::Delete, TargetState::Same, Pins::Move, true, true),
            ("cache", SourceState::Same, TargetState::Cached, Pins::Keep, false, false),
        ];
        for (name, smode, tmode, pins, verify, atime) in table {
            let (d, command) = created(&format!("migration {name} pool2"));
            let kind = match name {
                "copy" => JobKind::Copy,
                "move" => JobKind::Move,
                _ => JobKind::Cache,
            };
            assert_eq!(d.kind, kind);
            assert_eq!((d.smode.state, d.tmode.state, d.pins, d.verify, d.atime), (smode, tmode, pins, verify, atime));
            assert_eq!((d.select, d.replicas, d.concurrency, d.refresh), (Strategy::Proportional, 1, None, None));
            assert_eq!(d.targets, Targets::Pools(vec!["pool2".parse().unwrap()]));
            assert!(!d.permanent && !d.eager && !d.meta_only && !d.force_source_mode && d.id.is_none());
            assert_eq!(command, format!("migration {name} -- pool2"));
        }
        let (d, _) = created("migration move -verify=false -atime=FALSE -pins=keep -smode=same pool2");
        assert_eq!((d.smode.state, d.pins, d.verify, d.atime), (SourceState::Same, Pins::Keep, false, false));
    }

    #[test]
    fn job_options_reach_the_definition() {
        use tidepool_migration::definition::Targets;
        let (d, command) = created(&format!(
            "migration copy -id=drain -pnfsid={ID} -pnfsid={ID},{ID} -exclude=pool9* -exclude=a,b -include=pool* \
             -sticky -concurrency=4 -replicas=2 -eager=true -meta-only -refresh=30 -cache= -target=pgroup disk"
        ));
        assert_eq!(d.id, Some(job("drain")));
        assert_eq!(d.filter.pnfsids, Some(vec![id(), id(), id()]));
        assert_eq!(d.exclude, ["pool9*", "a", "b"]);
        assert_eq!(d.include, ["pool*"]);
        assert!(d.filter.sticky.is_some());
        assert_eq!(d.filter.cache_class, Some(String::new()));
        assert_eq!((d.concurrency, d.replicas, d.eager, d.meta_only, d.refresh), (Some(4), 2, true, true, Some(30)));
        assert_eq!(d.targets, Targets::PoolGroups(vec!["disk".into()]));
        assert_eq!(
            command,
            format!(
                "migration copy -id=drain -pnfsid={ID} -pnfsid={ID},{ID} -exclude=pool9* -exclude=a,b -include=pool* \
                 -sticky -concurrency=4 -replicas=2 -eager=true -meta\\-only -refresh=30 -cache='' -target=pgroup -- disk"
            )
        );
        let (_, command) = created("migration move -target=pgroup");
        assert_eq!(command, "migration move -target=pgroup --");
        let (_, command) = created("migration copy -- pool-2");
        assert_eq!(command, "migration copy -- pool\\-2");
    }

    /// A refused `migration copy|move|cache` line: the module's message, verbatim, as rc=4.
    fn check_refused(line: &str, message: &str) {
        let err = parse(line).expect_err(line);
        assert_eq!(
            (err.code, err.offset, err.message.as_str()),
            (tidepool_p2p::ErrorCode::InvalidArgument, None, message),
            "{line:?}"
        );
        assert_eq!(err.render(line), message, "{line:?}: the message is shown as the module wrote it");
    }

    /// A number that does not parse is refused at the token, as rc=4, with a message that names
    /// the argument and shows the expected form; the parser's own text never reaches the operator.
    #[test]
    fn bad_numbers_name_the_argument_and_the_expected_form() {
        let table: &[(&str, &str, &str, &str)] = &[
            ("migration set concurrency 1 x", "concurrency", "x", "migration set concurrency <job> <n>"),
            ("migration set concurrency 1 -- -2", "concurrency", "-2", "negative"),
            (
                "migration set concurrency 1 99999999999999999999999",
                "concurrency",
                "99999999999999999999999",
                "too large",
            ),
            ("pool disable x", "errorCode", "x", "pool disable [options] [errorCode [errorMessage]]"),
            ("pool disable 1.5 msg", "errorCode", "1.5", "whole number"),
            ("pp set max active many", "n", "many", "pp set max active <n>"),
            ("pp set max outgoing ''", "n", "''", "empty"),
            ("migration set concurrency-default 2x", "concurrency", "2x", "migration set concurrency-default <n>"),
            ("migration set refresh-default 1h", "seconds", "1h", "migration set refresh-default <seconds>"),
            ("migration set rate 1 x", "rate", "x", "migration set rate <job> <rate>"),
            ("migration set rate 1 10X", "rate", "10X", "is not a byte rate"),
            ("migration set rate 1 1k", "rate", "1k", "below the least limit, 64 KiB/s"),
        ];
        for (line, what, at, needle) in table {
            let err = parse(line).expect_err(line);
            assert_eq!(err.code, tidepool_p2p::ErrorCode::InvalidArgument, "{line:?}");
            assert!(err.message.starts_with(&format!("{what}: ")), "{line:?}: {:?} names no {what}", err.message);
            assert!(err.message.contains(needle), "{line:?}: {:?} lacks {needle:?}", err.message);
            assert!(!err.message.contains("invalid digit"), "{line:?}: {:?}", err.message);
            assert_eq!(err.offset, Some(line.rfind(at).unwrap()), "{line:?}: {err:?}");
        }
    }

    #[test]
    fn invalid_job_options_are_refused_with_dcaches_messages() {
        for (line, message) in [
            ("migration copy", "target(s) required when target type is pool"),
            (
                "migration copy -rate=fast pool2",
                "-rate: \"fast\" is not a byte rate; give bytes per second with an optional unit (50M, 1Gi, \
                 500MiB), or 0 for unlimited",
            ),
            (
                "migration move -rate=1000 pool2",
                "-rate: \"1000\" is below the least limit, 64 KiB/s (65536 bytes per second); give 0 for unlimited",
            ),
            (
                "migration move -state=broken pool2",
                "broken: Invalid value for option -state (expected: cached or precious)",
            ),
            ("migration copy -order=age pool2", "age: Invalid value for option -order"),
            ("migration copy -pins=drop pool2", "drop: Invalid value for option -pins"),
            ("migration copy -replicas=0 pool2", "Number of replicas must be positive."),
            ("migration copy -concurrency=many pool2", "many: Invalid value for option -concurrency"),
            ("migration copy -permanent -order=size pool2", "Permanent jobs cannot be ordered"),
            ("migration cache -tmode=delete pool2", "delete: Invalid value"),
            ("migration copy -smode=same+x(-2) pool2", "-2: Invalid lifetime"),
            ("migration copy -smode=same+x(y) pool2", "x(y): Syntax error"),
            ("migration copy -size=5..1 pool2", "5..1: Invalid interval for option -size"),
            (
                "migration copy -select=best pool2",
                "best: Invalid value for option -select (expected: proportional or random)",
            ),
            (
                "migration copy -target=cell pool2",
                "cell: Invalid value for option -target (expected: pool, pgroup, link or hsm)",
            ),
            ("migration copy -target=link l m", "[l, m]: Only one target supported for -type=link"),
            (
                "migration move -include-when='target.free >' pool2",
                "-include-when: expected a number, string, name or `(`, found the end of the expression\n  target.free >\n               ^",
            ),
            (
                "migration move -stop-when='targets' pool2",
                "-stop-when: the expression must be a condition (BOOLEAN), found NUMBER\n  targets\n  ^",
            ),
            (
                "migration move -permanent -stop-when='targets == 0' pool2",
                "Permanent jobs cannot have a stop condition.",
            ),
            (
                "migration move -target-deficit-mode=some pool2",
                "some: Invalid value for option -target-deficit-mode (expected: wait or limit)",
            ),
            ("migration copy -refresh=0 pool2", "The refresh period must be at least 1 second."),
            (
                "migration copy pool/2",
                "\"pool/2\" is not a valid pool name: may hold only letters, digits, '_', '-' and '.'",
            ),
            ("migration copy -pnfsid=xyz pool2", "\"xyz\" is not a valid pnfsid: must be 24 or 36 hex digits"),
        ] {
            check_refused(line, message);
        }
    }

    /// Values that used to be taken with a surprising meaning (every replica, a 5 ms
    /// lifetime, a 60,000-byte class) are refused with an error naming the value, at the
    /// option; the values next to them are still taken.
    #[test]
    fn ambiguous_or_oversized_values_are_refused() {
        let long = "s".repeat(60_000);
        let table: &[(String, &str, &str)] = &[
            ("rep ls -l=".into(), "-l: give at least one property", "-l"),
            (format!("rep set sticky -l=+5 {ID} on"), "-l: \"+5\" is not a lifetime; give whole milliseconds", "-l"),
            (
                format!("rep set sticky -l=5 {ID} on"),
                "-l: 5 ms is shorter than a second; the lifetime is in milliseconds (for 5 seconds give -l=5000)",
                "-l",
            ),
            (format!("rep set sticky -l=999 {ID} on"), "at least 1000", "-l"),
            (format!("rep set sticky -l=0 {ID} on"), "-l: 0 ms is shorter than a second", "-l"),
            (format!("rep set sticky -l=-5 {ID} on"), "-l: \"-5\" is not a lifetime", "-l"),
            (format!("rep set sticky -l= {ID} on"), "-l: \"\" is not a lifetime", "-l"),
            (format!("rep set sticky -l=1e3 {ID} on"), "-l: \"1e3\" is not a lifetime", "-l"),
            (format!("rep set sticky -l=60s {ID} on"), "-l: \"60s\" is not a lifetime", "-l"),
            (format!("rep set sticky -l=99999999999999999999 {ID} on"), "is longer than 100 years", "-l"),
            (
                format!("rep ls -storage={long}"),
                "-storage: storage class too long: 60000 bytes, at most 256",
                "-storage",
            ),
        ];
        for (line, needle, at) in table {
            check_err(line, needle, at);
            let err = parse(line).unwrap_err();
            assert!(err.render(line).len() < 1000, "{line:.40}: a short message");
        }
        // Through `migration copy|move|cache` (the module's messages name the value).
        for (line, message) in [
            ("migration move -sticky=, pool2", ",: Invalid value for option -sticky: no owner given"),
            ("migration move -sticky=- pool2", "-: Invalid value for option -sticky: '-' must be followed by an owner"),
            ("migration move -size=-5 pool2", "-5: Invalid interval for option -size: bounds must not be negative"),
            (
                "migration move -accessed=..-1 pool2",
                "..-1: Invalid interval for option -accessed: bounds must not be negative",
            ),
            ("migration move -pnfsid=,, pool2", ",,: Invalid value for option -pnfsid: no pnfsid given"),
        ] {
            check_refused(line, message);
        }
        let err = parse(&format!("migration move -storage={long} pool2")).unwrap_err();
        assert!(
            err.message.starts_with("-storage: storage class too long: 60000 bytes, at most 256"),
            "{}",
            &err.message[..100]
        );
        // Good values still parse.
        let sticky = |l: &str| match parse(&format!("rep set sticky -l={l} {ID} on")) {
            Ok(Some(Command::RepSetSticky { lifetime_ms, .. })) => lifetime_ms,
            other => panic!("{l}: {other:?}"),
        };
        assert_eq!(sticky("1000"), 1000);
        assert_eq!(sticky("3600000"), 3_600_000);
        assert_eq!(sticky("-1"), NEVER);
        assert_eq!(sticky(&MAX_STICKY_LIFETIME_MS.to_string()), MAX_STICKY_LIFETIME_MS);
        assert!(matches!(parse("rep ls -l=s"), Ok(Some(Command::RepLs(_)))));
        assert!(matches!(parse(&format!("rep ls -storage={}", "s".repeat(256))), Ok(Some(Command::RepLs(_)))));
        for line in
            ["migration move -sticky=alice pool2", "migration move -sticky pool2", "migration move -size=0..10 pool2"]
        {
            assert!(matches!(parse(line), Ok(Some(Command::MigrationCreate { .. }))), "{line}");
        }
    }

    #[test]
    fn bad_job_lines_are_refused_before_any_job_exists() {
        // Parse errors are found before `exec` runs, so no job is made.
        check_err(
            "migration copy -frobnicate pool2",
            "unknown option -frobnicate; `help migration copy` lists its 36 options",
            "-frobnicate",
        );
        check_err("migration move -eager=yes pool2", "-eager takes no value (or true/false), not \"yes\"", "-eager");
        check_err("migration move -storage pool2", "option -storage needs a value", "-storage");
        check_err("migration copy -pnfsid=\"xyz pool2", "unterminated quote", "\"");
    }

    #[test]
    fn migration_copy_help_documents_every_option_and_the_defaults() {
        let help = COMMANDS.iter().find(|c| c.name == "migration copy").unwrap().help();
        // The option texts are wrapped at 80 columns: compare them with the line breaks undone.
        let unwrapped = help.split_whitespace().collect::<Vec<_>>().join(" ");
        for name in [
            "id",
            "permanent",
            "state",
            "storage",
            "cache",
            "pnfsid",
            "al",
            "rp",
            "size",
            "accessed",
            "sticky",
            "concurrency",
            "order",
            "pins",
            "smode",
            "tmode",
            "atime",
            "verify",
            "force-source-mode",
            "target",
            "select",
            "replicas",
            "eager",
            "meta-only",
            "include",
            "exclude",
            "refresh",
            "rate",
            "include-when",
            "exclude-when",
            "pause-when",
            "stop-when",
            "target-deficit-mode",
            "dry-run",
            "seed",
            "json",
        ] {
            assert!(help.contains(&format!("\n    -{name}")), "help migration copy lacks -{name}:\n{help}");
        }
        for default in [
            "(default: same; delete for move)",
            "(default: same; cached for cache)",
            "(default: keep; move for move)",
            "(default: off; on for move)",
            "(default: proportional)",
            "(default: 1)",
            "(default: `migration get refresh-default`, 300 unless configured)",
            "(default: wait)",
        ] {
            assert!(unwrapped.contains(default), "help migration copy lacks {default:?}");
        }
        for name in ["migration move", "migration cache"] {
            let spec = COMMANDS.iter().find(|c| c.name == name).unwrap();
            assert_eq!(spec.options.len(), 36, "{name} takes the options of migration copy");
        }
    }

    #[test]
    fn json_is_refused_where_it_has_no_meaning() {
        check_err("rep ls -s=m -json", "-json gives every size in bytes, so -s takes no unit with -json", "-s");
        check_err("rep ls -json -s=k", "use -s or -s=b", "-s");
        check_err("info -json=yes", "-json takes no value", "-json");
        check_err("migration info -failed -json 1", "give -failed or -json, not both", "-json");
        check_err("migration copy -json pool2", "-json only goes with -dry-run", "-json");
        let listing = [
            "info",
            "rep ls",
            "rep sticky ls",
            "pp ls",
            "log ls",
            "migration ls",
            "migration info",
            "migration report",
            "rebalance pgroup",
            "rebalance cancel pgroup",
            // With -dry-run only: the plan is a status of what the job would do.
            "migration copy",
            "migration move",
            "migration cache",
        ];
        for spec in COMMANDS {
            let has = spec.options.iter().any(|o| o.name == "json");
            assert_eq!(has, listing.contains(&spec.name), "{}: -json only on listing and status commands", spec.name);
        }
    }

    #[test]
    fn missing_argument_points_at_end_of_line() {
        let err = parse("rep set sticky").unwrap_err();
        assert_eq!(err.offset, Some("rep set sticky".len()));
        assert!(err.render("rep set sticky").ends_with("^"));
    }
}
