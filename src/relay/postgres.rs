//! The store on PostgreSQL, which a fleet of relays shares: one queue, one set of dead letters, one identity memory
//! and the console's settings. Ingestion commits each group of requests in one transaction (`synchronous_commit`
//! on) before any of them is answered. Delivery claims batches with `FOR UPDATE SKIP LOCKED` and a lease (which
//! relay, until when): a relay that dies leaves leases that run out and are claimed again, and a relay completes or
//! dead-letters only what it holds the lease of. A refused key or a Retry-After holds a pixel back for every relay.
//! The schema is created and migrated by the relay, under an advisory lock, so relays starting together do not race.
//!
//! The store's interface is synchronous (the writer is a thread of its own); this store runs its queries on a small
//! runtime of its own with tokio-postgres and a deadpool pool, and waits for them on a channel, which works from any
//! thread, async or not.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;

use super::store::{unreadable_row, DeadLetter, Hold, IngestTx, Pending, Store, StoreError};
use crate::identity::{IdentityStore, Profile};

/// The migrations, in order; each runs once, in a transaction, and is recorded in `engine_migrations`.
const MIGRATIONS: &[(i32, &str)] = &[(
    1,
    "CREATE TABLE engine_queue (
        seq bigint PRIMARY KEY,
        pixel text NOT NULL,
        pending text NOT NULL,
        bytes integer NOT NULL,
        lease_owner text,
        lease_until timestamptz
    );
    CREATE INDEX engine_queue_pixel ON engine_queue (pixel, seq);
    CREATE SEQUENCE engine_queue_seq INCREMENT BY 1000;
    CREATE TABLE engine_dead (
        pixel text NOT NULL,
        seq bigint NOT NULL,
        letter text NOT NULL,
        bytes integer NOT NULL,
        PRIMARY KEY (pixel, seq)
    );
    CREATE TABLE engine_identity (
        key text PRIMARY KEY,
        profile text NOT NULL,
        touched_ms bigint NOT NULL,
        bytes integer NOT NULL
    );
    CREATE INDEX engine_identity_touched ON engine_identity (touched_ms);
    CREATE TABLE engine_settings (key text PRIMARY KEY, value bytea NOT NULL);
    CREATE TABLE engine_holds (pixel text PRIMARY KEY, paused_why text, until_ms bigint);
    CREATE TABLE engine_bytes (shard integer PRIMARY KEY, bytes bigint NOT NULL);
    INSERT INTO engine_bytes SELECT shard, 0 FROM generate_series(0, 15) AS shard;",
)];

/// The advisory lock migrations run under (any fixed number; `engine` in ASCII).
const MIGRATION_LOCK: i64 = 0x656e_6769_6e65;
/// The advisory lock pruning identity memory runs under, so that one relay at a time prunes.
const PRUNE_LOCK: i64 = 0x656e_6769_6e66;

pub struct PostgresStore {
    /// Always `Some` but in `drop`, which takes it to shut it down without blocking.
    runtime: Option<tokio::runtime::Runtime>,
    pool: Pool,
    /// Who this relay is, in the leases it takes.
    owner: String,
    lease: Duration,
    /// Queue sequence numbers this relay may hand out: the sequence moves by 1,000 and each relay uses the block
    /// it drew, so that enqueueing needs no round trip per event.
    seqs: Mutex<(u64, u64)>,
    /// Spreads the byte count's updates over its shards, so that relays committing together do not wait on one row.
    shard: AtomicU64,
}

/// A driver error with its causes: tokio-postgres says only "db error" and keeps the server's message beneath.
fn failed(error: impl std::error::Error) -> StoreError {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        cause = inner.source();
    }
    StoreError(format!("PostgreSQL: {text}"))
}

/// Whether a transaction failed only because it ran into another (a deadlock or a serialization failure), so
/// that running it again succeeds.
fn collided(error: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    error
        .code()
        .is_some_and(|code| *code == SqlState::T_R_DEADLOCK_DETECTED || *code == SqlState::T_R_SERIALIZATION_FAILURE)
}

