//! How the shell reaches the token store, chosen once at configure time: HTTP callouts to the
//! companion, or (the Redis-callout build) Envoy's Redis callouts. The rest of the shell only sees
//! [`StoreTransport`].

use super::{abi, exports, LookupVia, Purpose};
use multitokens_core::activity::ActivityReport;
use multitokens_filter::companion_transport::CompanionCall;
use multitokens_filter::config::{Compiled, Transport};
use multitokens_filter::lookup::LookupRequest;

/// Lookups, feed polls, sliding refreshes and activity reports.
pub(super) trait StoreTransport {
    /// Starts a request's lookup (its answer goes to that request's context).
    fn lookup(
        &self,
        compiled: &Compiled,
        request: &LookupRequest,
        context_id: u32,
        root_id: u32,
    ) -> Result<u32, String>;
    /// Starts a revocation feed poll after a cursor, as edge `edge` (its answer goes to the root).
    fn poll_feed(&self, compiled: &Compiled, cursor: Option<&str>, edge: &str, root_id: u32) -> Result<u32, String>;
    /// Sends a sliding refresh (its answer is not needed).
    fn refresh(&self, compiled: &Compiled, request: &LookupRequest, root_id: u32) -> Result<u32, String>;
    /// Sends device activity reports (their answer is not needed).
    fn report_activity(&self, compiled: &Compiled, reports: &[ActivityReport], root_id: u32) -> Result<(), String>;
}

/// The stock build's transport: calls to the companion's internal endpoints.
pub(super) struct CompanionCallouts;

impl CompanionCallouts {
    /// Sends a call through the companion's Envoy cluster on behalf of a context.
    fn get(get: Result<CompanionCall, String>, purpose: Purpose) -> Result<u32, String> {
        let get = get?;
        let token = abi::http_call(get.cluster, &get.headers(), &get.body, get.timeout_ms)
            .map_err(|s| format!("dispatch to cluster {:?} failed: {s}", get.cluster))?;
        exports::expect_answer(token, purpose);
        Ok(token)
    }
}

impl StoreTransport for CompanionCallouts {
    fn lookup(&self, compiled: &Compiled, request: &LookupRequest, context_id: u32, _: u32) -> Result<u32, String> {
        let purpose = Purpose::Lookup { context_id, via: LookupVia::Companion };
        Self::get(CompanionCall::lookup(compiled, request), purpose)
    }

    fn poll_feed(&self, compiled: &Compiled, cursor: Option<&str>, edge: &str, root_id: u32) -> Result<u32, String> {
        Self::get(CompanionCall::feed(compiled, cursor, edge), Purpose::Feed { root_id })
    }

    fn refresh(&self, compiled: &Compiled, request: &LookupRequest, root_id: u32) -> Result<u32, String> {
        Self::get(CompanionCall::lookup(compiled, request), Purpose::Unanswered { root_id })
    }

    fn report_activity(&self, compiled: &Compiled, reports: &[ActivityReport], root_id: u32) -> Result<(), String> {
        Self::get(CompanionCall::activity(compiled, reports), Purpose::Unanswered { root_id }).map(|_| ())
    }
}

static COMPANION: CompanionCallouts = CompanionCallouts;
/// Starts the configured transport; an error stops the plugin from loading.
pub(super) fn start(compiled: &Compiled) -> Result<&'static dyn StoreTransport, String> {
    match &compiled.transport {
        Transport::Companion(_) => Ok(&COMPANION),
        #[cfg(feature = "redis-callout")]
        Transport::Redis(target) => {
            super::redis::init(target)?;
            Ok(&super::redis::REDIS)
        }
        #[cfg(not(feature = "redis-callout"))]
        Transport::Redis(_) => {
            Err("invalid multitokens configuration: redis: this is the stock build, which has no Redis \
            callouts (upstream Envoy cannot load them); use `companion`, or deploy multitokens_filter_redis.wasm on an \
            Envoy with the Redis-callout ABI (e.g. Higress)"
                .into())
        }
    }
}
