//! The filter's counters and gauges as Envoy stats.

use super::abi::{self, MetricKind};
use multitokens_filter::metric::Metric;

/// Metric ids, defined once per VM: the counters of [`Metric`] and two gauges. Counts are
/// gathered in the VM and handed to Envoy on each tick, so a request costs no metric host call.
#[derive(Default)]
pub(crate) struct Metrics {
    ids: [Option<u32>; Metric::ALL.len()],
    pending: [std::cell::Cell<i64>; Metric::ALL.len()],
    cache_entries: Option<u32>,
    vm_memory_bytes: Option<u32>,
    reported: [std::cell::Cell<i64>; 2],
}

impl Metrics {
    pub(crate) fn define() -> Self {
        let mut m = Metrics::default();
        for metric in Metric::ALL {
            m.ids[metric.index()] = abi::define_metric(MetricKind::Counter, metric.name());
        }
        m.cache_entries = abi::define_metric(MetricKind::Gauge, "multitokens.cache_entries");
        m.vm_memory_bytes = abi::define_metric(MetricKind::Gauge, "multitokens.vm_memory_bytes");
        m
    }

    /// Updates the gauges: verdicts cached and the VM's linear memory. Envoy runs one VM per
    /// worker (and one on the main thread) under the same stat names, so each VM adds its change
    /// since its last report: the gauges are the totals over all VMs.
    pub(crate) fn record_gauges(&self, cache_entries: usize) {
        #[cfg(target_arch = "wasm32")]
        let memory = (core::arch::wasm32::memory_size::<0>() as i64) * 65_536;
        #[cfg(not(target_arch = "wasm32"))]
        let memory = 0;
        for (i, (id, value)) in
            [(self.cache_entries, cache_entries as i64), (self.vm_memory_bytes, memory)].into_iter().enumerate()
        {
            let delta = value - self.reported[i].get();
            if let (Some(id), true) = (id, delta != 0) {
                if abi::increment_metric(id, delta).is_ok() {
                    self.reported[i].set(value);
                }
            }
        }
    }

    pub(crate) fn add(&self, metric: Metric, n: i64) {
        let cell = &self.pending[metric.index()];
        cell.set(cell.get() + n);
    }

    /// Hands the gathered counts to Envoy.
    pub(crate) fn flush(&self) {
        for (id, cell) in self.ids.iter().zip(self.pending.iter()) {
            let n = cell.replace(0);
            if let (Some(id), true) = (id, n != 0) {
                let _ = abi::increment_metric(*id, n);
            }
        }
    }
}