fn unreadable(error: serde_json::Error) -> StoreError {
    StoreError(format!("a stored record cannot be read: {error}"))
}

impl PostgresStore {
    /// Connects, creates or migrates the schema, and checks the database answers. `url` is a libpq-style
    /// connection string or URL (`postgres://user:password@host:port/database`).
    pub fn open(url: &str, pool_size: usize, lease: Duration) -> Result<PostgresStore, StoreError> {
        let mut config: tokio_postgres::Config =
            url.parse().map_err(|e| StoreError(format!("PostgreSQL: the connection URL: {e}")))?;
        // An acknowledged event must survive the server's crash, whatever the server's own default says.
        config.options("-c synchronous_commit=on");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("relay-postgres")
            .enable_all()
            .build()
            .map_err(|e| StoreError(format!("cannot start the PostgreSQL runtime: {e}")))?;
        let manager = Manager::from_config(config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = {
            let _entered = runtime.enter();
            Pool::builder(manager)
                .max_size(pool_size)
                .runtime(deadpool_postgres::Runtime::Tokio1)
                .wait_timeout(Some(Duration::from_secs(10)))
                .create_timeout(Some(Duration::from_secs(5)))
                .build()
                .map_err(failed)?
        };
        let mut id = [0u8; 6];
        let _ = getrandom::fill(&mut id);
        let owner = format!(
            "{}-{}-{}",
            std::env::var("HOSTNAME").unwrap_or_else(|_| "relay".to_string()),
            std::process::id(),
            id.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
        let store = PostgresStore {
            runtime: Some(runtime),
            pool,
            owner,
            lease,
            seqs: Mutex::new((0, 0)),
            shard: AtomicU64::new(0),
        };
        store.migrate()?;
        Ok(store)
    }

    /// Runs `work` on the store's runtime and waits for it, from whatever thread calls.
    fn run<T: Send + 'static>(
        &self,
        work: impl Future<Output = Result<T, StoreError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (done, wait) = std::sync::mpsc::sync_channel(1);
        let runtime = self.runtime.as_ref().expect("the runtime lives as long as the store");
        runtime.spawn(async move {
            let _ = done.send(work.await);
        });
        wait.recv().map_err(|_| StoreError("PostgreSQL: the query task ended without an answer".to_string()))?
    }

    fn client(&self) -> impl Future<Output = Result<deadpool_postgres::Object, StoreError>> + Send + 'static {
        let pool = self.pool.clone();
        async move { pool.get().await.map_err(failed) }
    }

    fn migrate(&self) -> Result<(), StoreError> {
        let client = self.client();
        self.run(async move {
            let mut client = client.await?;
            client.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK]).await.map_err(failed)?;
            let result = async {
                client
                    .batch_execute(
                        "CREATE TABLE IF NOT EXISTS engine_migrations (
                            version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())",
                    )
                    .await
                    .map_err(failed)?;
                for (version, sql) in MIGRATIONS {
                    let applied = client
                        .query_opt("SELECT 1 FROM engine_migrations WHERE version = $1", &[version])
                        .await
                        .map_err(failed)?;
                    if applied.is_some() {
                        continue;
                    }
                    let txn = client.transaction().await.map_err(failed)?;
                    txn.batch_execute(sql)
                        .await
                        .map_err(|e| StoreError(format!("PostgreSQL: migration {version}: {}", failed(e).0)))?;
                    txn.execute("INSERT INTO engine_migrations (version) VALUES ($1)", &[version])
                        .await
                        .map_err(failed)?;
                    txn.commit().await.map_err(failed)?;
                    tracing::info!(version, "PostgreSQL schema migrated");
                }
                Ok::<(), StoreError>(())
            }
            .await;
            client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]).await.map_err(failed)?;
            result
        })
    }

    /// The next `n` queue sequence numbers, drawing a new block from the database when this relay's runs out.
    fn next_seqs(&self, n: usize) -> Result<Vec<u64>, StoreError> {
        let mut out = Vec::with_capacity(n);
        let mut block = self.seqs.lock().unwrap_or_else(PoisonError::into_inner);
        while out.len() < n {
            if block.0 >= block.1 {
                let client = self.client();
                let start: i64 = self.run(async move {
                    let client = client.await?;
                    let row = client.query_one("SELECT nextval('engine_queue_seq')", &[]).await.map_err(failed)?;
                    Ok(row.get::<_, i64>(0))
                })?;
                *block = (start as u64, start as u64 + 1000);
            }
            out.push(block.0);
            block.0 += 1;
        }
        Ok(out)
    }

    fn shard(&self) -> i32 {
        (self.shard.fetch_add(1, Ordering::Relaxed) % 16) as i32
    }
}

