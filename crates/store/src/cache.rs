//! Read-through cache of ID mappings: Redis when configured, else an
//! in-process map.
//!
//! The cache is never the source of truth. The store writes the database
//! first and only then updates the cache, and every entry carries the
//! mapping's version: an entry is replaced only by a newer one, so a slow
//! read-through fill can never put back a status older than the last
//! committed transition.
//!
//! Redis may go away at any time. Every Redis error turns into "not cached":
//! the caller falls back to the database and the sync carries on. The first
//! error of an outage is logged once, each fallback is counted, and keys whose
//! update was lost during the outage are deleted before the cache is trusted
//! again.

mod codec;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use syncd_core::clock::{Clock, SystemClock};
use syncd_core::ids::EntityScope;
use syncd_core::mapping::IdMapping;
use syncd_core::record::Side;

/// How long an entry lives unless replaced.
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);

/// Keys whose lost updates we remember through an outage; past this many,
/// the whole cache is bypassed until the entries have expired.
const MAX_LOST_UPDATES: usize = 10_000;

/// Keys per generation of the in-process cache (it holds at most two).
const LOCAL_GENERATION: usize = 64 * 1024;

/// Set `KEYS[1]` to `ARGV[2]` (which starts with `<version>|`) unless it
/// already holds a newer version.
const SET_IF_NEWER: &str = r#"
local cur = redis.call('GET', KEYS[1])
if cur then
  local v = tonumber(string.match(cur, '^(%d+)|'))
  if v and v > tonumber(ARGV[1]) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"#;

/// Counters an operator can scrape.
#[derive(Debug, Default)]
pub struct CacheStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    /// Lookups answered by the database because Redis failed.
    pub fallbacks: AtomicU64,
}

/// A point-in-time copy of [`CacheStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheCounts {
    pub hits: u64,
    pub misses: u64,
    pub fallbacks: u64,
}

/// The mapping cache the store reads through.
pub struct MappingCache {
    backend: Backend,
    prefix: String,
    ttl: Duration,
    stats: CacheStats,
    /// What entries expire by.
    clock: Arc<dyn Clock>,
}

enum Backend {
    Disabled,
    Local(Mutex<LocalCache>),
    Redis(RedisCache),
}

struct RedisCache {
    client: redis::Client,
    conn: tokio::sync::Mutex<Option<redis::aio::ConnectionManager>>,
    last_connect_attempt: Mutex<Option<Instant>>,
    /// What the reconnect back-off and the bypass are timed by.
    clock: Arc<dyn Clock>,
    in_outage: AtomicBool,
    /// Keys whose post-commit update failed; deleted before the next read.
    lost: Mutex<HashSet<String>>,
    /// Set when `lost` overflowed: bypass Redis until entries have expired.
    bypass_until: Mutex<Option<Instant>>,
}

/// The in-process cache, in two generations so that the mappings a sync
/// keeps asking for (the parents its records refer to) stay while new ones
/// stream through: keys go into `young`; a full `young` becomes `old`,
/// dropping the old `old`; a hit in `old` moves back into `young`. A
/// mapping is stored once, shared by its keys.
#[derive(Default)]
struct LocalCache {
    young: LocalMap,
    old: LocalMap,
}

/// Keys to entries. foldhash, seeded per map: the keys hold ids from the
/// systems synced, so the hash must not be one they could collide on
/// purpose; SipHash was about 3% of a first load's CPU in syncd.
type LocalMap = HashMap<String, LocalEntry, foldhash::fast::RandomState>;

/// Expiry and mapping.
type LocalEntry = (Instant, Arc<IdMapping>);

impl LocalCache {
    fn get(&mut self, key: &str, now: Instant) -> Option<Arc<IdMapping>> {
        if let Some((expires, m)) = self.young.get(key) {
            return (*expires > now).then(|| m.clone());
        }
        let (key, entry) = self.old.remove_entry(key)?;
        if entry.0 <= now {
            return None;
        }
        let found = entry.1.clone();
        self.insert(key, entry);
        Some(found)
    }

