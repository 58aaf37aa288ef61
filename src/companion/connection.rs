//! Redis connections: one node (`redis://host:port/db`) or a Redis Cluster, named by a
//! comma-separated list of seed node URLs or `redis+cluster://host:port[,host:port…]`.

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OnceCell;

/// Where Redis is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RedisTarget {
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

impl RedisTarget {
    /// Parses the `redis_url` setting.
    pub fn parse(url: &str) -> Result<Self, String> {
        let url = url.trim();
        if let Some(rest) = url.strip_prefix("redis+cluster://") {
            let nodes: Vec<String> = rest.split(',').map(|n| format!("redis://{}", n.trim())).collect();
            if nodes.iter().any(|n| n == "redis://") {
                return Err("redis+cluster:// needs host:port entries separated by commas".into());
            }
            return Ok(RedisTarget::Cluster(nodes));
        }
        if url.contains(',') {
            let nodes: Vec<String> = url.split(',').map(|n| n.trim().to_string()).collect();
            for n in &nodes {
                check_scheme(n)?;
            }
            return Ok(RedisTarget::Cluster(nodes));
        }
        check_scheme(url)?;
        Ok(RedisTarget::Single(url.to_string()))
    }
}

/// A lazily connected, cheaply cloned handle to Redis; reconnects by itself.
#[derive(Clone)]
pub enum Redis {
    /// One node, behind a reconnecting multiplexed connection.
    Single(ConnectionManager),
    /// A cluster; connected on first use (so `serve` can start while Redis is down).
    Cluster(Arc<ClusterClient>, Arc<OnceCell<ClusterConnection>>),
}

impl Redis {
    /// Builds the handle without connecting; errors on a malformed URL or outside a tokio runtime.
    pub fn open(target: &RedisTarget, timeout: Duration) -> RedisResult<Redis> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(redis::RedisError::from((redis::ErrorKind::Client, "Redis::open needs a running tokio runtime")));
        }
        match target {
            RedisTarget::Single(url) => {
                let client = redis::Client::open(url.as_str())?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(timeout))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_millis(200));
                Ok(Redis::Single(ConnectionManager::new_lazy_with_config(client, config)?))
            }
            RedisTarget::Cluster(nodes) => {
                let client =
                    ClusterClient::builder(nodes.clone()).connection_timeout(timeout).response_timeout(timeout).retries(2).build()?;
                Ok(Redis::Cluster(Arc::new(client), Arc::new(OnceCell::new())))
            }
        }
    }

    /// A connection to run commands on.
    pub async fn conn(&self) -> RedisResult<Conn> {
        match self {
            Redis::Single(m) => Ok(Conn::Single(m.clone())),
            Redis::Cluster(client, cell) => {
                let c = cell.get_or_try_init(|| client.get_async_connection()).await?;
                Ok(Conn::Cluster(c.clone()))
            }
        }
    }
}

/// One usable connection, single or cluster.
pub enum Conn {
    /// One node.
    Single(ConnectionManager),
    /// A cluster (routes by key slot, follows redirections).
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(&'a mut self, pipeline: &'a Pipeline, offset: usize, count: usize) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_single_and_cluster_urls() {
        assert_eq!(RedisTarget::parse("redis://h:1/2"), Ok(RedisTarget::Single("redis://h:1/2".into())));
        assert_eq!(
            RedisTarget::parse("redis+cluster://a:1,b:2"),
            Ok(RedisTarget::Cluster(vec!["redis://a:1".into(), "redis://b:2".into()]))
        );
        assert_eq!(
            RedisTarget::parse("redis://a:1, redis://b:2"),
            Ok(RedisTarget::Cluster(vec!["redis://a:1".into(), "redis://b:2".into()]))
        );
        assert!(RedisTarget::parse("http://a").is_err());
        assert!(RedisTarget::parse("redis+cluster://a:1,").is_err());
        assert!(!RedisTarget::parse("http://u:secret@a").unwrap_err().contains("secret"));
    }
}