impl Drop for PostgresStore {
    /// The store may be dropped by an async task (the relay's last holder of it): its runtime is shut down in the
    /// background rather than waited for, which tokio forbids there.
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Adjusts the byte count inside a transaction.
async fn count_bytes(
    client: &impl deadpool_postgres::GenericClient,
    shard: i32,
    added: i64,
    removed: i64,
) -> Result<(), StoreError> {
    if added != removed {
        client
            .execute("UPDATE engine_bytes SET bytes = bytes + $1 WHERE shard = $2", &[&(added - removed), &shard])
            .await
            .map_err(failed)?;
    }
    Ok(())
}

/// One ingestion transaction: identity memory is read as events ask (in the transaction), while queued events and
/// profile writes are collected and written together at commit.
struct PgIngest<'s> {
    store: &'s PostgresStore,
    client: Arc<deadpool_postgres::Object>,
    now_ms: i64,
    queued: Vec<(u64, String, String)>,
    profiles: Vec<(String, String)>,
    /// Profiles read from the database in this transaction (`None`: the visitor has none).
    read: std::collections::HashMap<String, Option<String>>,
    failure: Option<StoreError>,
}

impl IdentityStore for PgIngest<'_> {
    fn load(&mut self, key: &str) -> Option<Profile> {
        // A profile written earlier in this transaction is the newest.
        if let Some((_, profile)) = self.profiles.iter().rev().find(|(k, _)| k == key) {
            return serde_json::from_str(profile).ok();
        }
        // A visitor read before in this transaction (often: one visitor's events come together) is not asked again.
        if let Some(text) = self.read.get(key) {
            return text.as_deref().and_then(|t| serde_json::from_str(t).ok());
        }
        let client = self.client.clone();
        let owned = key.to_string();
        let loaded = self.store.run(async move {
            let statement =
                client.prepare_cached("SELECT profile FROM engine_identity WHERE key = $1").await.map_err(failed)?;
            let row = client.query_opt(&statement, &[&owned]).await.map_err(failed)?;
            Ok(row.map(|r| r.get::<_, String>(0)))
        });
        match loaded {
            Ok(text) => {
                let profile = text.as_deref().and_then(|t| serde_json::from_str(t).ok());
                self.read.insert(key.to_string(), text);
                profile
            }
            Err(error) => {
                self.failure.get_or_insert(error);
                None
            }
        }
    }

    fn store(&mut self, key: &str, profile: Profile) {
        match serde_json::to_string(&profile) {
            Ok(text) => self.profiles.push((key.to_string(), text)),
            Err(error) => {
                self.failure.get_or_insert(unreadable(error));
            }
        }
    }
}