    /// Stores `entry` under `key` unless a newer version is there.
    fn put(&mut self, key: String, entry: LocalEntry) {
        if let Some(held) = self.young.get_mut(&key) {
            if held.1.version <= entry.1.version {
                *held = entry;
            }
            return;
        }
        if self
            .old
            .get(&key)
            .is_some_and(|held| held.1.version > entry.1.version)
        {
            return;
        }
        self.insert(key, entry);
    }

    fn insert(&mut self, key: String, entry: LocalEntry) {
        if self.young.len() >= LOCAL_GENERATION && !self.young.contains_key(&key) {
            let fresh = LocalMap::with_capacity_and_hasher(LOCAL_GENERATION, Default::default());
            self.old = std::mem::replace(&mut self.young, fresh);
        }
        self.young.insert(key, entry);
    }

    fn remove(&mut self, key: &str) {
        self.young.remove(key);
        self.old.remove(key);
    }
}

/// Appends `part` to `key` with the separator escaped, so that tenant `a:b`
/// and tenant `a` with integration `b` never share a key.
fn push_escaped(key: &mut String, part: &str) {
    if !part.contains(['%', ':']) {
        key.push_str(part);
        return;
    }
    for c in part.chars() {
        match c {
            '%' => key.push_str("%25"),
            ':' => key.push_str("%3A"),
            c => key.push(c),
        }
    }
}

impl MappingCache {
    /// Empties the in-process cache (Redis is shared, and kept). A run
    /// starts with it empty: between two runs of an integration, another
    /// process (a `syncd run`, another worker) may have changed mappings
    /// this process holds; during a run the run's lease keeps them to it.
    pub fn forget_local(&self) {
        if let Backend::Local(local) = &self.backend {
            let mut local = local.lock().unwrap_or_else(|e| e.into_inner());
            local.young.clear();
            local.old.clear();
        }
    }

    /// No caching: every lookup goes to the database.
    pub fn disabled() -> MappingCache {
        MappingCache::with(Backend::Disabled, "syncd")
    }

    /// An in-process cache: the embedded default.
    pub fn local() -> MappingCache {
        MappingCache::with(Backend::Local(Mutex::new(LocalCache::default())), "syncd")
    }

    /// A Redis cache at `url`, its keys under `prefix`. Connects lazily, so a
    /// Redis that is down at start is an outage, not a failure.
    pub fn redis(url: &str, prefix: &str) -> Result<MappingCache, redis::RedisError> {
        let client = redis::Client::open(url)?;
        Ok(MappingCache::with(
            Backend::Redis(RedisCache {
                client,
                conn: tokio::sync::Mutex::new(None),
                last_connect_attempt: Mutex::new(None),
                clock: Arc::new(SystemClock),
                in_outage: AtomicBool::new(false),
                lost: Mutex::new(HashSet::new()),
                bypass_until: Mutex::new(None),
            }),
            prefix,
        ))
    }

    fn with(backend: Backend, prefix: &str) -> MappingCache {
        MappingCache {
            backend,
            prefix: prefix.to_owned(),
            ttl: DEFAULT_TTL,
            stats: CacheStats::default(),
            clock: Arc::new(SystemClock),
        }
    }

