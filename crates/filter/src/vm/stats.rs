//! A VM's counters and gauges as proxy stats: the counts of a request are gathered in the VM and
//! handed to the proxy on each tick, so a request costs no metric host call.

use super::Proxy;
use crate::metric::Metric;
use std::cell::Cell;

/// The gauges, in the order of [`Stats::record_gauges`]'s values.
const GAUGES: [&str; 2] = ["multitokens.cache_entries", "multitokens.vm_memory_bytes"];

/// Metric ids, defined once per plugin configuration, and the counts not yet handed over.
#[derive(Default)]
pub(super) struct Stats {
    ids: [Option<u32>; Metric::ALL.len()],
    pending: [Cell<i64>; Metric::ALL.len()],
    gauges: [Option<u32>; GAUGES.len()],
    reported: [Cell<i64>; GAUGES.len()],
}

impl Stats {
    /// Defines every counter of [`Metric`] and the gauges.
    pub(super) fn define(proxy: &mut dyn Proxy) -> Self {
        let mut stats = Stats::default();
        for metric in Metric::ALL {
            stats.ids[metric.index()] = proxy.define_metric(false, metric.name());
        }
        for (id, name) in stats.gauges.iter_mut().zip(GAUGES) {
            *id = proxy.define_metric(true, name);
        }
        stats
    }

    /// Counts `n` events (handed over by [`Stats::flush`]).
    pub(super) fn add(&self, metric: Metric, n: i64) {
        let cell = &self.pending[metric.index()];
        cell.set(cell.get() + n);
    }

    /// Hands the gathered counts to the proxy.
    pub(super) fn flush(&self, proxy: &mut dyn Proxy) {
        for (id, cell) in self.ids.iter().zip(&self.pending) {
            let n = cell.replace(0);
            if let (Some(id), true) = (id, n != 0) {
                proxy.increment_metric(*id, n);
            }
        }
    }

    /// Updates the gauges: verdicts cached and the VM's memory. Envoy runs one VM per worker (and
    /// one on the main thread) under the same stat names, so each VM adds its change since its
    /// last report: the gauges are the totals over all VMs.
    pub(super) fn record_gauges(&self, proxy: &mut dyn Proxy, cache_entries: usize) {
        let values = [cache_entries as i64, proxy.memory_bytes()];
        for ((id, reported), value) in self.gauges.iter().zip(&self.reported).zip(values) {
            let delta = value - reported.get();
            if let (Some(id), true) = (id, delta != 0) {
                if proxy.increment_metric(*id, delta) {
                    reported.set(value);
                }
            }
        }
    }
}