impl IngestTx for PgIngest<'_> {
    fn prefetch(&mut self, keys: &[String]) {
        let wanted: Vec<String> = keys.iter().filter(|k| !self.read.contains_key(*k)).cloned().collect();
        if wanted.is_empty() {
            return;
        }
        let client = self.client.clone();
        let asked = wanted.clone();
        let found = self.store.run(async move {
            let statement = client
                .prepare_cached("SELECT key, profile FROM engine_identity WHERE key = ANY($1)")
                .await
                .map_err(failed)?;
            let rows = client.query(&statement, &[&asked]).await.map_err(failed)?;
            Ok(rows.iter().map(|r| (r.get::<_, String>(0), r.get::<_, String>(1))).collect::<Vec<_>>())
        });
        match found {
            Ok(found) => {
                // What was asked and not found is known to be absent: no second round trip for it.
                for key in wanted {
                    self.read.entry(key).or_insert(None);
                }
                for (key, profile) in found {
                    self.read.insert(key, Some(profile));
                }
            }
            Err(error) => {
                self.failure.get_or_insert(error);
            }
        }
    }

    fn enqueue(&mut self, pixel: &str, pending: &Pending) -> Result<u64, StoreError> {
        let seq = self.store.next_seqs(1)?[0];
        let text = pending.to_row_text();
        self.queued.push((seq, pixel.to_string(), text));
        Ok(seq)
    }
}

/// Writes a group's queued events and profiles and commits them.
async fn write_group(
    client: &deadpool_postgres::Object,
    queued: &[(u64, String, String)],
    latest: &[(&str, &str)],
    now_ms: i64,
    shard: i32,
) -> Result<(), tokio_postgres::Error> {
    let mut added: i64 = 0;
    if !queued.is_empty() {
        let seqs: Vec<i64> = queued.iter().map(|(seq, _, _)| *seq as i64).collect();
        let pixels: Vec<&str> = queued.iter().map(|(_, pixel, _)| pixel.as_str()).collect();
        let texts: Vec<&str> = queued.iter().map(|(_, _, text)| text.as_str()).collect();
        added += texts.iter().map(|t| t.len() as i64).sum::<i64>();
        let insert = client
            .prepare_cached(
                "INSERT INTO engine_queue (seq, pixel, pending, bytes)
                 SELECT s, p, t, octet_length(t) FROM unnest($1::bigint[], $2::text[], $3::text[]) AS u(s, p, t)",
            )
            .await?;
        client.execute(&insert, &[&seqs, &pixels, &texts]).await?;
    }
    let mut removed: i64 = 0;
    if !latest.is_empty() {
        let keys: Vec<&str> = latest.iter().map(|(k, _)| *k).collect();
        let texts: Vec<&str> = latest.iter().map(|(_, t)| *t).collect();
        removed += client
            .query_one("SELECT coalesce(sum(bytes), 0)::bigint FROM engine_identity WHERE key = ANY($1)", &[&keys])
            .await?
            .get::<_, i64>(0);
        added += texts.iter().map(|t| t.len() as i64).sum::<i64>();
        let upsert = client
            .prepare_cached(
                "INSERT INTO engine_identity (key, profile, touched_ms, bytes)
                 SELECT k, t, $3, octet_length(t) FROM unnest($1::text[], $2::text[]) AS u(k, t)
                 ON CONFLICT (key) DO UPDATE
                 SET profile = excluded.profile, touched_ms = excluded.touched_ms, bytes = excluded.bytes",
            )
            .await?;
        client.execute(&upsert, &[&keys, &texts, &now_ms]).await?;
    }
    if added != removed {
        client
            .execute("UPDATE engine_bytes SET bytes = bytes + $1 WHERE shard = $2", &[&(added - removed), &shard])
            .await?;
    }
    client.batch_execute("COMMIT").await
}

