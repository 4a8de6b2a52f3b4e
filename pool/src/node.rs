//! The root of a running pool, made once at start: the pool's own state ([`Pool`]), its
//! pool-to-pool transfers ([`Transfers`]) and its migration module. The endpoints, the admin
//! commands and the metrics page reach all three through it; the pieces themselves do not
//! reach up to it (the transfers hold the pool, the migration adapter holds the transfers), so
//! nothing below owns what owns it.

use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use tidepool_migration::module::{Module, Settings as MigrationSettings};
use tidepool_p2p::PnfsId;
use tokio_util::sync::CancellationToken;

use crate::migration_env::{self, PoolEnv};
use crate::pool::Pool;
use crate::transfer::Transfers;

/// A pool with its transfers and, once started, its migration module.
pub struct Node {
    pub pool: Arc<Pool>,
    pub transfers: Arc<Transfers>,
    /// Set by [`Node::start_migration`].
    migration: OnceLock<Migration>,
}

/// The migration module and the feed of repository changes into it.
struct Migration {
    module: Arc<Module<PoolEnv>>,
    /// Ends the feed.
    stop: CancellationToken,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("pool", &self.pool.name).finish_non_exhaustive()
    }
}

impl Node {
    /// The root over `transfers` (which hold the pool), without a migration module yet.
    pub fn new(transfers: Arc<Transfers>) -> Node {
        Node { pool: transfers.pool.clone(), transfers, migration: OnceLock::new() }
    }

    /// Creates the pool's migration module, tells the transfers where to find the rate limit of
    /// the job that copies a file, and starts feeding the module the repository's changes (a
    /// task in the pool's `tasks`, ended by [`Node::stop_migration`]). The daemon calls this
    /// right after making the node; a test or tool that builds one by hand calls it too if it
    /// needs `migration`. Must run inside the tokio runtime. A second call returns the module of
    /// the first.
    pub fn start_migration(&self, settings: MigrationSettings) -> &Arc<Module<PoolEnv>> {
        &self
            .migration
            .get_or_init(|| {
                let pool = &self.pool;
                let env = Arc::new(PoolEnv::new(&self.transfers));
                let module = Module::new(env.clone(), settings);
                module.restore_holds(migration_env::saved_holds(&pool.repo));
                // Weak: the module (through its environment) holds the transfers.
                let weak: Weak<Module<PoolEnv>> = Arc::downgrade(&module);
                self.transfers.set_rate_limits(Box::new(move |ids: &[&PnfsId]| match weak.upgrade() {
                    Some(module) => module.rate_limits(ids.iter().copied()),
                    None => vec![None; ids.len()],
                }));
                let stop = CancellationToken::new();
                // Subscribed before the module can have a job, so no change is missed.
                let feed = migration_env::forward_changes(pool.repo.subscribe(), module.clone(), stop.clone());
                pool.tasks.spawn(tracing::Instrument::instrument(feed, tracing::Span::current()));
                let news = migration_env::forward_membership(pool.cluster.subscribe(), module.clone(), stop.clone());
                pool.tasks.spawn(tracing::Instrument::instrument(news, tracing::Span::current()));
                let prune = migration_env::prune_kept_connections(env, stop.clone());
                pool.tasks.spawn(tracing::Instrument::instrument(prune, tracing::Span::current()));
                Migration { module, stop }
            })
            .module
    }

    /// The migration module.
    ///
    /// # Panics
    /// If [`Node::start_migration`] was not called (the daemon always calls it).
    pub fn migration(&self) -> &Arc<Module<PoolEnv>> {
        self.try_migration().expect("the migration module is started with the pool (Node::start_migration)")
    }

    /// The migration module, if started.
    pub fn try_migration(&self) -> Option<&Arc<Module<PoolEnv>>> {
        self.migration.get().map(|m| &m.module)
    }

    /// Shutdown: force-cancels every migration job and every copy this pool serves as a
    /// target, waiting at most `grace` for them, then ends the feed of changes.
    pub async fn stop_migration(&self, grace: Duration) {
        if let Some(m) = self.migration.get() {
            m.module.shutdown(grace).await;
            m.stop.cancel();
        }
    }
}