    /// Sets the clock entries expire by (and a Redis cache's back-off and
    /// bypass; Redis itself expires its entries on its own clock).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> MappingCache {
        if let Backend::Redis(r) = &mut self.backend {
            r.clock = clock.clone();
        }
        self.clock = clock;
        self
    }

    /// Sets how long entries live.
    pub fn with_ttl(mut self, ttl: Duration) -> MappingCache {
        self.ttl = ttl;
        self
    }

    /// True unless this cache is [`MappingCache::disabled`].
    pub fn is_enabled(&self) -> bool {
        !matches!(self.backend, Backend::Disabled)
    }

    /// The key of the mapping of `id` on `side` within `scope`.
    pub fn key(&self, scope: &EntityScope, side: Side, id: &str) -> String {
        let mut key = self.key_head(
            scope.tenant_id.as_str(),
            scope.integration_id.as_str(),
            scope.entity_type.as_str(),
            side,
        );
        push_escaped(&mut key, id);
        key
    }

    /// The keys of `ids`, in order: [`MappingCache::key`] of each, with the
    /// part they share built once.
    pub fn keys(&self, scope: &EntityScope, side: Side, ids: &[String]) -> Vec<String> {
        let head = self.key_head(
            scope.tenant_id.as_str(),
            scope.integration_id.as_str(),
            scope.entity_type.as_str(),
            side,
        );
        ids.iter()
            .map(|id| {
                let mut key = String::with_capacity(head.len() + id.len());
                key.push_str(&head);
                push_escaped(&mut key, id);
                key
            })
            .collect()
    }

    /// Every key `mapping` is cached under: one per known id.
    pub fn keys_of(&self, mapping: &IdMapping) -> Vec<String> {
        self.keys_of_each(std::slice::from_ref(mapping))
            .into_iter()
            .map(|(key, _)| key)
            .collect()
    }

    /// [`MappingCache::keys_of`] of each of `mappings`, with the index of
    /// the mapping each key is of; the part a scope's keys share is built
    /// once for a run of mappings of the same scope.
    pub fn keys_of_each<M: std::borrow::Borrow<IdMapping>>(&self, mappings: &[M]) -> Vec<(String, usize)> {
        let mut keys = Vec::with_capacity(mappings.len() * 2);
        let mut heads: Option<(&IdMapping, String, String)> = None;
        for (i, m) in mappings.iter().enumerate() {
            let m: &IdMapping = m.borrow();
            let same = heads.as_ref().is_some_and(|(h, _, _)| {
                h.tenant_id == m.tenant_id
                    && h.integration_id == m.integration_id
                    && h.entity_type == m.entity_type
            });
            if !same {
                let (tenant, integration, entity) = (
                    m.tenant_id.as_str(),
                    m.integration_id.as_str(),
                    m.entity_type.as_str(),
                );
                heads = Some((
                    m,
                    self.key_head(tenant, integration, entity, Side::Source),
                    self.key_head(tenant, integration, entity, Side::Target),
                ));
            }
            let (_, source_head, target_head) = heads.as_ref().expect("heads of this scope");
            for (head, id) in [(source_head, &m.source_id), (target_head, &m.target_id)] {
                if let Some(id) = id {
                    let mut key = String::with_capacity(head.len() + id.len());
                    key.push_str(head);
                    push_escaped(&mut key, id);
                    keys.push((key, i));
                }
            }
        }
        keys
    }

    /// `<prefix>:map:<tenant>:<integration>:<entity type>:<s|t>:`, each part
    /// escaped; the id follows.
    fn key_head(&self, tenant: &str, integration: &str, entity_type: &str, side: Side) -> String {
        let mut key = String::with_capacity(
            self.prefix.len() + tenant.len() + integration.len() + entity_type.len() + 48,
        );
        key.push_str(&self.prefix);
        key.push_str(":map:");
        for part in [tenant, integration, entity_type] {
            push_escaped(&mut key, part);
            key.push(':');
        }
        key.push_str(if side == Side::Source { "s:" } else { "t:" });
        key
    }

    /// Counters so far.
    pub fn counts(&self) -> CacheCounts {
        CacheCounts {
            hits: self.stats.hits.load(Ordering::Relaxed),
            misses: self.stats.misses.load(Ordering::Relaxed),
            fallbacks: self.stats.fallbacks.load(Ordering::Relaxed),
        }
    }

    /// Looks up `keys` in one round trip. Returns `None` when the cache
    /// cannot answer (disabled, or Redis failing): read them all from the
    /// database.
    pub async fn get_many(&self, keys: &[String]) -> Option<Vec<Option<Arc<IdMapping>>>> {
        // Redis answers an empty MGET with an error, which would read as an
        // outage.
        if keys.is_empty() {
            return Some(Vec::new());
        }
        let found = match &self.backend {
            Backend::Disabled => return None,
            Backend::Local(map) => {
                let now = self.clock.instant();
                let mut map = map.lock().expect("cache lock");
                keys.iter().map(|k| map.get(k, now)).collect::<Vec<_>>()
            }
            Backend::Redis(redis) => match redis.get_many(keys).await {
                Ok(found) => {
                    self.recovered(redis);
                    found.into_iter().map(|m| m.map(Arc::new)).collect()
                }
                Err(e) => {
                    self.outage(redis, &e);
                    self.stats.fallbacks.fetch_add(1, Ordering::Relaxed);
                    cache_event("fallback", 1);
                    return None;
                }
            },
        };
        let hits = found.iter().filter(|m| m.is_some()).count() as u64;
        self.stats.hits.fetch_add(hits, Ordering::Relaxed);
        self.stats
            .misses
            .fetch_add(keys.len() as u64 - hits, Ordering::Relaxed);
        cache_event("hit", hits);
        cache_event("miss", keys.len() as u64 - hits);
        Some(found)
    }

    /// Stores each mapping under each of its keys, unless a newer version is
    /// already there. Pipelined: one round trip.
    pub async fn put_many(&self, mappings: &[Arc<IdMapping>]) {
        match &self.backend {
            Backend::Disabled => {}
            Backend::Local(map) => {
                let expires = self.clock.instant() + self.ttl;
                let keyed = self.keys_of_each(mappings);
                let mut map = map.lock().expect("cache lock");
                for (key, i) in keyed {
                    map.put(key, (expires, mappings[i].clone()));
                }
            }
            Backend::Redis(redis) => {
                let entries: Vec<(String, &IdMapping)> = self
                    .keys_of_each(mappings)
                    .into_iter()
                    .map(|(k, i)| (k, &*mappings[i]))
                    .collect();
                if entries.is_empty() {
                    return;
                }
                if let Err(e) = redis.put_many(&entries, self.ttl).await {
                    self.outage(redis, &e);
                    redis.remember_lost(entries.into_iter().map(|(k, _)| k), self.ttl);
                }
            }
        }
    }

    /// Removes `keys` (ids a mapping no longer has).
    pub async fn delete_many(&self, keys: &[String]) {
        if keys.is_empty() {
            return;
        }
        match &self.backend {
            Backend::Disabled => {}
            Backend::Local(map) => {
                let mut map = map.lock().expect("cache lock");
                for key in keys {
                    map.remove(key);
                }
            }
            Backend::Redis(redis) => {
                if let Err(e) = redis.delete(keys).await {
                    self.outage(redis, &e);
                    redis.remember_lost(keys.iter().cloned(), self.ttl);
                }
            }
        }
    }

    fn outage(&self, redis: &RedisCache, error: &redis::RedisError) {
        redis.disconnect();
        if !redis.in_outage.swap(true, Ordering::Relaxed) {
            tracing::warn!(%error, "redis mapping cache unavailable; reading mappings from the database");
        }
    }

    fn recovered(&self, redis: &RedisCache) {
        if redis.in_outage.swap(false, Ordering::Relaxed) {
            tracing::info!("redis mapping cache is back");
        }
    }
}