impl Store for PostgresStore {
    fn ingest(&self, work: &mut dyn FnMut(&mut dyn IngestTx) -> Result<(), StoreError>) -> Result<(), StoreError> {
        let client = self.client();
        let client = Arc::new(self.run(async move {
            let client = client.await?;
            client.batch_execute("BEGIN").await.map_err(failed)?;
            Ok(client)
        })?);
        let now_ms = jiff::Timestamp::now().as_millisecond();
        let mut ingest = PgIngest {
            store: self,
            client: client.clone(),
            now_ms,
            queued: Vec::new(),
            profiles: Vec::new(),
            read: std::collections::HashMap::new(),
            failure: None,
        };
        let outcome = work(&mut ingest).and_then(|()| ingest.failure.take().map_or(Ok(()), Err));
        let PgIngest { queued, profiles, now_ms, .. } = ingest;
        let shard = self.shard();
        let commit = outcome.is_ok();
        self.run(async move {
            if !commit {
                let _ = client.batch_execute("ROLLBACK").await;
                return Ok(());
            }
            // The last write of each visitor in this transaction wins; keys in order, so that relays committing
            // overlapping visitors lock them in the same order.
            let mut latest: Vec<(&str, &str)> = Vec::new();
            for (key, text) in profiles.iter().rev() {
                if !latest.iter().any(|(k, _)| k == key) {
                    latest.push((key, text));
                }
            }
            latest.sort_unstable_by(|a, b| a.0.cmp(b.0));
            let mut attempt = 0;
            loop {
                attempt += 1;
                match write_group(&client, &queued, &latest, now_ms, shard).await {
                    Ok(()) => return Ok(()),
                    // Another relay's transaction ran into this one: what this one read still holds (last writer
                    // wins for a profile), so its writes are made again in a fresh transaction.
                    Err(error) if collided(&error) && attempt < 4 => {
                        let _ = client.batch_execute("ROLLBACK").await;
                        client.batch_execute("BEGIN").await.map_err(failed)?;
                    }
                    Err(error) => {
                        let _ = client.batch_execute("ROLLBACK").await;
                        return Err(failed(error));
                    }
                }
            }
        })?;
        outcome
    }

    fn peek(&self, pixel: &str, limit: usize) -> Result<Vec<(u64, Pending)>, StoreError> {
        let client = self.client();
        let pixel = pixel.to_string();
        self.run(async move {
            let client = client.await?;
            let peek = client
                .prepare_cached(
                    "SELECT seq, pending FROM engine_queue
                     WHERE pixel = $1 AND (lease_until IS NULL OR lease_until < now())
                     ORDER BY seq LIMIT $2",
                )
                .await
                .map_err(failed)?;
            let rows = client.query(&peek, &[&pixel, &(limit as i64)]).await.map_err(failed)?;
            rows.iter()
                .map(|row| {
                    let pending = Pending::from_row(row.get::<_, &str>(1).as_bytes()).map_err(unreadable_row)?;
                    Ok((row.get::<_, i64>(0) as u64, pending))
                })
                .collect()
        })
    }

    fn claim(&self, pixel: &str, limit: usize) -> Result<Vec<(u64, Pending)>, StoreError> {
        let client = self.client();
        let (pixel, owner, lease_ms) = (pixel.to_string(), self.owner.clone(), self.lease.as_millis() as f64);
        let now = super::now_ms();
        self.run(async move {
            let client = client.await?;
            // Nothing is claimed while a Retry-After holds the pixel back: a relay that looked at the hold just before
            // another relay set it would otherwise take the events that relay handed back and send them at once.
            let claim = client
                .prepare_cached(
                    "UPDATE engine_queue SET lease_owner = $3, lease_until = now() + $4 * interval '1 millisecond'
                     WHERE seq IN (
                         SELECT seq FROM engine_queue
                         WHERE pixel = $1 AND (lease_until IS NULL OR lease_until < now())
                           AND NOT EXISTS (SELECT 1 FROM engine_holds h WHERE h.pixel = $1 AND h.until_ms > $5)
                         ORDER BY seq LIMIT $2
                         FOR UPDATE SKIP LOCKED)
                     RETURNING seq, pending",
                )
                .await
                .map_err(failed)?;
            let rows =
                client.query(&claim, &[&pixel, &(limit as i64), &owner, &lease_ms, &now]).await.map_err(failed)?;
            let mut out: Vec<(u64, Pending)> = rows
                .iter()
                .map(|row| {
                    let pending = Pending::from_row(row.get::<_, &str>(1).as_bytes()).map_err(unreadable_row)?;
                    Ok((row.get::<_, i64>(0) as u64, pending))
                })
                .collect::<Result<_, StoreError>>()?;
            out.sort_by_key(|(seq, _)| *seq);
            Ok(out)
        })
    }

