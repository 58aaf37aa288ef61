//! Redis connections: one node (`redis://host:port/db`) or a Redis Cluster, named by a
//! comma-separated list of seed node URLs or `redis+cluster://host:port[,host:port…]`.

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};
use std::sync::Arc;
use std::time::Duration;

/// Where Redis is: one node, or a Redis Cluster's seed nodes (the filter's `RedisTarget` is
/// an Envoy cluster instead).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RedisAddress {
    /// One Redis node (or a proxy in front of many).
    Single(String),
    /// Seed nodes of a Redis Cluster.
    Cluster(Vec<String>),
}

fn check_scheme(url: &str) -> Result<(), String> {
    if url.starts_with("redis://") || url.starts_with("rediss://") || url.starts_with("unix://") {
        Ok(())
    } else {
        Err(format!("expected a redis://, rediss:// or unix:// URL, got {:?}", redact(url)))
    }
}

/// A URL with any password removed, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}://***@{}", &url[..scheme], &url[at + 1..]),
        _ => url.to_string(),
    }
}

impl RedisAddress {
    /// Parses the `redis_url` setting.
    pub fn parse(url: &str) -> Result<Self, String> {
        let url = url.trim();
        if let Some(rest) = url.strip_prefix("redis+cluster://") {
            let nodes: Vec<String> = rest.split(',').map(|n| format!("redis://{}", n.trim())).collect();
            if nodes.iter().any(|n| n == "redis://") {
                return Err("redis+cluster:// needs host:port entries separated by commas".into());
            }
            return Ok(RedisAddress::Cluster(nodes));
        }
        if url.contains(',') {
            let nodes: Vec<String> = url.split(',').map(|n| n.trim().to_string()).collect();
            for n in &nodes {
                check_scheme(n)?;
            }
            return Ok(RedisAddress::Cluster(nodes));
        }
        check_scheme(url)?;
        Ok(RedisAddress::Single(url.to_string()))
    }
}

/// A lazily connected, cheaply cloned handle to Redis; reconnects by itself.
#[derive(Clone)]
pub enum Redis {
    /// One node, behind a reconnecting multiplexed connection.
    Single(ConnectionManager, redis::Client, Duration),
    /// A cluster; connected on first use (so `serve` can start while Redis is down).
    Cluster(Arc<ClusterClient>, SharedCluster),
}

impl Redis {
    /// Builds the handle without connecting; errors on a malformed URL or outside a tokio runtime.
    pub fn open(target: &RedisAddress, timeout: Duration) -> RedisResult<Redis> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(redis::RedisError::from((
                redis::ErrorKind::Client,
                "Redis::open needs a running tokio runtime",
            )));
        }
        match target {
            RedisAddress::Single(url) => {
                let client = redis::Client::open(url.as_str())?;
                let manager_client = client.clone();
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(timeout))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_millis(200));
                Ok(Redis::Single(ConnectionManager::new_lazy_with_config(manager_client, config)?, client, timeout))
            }
            RedisAddress::Cluster(nodes) => {
                let client = ClusterClient::builder(nodes.clone())
                    .connection_timeout(timeout)
                    .response_timeout(timeout)
                    .retries(2)
                    .build()?;
                Ok(Redis::Cluster(Arc::new(client), SharedCluster::default()))
            }
        }
    }

    /// Every key matching `pattern`, from every node (each master of a cluster), by `SCAN`.
    pub async fn scan_all(&self, pattern: &str) -> RedisResult<Vec<String>> {
        let scan = |cursor: u64| {
            let mut cmd = redis::cmd("SCAN");
            cmd.arg(cursor).arg("MATCH").arg(pattern).arg("COUNT").arg(1000);
            cmd
        };
        let mut found = Vec::new();
        match self.conn().await? {
            Conn::Single(mut c) => {
                let mut cursor = 0u64;
                loop {
                    let (next, keys): (u64, Vec<String>) = scan(cursor).query_async(&mut c).await?;
                    found.extend(keys);
                    if next == 0 {
                        return Ok(found);
                    }
                    cursor = next;
                }
            }
            Conn::Dedicated(_) => Ok(found),
            Conn::Cluster(mut c, _) => {
                use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
                let nodes = c
                    .route_command(
                        redis::cmd("CLUSTER").arg("NODES").clone(),
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
                    )
                    .await?;
                let nodes: String = redis::FromRedisValue::from_redis_value(nodes)?;
                for (host, port) in masters(&nodes) {
                    let mut cursor = 0u64;
                    loop {
                        let route =
                            RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host: host.clone(), port });
                        let reply = c.route_command(scan(cursor), route).await?;
                        let (next, keys): (u64, Vec<String>) = redis::FromRedisValue::from_redis_value(reply)?;
                        found.extend(keys);
                        if next == 0 {
                            break;
                        }
                        cursor = next;
                    }
                }
                Ok(found)
            }
        }
    }

    /// A connection of its own, for a blocking command (`XREAD BLOCK`) that must not hold up the
    /// shared one; its response timeout is the configured timeout plus `block`.
    pub async fn dedicated(&self, block: Duration) -> RedisResult<Conn> {
        match self {
            Redis::Single(_, client, timeout) => {
                let config = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(*timeout))
                    .set_response_timeout(Some(*timeout + block));
                let conn = client.get_multiplexed_async_connection_with_config(&config).await?;
                Ok(Conn::Dedicated(conn))
            }
            Redis::Cluster(client, _) => {
                Ok(Conn::Cluster(client.get_async_connection().await?, SharedCluster::default()))
            }
        }
    }

    /// A connection (cheap: a handle on a shared multiplexed connection).
    pub async fn conn(&self) -> RedisResult<Conn> {
        match self {
            Redis::Single(m, ..) => Ok(Conn::Single(m.clone())),
            Redis::Cluster(client, shared) => {
                let mut current = shared.0.lock().await;
                if current.is_none() {
                    *current = Some(client.get_async_connection().await?);
                }
                match current.as_ref() {
                    Some(c) => Ok(Conn::Cluster(c.clone(), shared.clone())),
                    None => Err(redis::RedisError::from((redis::ErrorKind::Client, "no cluster connection"))),
                }
            }
        }
    }
}