impl RedisCache {
    /// Forgets the connection after an error, so that the next calls wait
    /// for a reconnect attempt (at most one a second) instead of each
    /// retrying on its own and stalling the sync.
    fn disconnect(&self) {
        if let Ok(mut conn) = self.conn.try_lock() {
            *conn = None;
        }
    }

    /// A connection, reconnecting at most once a second while Redis is down.
    async fn connection(&self) -> redis::RedisResult<redis::aio::ConnectionManager> {
        let mut conn = self.conn.lock().await;
        if let Some(c) = conn.as_ref() {
            return Ok(c.clone());
        }
        {
            let mut last = self.last_connect_attempt.lock().expect("cache lock");
            if last.is_some_and(|t| self.clock.instant().duration_since(t) < Duration::from_secs(1)) {
                return Err(redis::RedisError::from((
                    redis::ErrorKind::IoError,
                    "redis unreachable; next reconnect attempt within a second",
                )));
            }
            *last = Some(self.clock.instant());
        }
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Duration::from_millis(500))
            .set_response_timeout(Duration::from_millis(1000))
            .set_number_of_retries(0);
        let manager = redis::aio::ConnectionManager::new_with_config(self.client.clone(), config).await?;
        *conn = Some(manager.clone());
        Ok(manager)
    }

    /// Deletes the keys whose updates were lost, before anything is read.
    async fn repair(&self, conn: &mut redis::aio::ConnectionManager) -> redis::RedisResult<()> {
        if self
            .bypass_until
            .lock()
            .expect("cache lock")
            .is_some_and(|t| self.clock.instant() < t)
        {
            return Err(redis::RedisError::from((
                redis::ErrorKind::IoError,
                "redis cache bypassed until entries from before the outage expire",
            )));
        }
        let lost: Vec<String> = self.lost.lock().expect("cache lock").iter().cloned().collect();
        if !lost.is_empty() {
            redis::cmd("DEL").arg(&lost).query_async::<()>(conn).await?;
            let mut set = self.lost.lock().expect("cache lock");
            for key in &lost {
                set.remove(key);
            }
        }
        Ok(())
    }

    fn remember_lost(&self, keys: impl Iterator<Item = String>, ttl: Duration) {
        let mut lost = self.lost.lock().expect("cache lock");
        lost.extend(keys);
        if lost.len() > MAX_LOST_UPDATES {
            lost.clear();
            *self.bypass_until.lock().expect("cache lock") = Some(self.clock.instant() + ttl);
        }
    }

    async fn get_many(&self, keys: &[String]) -> redis::RedisResult<Vec<Option<IdMapping>>> {
        let mut conn = self.connection().await?;
        self.repair(&mut conn).await?;
        let values: Vec<Option<Vec<u8>>> = redis::cmd("MGET").arg(keys).query_async(&mut conn).await?;
        Ok(values
            .into_iter()
            // An entry we cannot read is a miss, not an error.
            .map(|v| codec::decode(&v?))
            .collect())
    }

    async fn put_many(&self, entries: &[(String, &IdMapping)], ttl: Duration) -> redis::RedisResult<()> {
        let mut conn = self.connection().await?;
        self.repair(&mut conn).await?;
        let mut pipe = redis::pipe();
        for (key, mapping) in entries {
            let value = codec::encode(mapping);
            pipe.cmd("EVAL")
                .arg(SET_IF_NEWER)
                .arg(1)
                .arg(key)
                .arg(mapping.version)
                .arg(value)
                .arg(ttl.as_millis() as u64)
                .ignore();
        }
        pipe.query_async::<()>(&mut conn).await
    }

    async fn delete(&self, keys: &[String]) -> redis::RedisResult<()> {
        let mut conn = self.connection().await?;
        self.repair(&mut conn).await?;
        redis::cmd("DEL").arg(keys).query_async::<()>(&mut conn).await
    }
}