    fn extend(&self, _pixel: &str, seqs: &[u64]) -> Result<(), StoreError> {
        let client = self.client();
        let seqs: Vec<i64> = seqs.iter().map(|s| *s as i64).collect();
        let (owner, lease_ms) = (self.owner.clone(), self.lease.as_millis() as f64);
        self.run(async move {
            let client = client.await?;
            client
                .execute(
                    "UPDATE engine_queue SET lease_until = now() + $3 * interval '1 millisecond'
                     WHERE seq = ANY($1) AND lease_owner = $2",
                    &[&seqs, &owner, &lease_ms],
                )
                .await
                .map_err(failed)?;
            Ok(())
        })
    }

    fn release(&self, _pixel: &str, seqs: &[u64]) -> Result<(), StoreError> {
        let client = self.client();
        let seqs: Vec<i64> = seqs.iter().map(|s| *s as i64).collect();
        let owner = self.owner.clone();
        self.run(async move {
            let client = client.await?;
            client
                .execute(
                    "UPDATE engine_queue SET lease_owner = NULL, lease_until = NULL
                     WHERE seq = ANY($1) AND lease_owner = $2",
                    &[&seqs, &owner],
                )
                .await
                .map_err(failed)?;
            Ok(())
        })
    }

    fn complete(&self, _pixel: &str, seqs: &[u64]) -> Result<(), StoreError> {
        let client = self.client();
        let seqs: Vec<i64> = seqs.iter().map(|s| *s as i64).collect();
        let owner = self.owner.clone();
        let shard = self.shard();
        self.run(async move {
            let mut client = client.await?;
            let txn = client.transaction().await.map_err(failed)?;
            // Only what this relay still holds the lease of: what another relay took over is its to settle.
            let delete = txn
                .prepare_cached(
                    "WITH gone AS (DELETE FROM engine_queue WHERE seq = ANY($1) AND lease_owner = $2 RETURNING bytes)
                     SELECT coalesce(sum(bytes), 0)::bigint FROM gone",
                )
                .await
                .map_err(failed)?;
            let removed: i64 = txn.query_one(&delete, &[&seqs, &owner]).await.map_err(failed)?.get(0);
            count_bytes(&txn, shard, 0, removed).await?;
            txn.commit().await.map_err(failed)
        })
    }

    fn bury(&self, pixel: &str, dead: &[(u64, String, String)], now_ms: i64) -> Result<(), StoreError> {
        let client = self.client();
        let owner = self.owner.clone();
        let shard = self.shard();
        let pixel = pixel.to_string();
        let dead = dead.to_vec();
        self.run(async move {
            let mut client = client.await?;
            let txn = client.transaction().await.map_err(failed)?;
            let (mut added, mut removed) = (0i64, 0i64);
            for (seq, reason, detail) in dead {
                let row = txn
                    .query_opt(
                        "DELETE FROM engine_queue WHERE seq = $1 AND lease_owner = $2 RETURNING pending, bytes",
                        &[&(seq as i64), &owner],
                    )
                    .await
                    .map_err(failed)?;
                let Some(row) = row else { continue };
                removed += row.get::<_, i32>(1) as i64;
                let pending = Pending::from_row(row.get::<_, &str>(0).as_bytes()).map_err(unreadable_row)?;
                let letter = DeadLetter { pixel: pixel.clone(), seq, pending, reason, detail, dead_ms: now_ms };
                let text = serde_json::to_string(&letter).map_err(unreadable)?;
                added += text.len() as i64;
                txn.execute(
                    "INSERT INTO engine_dead (pixel, seq, letter, bytes) VALUES ($1, $2, $3, octet_length($3))
                     ON CONFLICT (pixel, seq) DO UPDATE SET letter = excluded.letter, bytes = excluded.bytes",
                    &[&pixel, &(seq as i64), &text],
                )
                .await
                .map_err(failed)?;
            }
            count_bytes(&txn, shard, added, removed).await?;
            txn.commit().await.map_err(failed)
        })
    }