/// The reachable masters in `CLUSTER NODES` output: `(host, port)`.
fn masters(nodes: &str) -> Vec<(String, u16)> {
    nodes
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let flags = fields.get(2)?;
            if !flags.split(',').any(|f| f == "master") || flags.contains("fail") {
                return None;
            }
            let address = fields.get(1)?.split('@').next()?;
            let (host, port) = address.rsplit_once(':')?;
            Some((host.to_string(), port.parse().ok()?))
        })
        .collect()
}

/// The cluster connection every request shares. A command that fails for want of a node (I/O,
/// timeout, cluster down) drops it, and the next request builds a new one from the seed nodes
/// with a fresh slot map: after a failover the companion reaches the promoted replica.
#[derive(Clone, Default)]
pub struct SharedCluster(Arc<tokio::sync::Mutex<Option<ClusterConnection>>>);

impl SharedCluster {
    async fn drop_if_broken<T>(&self, result: RedisResult<T>) -> RedisResult<T> {
        if let Err(e) = &result {
            if e.is_io_error()
                || e.is_timeout()
                || e.is_connection_dropped()
                || e.is_connection_refusal()
                || e.is_cluster_error()
            {
                *self.0.lock().await = None;
            }
        }
        result
    }
}

/// One usable connection, single or cluster.
pub enum Conn {
    /// One node, through the shared connection manager.
    Single(ConnectionManager),
    /// One node, a connection of its own (for blocking commands).
    Dedicated(redis::aio::MultiplexedConnection),
    /// A cluster (routes by key slot, follows redirections).
    Cluster(ClusterConnection, SharedCluster),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Dedicated(c) => c.req_packed_command(cmd),
            Conn::Cluster(c, shared) => Box::pin(async move {
                let result = c.req_packed_command(cmd).await;
                shared.drop_if_broken(result).await
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Dedicated(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c, shared) => Box::pin(async move {
                let result = c.req_packed_commands(pipeline, offset, count).await;
                shared.drop_if_broken(result).await
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Dedicated(c) => c.get_db(),
            Conn::Cluster(c, _) => c.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_single_and_cluster_urls() {
        assert_eq!(RedisAddress::parse("redis://h:1/2"), Ok(RedisAddress::Single("redis://h:1/2".into())));
        assert_eq!(
            RedisAddress::parse("redis+cluster://a:1,b:2"),
            Ok(RedisAddress::Cluster(vec!["redis://a:1".into(), "redis://b:2".into()]))
        );
        assert_eq!(
            RedisAddress::parse("redis://a:1, redis://b:2"),
            Ok(RedisAddress::Cluster(vec!["redis://a:1".into(), "redis://b:2".into()]))
        );
        assert!(RedisAddress::parse("http://a").is_err());
        assert!(RedisAddress::parse("redis+cluster://a:1,").is_err());
        assert!(!RedisAddress::parse("http://u:secret@a").unwrap_err().contains("secret"));
    }
}