/// Counts `n` cache events of a kind (hit, miss, fallback) in the metrics.
fn cache_event(event: &str, n: u64) {
    if n > 0 {
        syncd_metrics::metrics()
            .cache
            .get_or_create(&vec![("event", event.to_owned())])
            .inc_by(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_local_entry_lives_for_its_ttl_and_not_longer() {
        let clock = Arc::new(syncd_core::clock::ManualClock::at(chrono::Utc::now()));
        let cache = MappingCache::local()
            .with_ttl(Duration::from_secs(60))
            .with_clock(clock.clone());
        let scope = EntityScope::new("t", "i", "account");
        let m = Arc::new(IdMapping::reserve(
            uuid::Uuid::new_v4(),
            scope.clone(),
            Some("s-1".into()),
            None,
            "fwd:k".into(),
            chrono::Utc::now(),
        ));
        cache.put_many(std::slice::from_ref(&m)).await;
        let key = vec![cache.key(&scope, Side::Source, "s-1")];
        let found = |got: Option<Vec<Option<Arc<IdMapping>>>>| got.unwrap().remove(0);
        assert_eq!(found(cache.get_many(&key).await), Some(m.clone()));
        clock.advance(Duration::from_secs(59));
        assert_eq!(found(cache.get_many(&key).await), Some(m), "still fresh");
        clock.advance(Duration::from_secs(2));
        assert_eq!(found(cache.get_many(&key).await), None, "expired after its TTL");
    }

    #[test]
    fn keys_escape_the_separator() {
        let cache = MappingCache::disabled();
        let scope = EntityScope::new("a:b", "c%d", "account");
        assert_eq!(
            cache.key(&scope, Side::Source, "x:1"),
            "syncd:map:a%3Ab:c%25d:account:s:x%3A1"
        );
        assert_eq!(
            cache.key(&scope, Side::Target, "%3A"),
            "syncd:map:a%3Ab:c%25d:account:t:%253A"
        );
        assert_ne!(
            cache.key(&EntityScope::new("a:b", "c", "e"), Side::Source, "1"),
            cache.key(&EntityScope::new("a", "b:c", "e"), Side::Source, "1")
        );
    }

    #[test]
    fn batch_keys_and_mapping_keys_match_single_keys() {
        let cache = MappingCache::disabled();
        let scope = EntityScope::new("t:1", "i", "order_line");
        let ids: Vec<String> = ["plain", "with:colon", "100%"].map(String::from).to_vec();
        let single: Vec<String> = ids.iter().map(|id| cache.key(&scope, Side::Target, id)).collect();
        assert_eq!(cache.keys(&scope, Side::Target, &ids), single);
        let m = IdMapping::reserve(
            uuid::Uuid::new_v4(),
            scope.clone(),
            Some("s:1".into()),
            Some("t%2".into()),
            "k".into(),
            chrono::Utc::now(),
        );
        assert_eq!(
            cache.keys_of(&m),
            vec![
                cache.key(&scope, Side::Source, "s:1"),
                cache.key(&scope, Side::Target, "t%2")
            ]
        );
        // A batch whose scopes change part-way: each key has its own scope.
        let other = EntityScope::new("t", "i:1", "order_line");
        let of = |scope: &EntityScope, s: &str, t: Option<&str>| {
            IdMapping::reserve(
                uuid::Uuid::new_v4(),
                scope.clone(),
                Some(s.into()),
                t.map(String::from),
                "k".into(),
                chrono::Utc::now(),
            )
        };
        let batch = [
            of(&scope, "a", Some("b")),
            of(&other, "c", None),
            of(&scope, "d", Some("e")),
        ];
        let expected: Vec<(String, usize)> = batch
            .iter()
            .enumerate()
            .flat_map(|(i, m)| cache.keys_of(m).into_iter().map(move |k| (k, i)))
            .collect();
        assert_eq!(cache.keys_of_each(&batch), expected);
        assert_eq!(expected[2].0, cache.key(&other, Side::Source, "c"));
        assert_eq!(expected[3].0, cache.key(&scope, Side::Source, "d"));
    }

    #[tokio::test]
    async fn a_local_entry_is_never_replaced_by_an_older_version() {
        let cache = MappingCache::local();
        let scope = EntityScope::new("t", "i", "account");
        let version = |v: u64, target: &str| {
            let mut m = IdMapping::reserve(
                uuid::Uuid::nil(),
                scope.clone(),
                Some("s-1".into()),
                Some(target.into()),
                "k".into(),
                chrono::Utc::now(),
            );
            m.version = v;
            Arc::new(m)
        };
        let key = cache.key(&scope, Side::Source, "s-1");
        let held = |cache: &MappingCache| {
            let Backend::Local(map) = &cache.backend else {
                unreachable!()
            };
            let mut map = map.lock().unwrap();
            map.get(&key, Instant::now()).map(|m| m.version)
        };
        cache.put_many(&[version(2, "t-2")]).await;
        cache.put_many(&[version(1, "t-1")]).await;
        assert_eq!(
            held(&cache),
            Some(2),
            "an older version does not replace a newer one"
        );
        cache.put_many(&[version(3, "t-3")]).await;
        assert_eq!(held(&cache), Some(3), "a newer one does");
        // Pushed into the old generation by other keys, it still wins.
        let others: Vec<Arc<IdMapping>> = (0..LOCAL_GENERATION)
            .map(|i| {
                let mut m = (*version(1, "x")).clone();
                m.source_id = Some(format!("other-{i}"));
                m.target_id = None;
                Arc::new(m)
            })
            .collect();
        cache.put_many(&others).await;
        {
            let Backend::Local(map) = &cache.backend else {
                unreachable!()
            };
            let map = map.lock().unwrap();
            assert!(map.old.contains_key(&key) && !map.young.contains_key(&key));
        }
        cache.put_many(&[version(2, "t-2")]).await;
        assert_eq!(held(&cache), Some(3), "nor from the old generation");
    }
}