    fn dead_letters(&self, pixel: Option<&str>) -> Result<Vec<DeadLetter>, StoreError> {
        let client = self.client();
        let pixel = pixel.map(str::to_string);
        self.run(async move {
            let client = client.await?;
            let rows = client
                .query("SELECT letter FROM engine_dead WHERE $1::text IS NULL OR pixel = $1 ORDER BY seq", &[&pixel])
                .await
                .map_err(failed)?;
            rows.iter().map(|row| serde_json::from_str(row.get::<_, &str>(0)).map_err(unreadable)).collect()
        })
    }

    fn replay(&self, pixel: Option<&str>, seqs: Option<&[u64]>) -> Result<usize, StoreError> {
        let client = self.client();
        let pixel = pixel.map(str::to_string);
        let seqs: Option<Vec<i64>> = seqs.map(|s| s.iter().map(|s| *s as i64).collect());
        let shard = self.shard();
        self.run(async move {
            let mut client = client.await?;
            let txn = client.transaction().await.map_err(failed)?;
            let rows = txn
                .query(
                    "DELETE FROM engine_dead WHERE ($1::text IS NULL OR pixel = $1) AND ($2::bigint[] IS NULL OR seq = ANY($2))
                     RETURNING letter, bytes",
                    &[&pixel, &seqs],
                )
                .await
                .map_err(failed)?;
            let (mut added, mut removed) = (0i64, 0i64);
            for row in &rows {
                removed += row.get::<_, i32>(1) as i64;
                let letter: DeadLetter = serde_json::from_str(row.get::<_, &str>(0)).map_err(unreadable)?;
                let text = letter.pending.to_row_text();
                added += text.len() as i64;
                txn.execute(
                    "INSERT INTO engine_queue (seq, pixel, pending, bytes) VALUES ($1, $2, $3, octet_length($3))
                     ON CONFLICT (seq) DO NOTHING",
                    &[&(letter.seq as i64), &letter.pixel, &text],
                )
                .await
                .map_err(failed)?;
            }
            count_bytes(&txn, shard, added, removed).await?;
            txn.commit().await.map_err(failed)?;
            Ok(rows.len())
        })
    }

