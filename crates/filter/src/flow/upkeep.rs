//! Bookkeeping around a decision: device activity, sliding refreshes, refused tokens remembered,
//! lookups charged to a client.

use super::*;

/// Notes a token's use for the device activity report, when reports are on: the client address
/// and the user agent are read only when a report is due.
pub(super) fn note_activity<'a>(
    host: &dyn Host,
    worker: &mut Worker,
    stored: Stored,
    user_agent: impl FnOnce() -> Option<&'a [u8]>,
    now: u64,
) {
    let Some(log) = worker.activity.as_mut() else { return };
    if log.due(&stored.digest, now) {
        log.note(stored, now, host.client_address().as_deref(), user_agent());
    }
}

/// Queues a sliding refresh of a cached token if one is due.
pub(super) fn queue_refresh(worker: &mut Worker, token: &str, now: u64) {
    let Some(refresh) = worker.compiled.config.refresh_on_use.as_ref() else { return };
    let (min_interval_ms, ttl) = (refresh.min_interval_ms, refresh.ttl);
    if worker.refresh_queue.len() >= MAX_REFRESH_QUEUE {
        return;
    }
    let Some(stored) = worker.cache.refresh_due(token, now, min_interval_ms) else { return };
    let request = LookupRequest {
        tag: stored.tag,
        digest: stored.digest,
        previous: Vec::new(),
        key_id: None,
        refresh_ttl: Some(ttl),
    };
    worker.refresh_queue.push(request);
}

/// Remembers a token the store refused, so that re-sending it costs no lookup for
/// `negative_ttl_ms`.
pub(super) fn remember_refused(worker: &mut Worker, token: &str, now: u64) {
    let ttl = worker.compiled.config.cache.negative_ttl_ms;
    worker.cache.insert_invalid(token, now + ttl, now);
}

/// Charges the lookup of a token the edge cannot check by its MAC to the client's address: 429 if
/// the address has spent its budget (`throttle`), else the address charged (`None` when the
/// throttle is off or the address unknown).
pub(super) fn charge_lookup(host: &mut dyn Host, worker: &mut Worker, now: u64) -> Result<Option<Vec<u8>>, Step> {
    let Some(throttle) = worker.throttle.as_mut() else { return Ok(None) };
    let Some(address) = host.client_address() else { return Ok(None) };
    let client = client_key(&address);
    if let Some(seconds) = throttle.retry_after(client, now) {
        return Err(deny(host, &worker.compiled, Denial::Throttled(seconds), Metric::DeniedThrottled, &[]));
    }
    throttle.record_failure(client, now);
    Ok(Some(client.to_vec()))
}