    fn purge(&self, pixel: Option<&str>, seqs: Option<&[u64]>) -> Result<usize, StoreError> {
        let client = self.client();
        let pixel = pixel.map(str::to_string);
        let seqs: Option<Vec<i64>> = seqs.map(|s| s.iter().map(|s| *s as i64).collect());
        let shard = self.shard();
        self.run(async move {
            let mut client = client.await?;
            let txn = client.transaction().await.map_err(failed)?;
            let row = txn
                .query_one(
                    "WITH gone AS (DELETE FROM engine_dead
                         WHERE ($1::text IS NULL OR pixel = $1) AND ($2::bigint[] IS NULL OR seq = ANY($2))
                         RETURNING bytes)
                     SELECT count(*), coalesce(sum(bytes), 0)::bigint FROM gone",
                    &[&pixel, &seqs],
                )
                .await
                .map_err(failed)?;
            let (count, removed): (i64, i64) = (row.get(0), row.get(1));
            count_bytes(&txn, shard, 0, removed).await?;
            txn.commit().await.map_err(failed)?;
            Ok(count as usize)
        })
    }

    fn depth(&self, pixel: &str) -> Result<u64, StoreError> {
        let client = self.client();
        let pixel = pixel.to_string();
        self.run(async move {
            let client = client.await?;
            let row = client
                .query_one("SELECT count(*) FROM engine_queue WHERE pixel = $1", &[&pixel])
                .await
                .map_err(failed)?;
            Ok(row.get::<_, i64>(0) as u64)
        })
    }

    fn stored_bytes(&self) -> Result<u64, StoreError> {
        let client = self.client();
        self.run(async move {
            let client = client.await?;
            let row = client
                .query_one("SELECT coalesce(sum(bytes), 0)::bigint FROM engine_bytes", &[])
                .await
                .map_err(failed)?;
            Ok(row.get::<_, i64>(0).max(0) as u64)
        })
    }

    fn forget_visitors(&self, before_ms: i64) -> Result<usize, StoreError> {
        let client = self.client();
        let shard = self.shard();
        self.run(async move {
            let mut client = client.await?;
            let txn = client.transaction().await.map_err(failed)?;
            // One relay prunes at a time; the others find the lock taken and leave it to that one.
            let locked: bool =
                txn.query_one("SELECT pg_try_advisory_xact_lock($1)", &[&PRUNE_LOCK]).await.map_err(failed)?.get(0);
            if !locked {
                return Ok(0);
            }
            let mut forgotten = 0usize;
            loop {
                // In slices, so that no delete holds locks for long.
                let row = txn
                    .query_one(
                        "WITH gone AS (DELETE FROM engine_identity WHERE key IN (
                             SELECT key FROM engine_identity WHERE touched_ms < $1 LIMIT 5000) RETURNING bytes)
                         SELECT count(*), coalesce(sum(bytes), 0)::bigint FROM gone",
                        &[&before_ms],
                    )
                    .await
                    .map_err(failed)?;
                let (count, removed): (i64, i64) = (row.get(0), row.get(1));
                count_bytes(&txn, shard, 0, removed).await?;
                forgotten += count as usize;
                if count < 5000 {
                    break;
                }
            }
            super::killpoint::reached("prune");
            txn.commit().await.map_err(failed)?;
            Ok(forgotten)
        })
    }

    fn hold(&self, pixel: &str) -> Result<Hold, StoreError> {
        let client = self.client();
        let pixel = pixel.to_string();
        self.run(async move {
            let client = client.await?;
            let row = client
                .query_opt("SELECT paused_why, until_ms FROM engine_holds WHERE pixel = $1", &[&pixel])
                .await
                .map_err(failed)?;
            Ok(row.map(|r| Hold { paused_why: r.get(0), until_ms: r.get(1) }).unwrap_or_default())
        })
    }

    fn set_hold(&self, pixel: &str, hold: &Hold) -> Result<(), StoreError> {
        let client = self.client();
        let pixel = pixel.to_string();
        let hold = hold.clone();
        self.run(async move {
            let client = client.await?;
            if hold == Hold::default() {
                client.execute("DELETE FROM engine_holds WHERE pixel = $1", &[&pixel]).await.map_err(failed)?;
            } else {
                client
                    .execute(
                        "INSERT INTO engine_holds (pixel, paused_why, until_ms) VALUES ($1, $2, $3)
                         ON CONFLICT (pixel) DO UPDATE SET paused_why = excluded.paused_why, until_ms = excluded.until_ms",
                        &[&pixel, &hold.paused_why, &hold.until_ms],
                    )
                    .await
                    .map_err(failed)?;
            }
            Ok(())
        })
    }

    fn shared(&self) -> bool {
        true
    }

    fn settings(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let client = self.client();
        let pattern = format!("{}%", prefix.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_"));
        self.run(async move {
            let client = client.await?;
            let rows = client
                .query("SELECT key, value FROM engine_settings WHERE key LIKE $1 ORDER BY key", &[&pattern])
                .await
                .map_err(failed)?;
            Ok(rows.iter().map(|r| (r.get::<_, String>(0), r.get::<_, Vec<u8>>(1))).collect())
        })
    }

    fn put_settings(&self, writes: &[(String, Option<Vec<u8>>)]) -> Result<(), StoreError> {
        let client = self.client();
        let writes = writes.to_vec();
        self.run(async move {
            let mut client = client.await?;
            let txn = client.transaction().await.map_err(failed)?;
            for (key, value) in writes {
                match value {
                    Some(bytes) => txn
                        .execute(
                            "INSERT INTO engine_settings (key, value) VALUES ($1, $2)
                             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                            &[&key, &bytes],
                        )
                        .await
                        .map_err(failed)?,
                    None => txn.execute("DELETE FROM engine_settings WHERE key = $1", &[&key]).await.map_err(failed)?,
                };
            }
            txn.commit().await.map_err(failed)
        })
    }
}
