//! What every shell runs on its timer and on a feed poll's answer, written once: the shell only
//! says how it reaches the store and how it counts ([`Edge`]), and wakes the requests it is told to.

use super::config::Compiled;
use super::lookup::{CalloutProblem, FeedPage, LookupRequest};
use super::metric::Metric;
use super::worker::Worker;
use multitokens_core::activity::{ActivityReport, MAX_BATCH};

/// The shell's side of the timer and the feed: its transport, its counters, its log.
pub trait Edge {
    /// Starts a revocation feed poll after `cursor` as edge `edge`; the call's id.
    fn poll_feed(&mut self, compiled: &Compiled, cursor: Option<&str>, edge: &str) -> Result<u32, String>;
    /// Sends a sliding refresh (its answer is not needed).
    fn refresh(&mut self, compiled: &Compiled, request: &LookupRequest) -> Result<(), String>;
    /// Sends device activity reports, at most [`MAX_BATCH`] (their answer is not needed: a lost
    /// report loses activity, never a request).
    fn report_activity(&mut self, compiled: &Compiled, reports: &[ActivityReport]) -> Result<(), String>;
    /// Counts `n` events.
    fn count(&mut self, metric: Metric, n: u64);
    /// Logs a warning (never a token).
    fn warn(&self, message: &str);
}

/// The timer ticked: polls the feed if due, sends the sliding refreshes and activity reports due
/// (in batches), counts the tick.
/// Returns the requests that followed a lookup never answered: the shell makes them look up again
/// (with the worker no longer borrowed).
pub fn on_tick(worker: &mut Worker, edge: &mut dyn Edge, now: u64) -> Vec<u32> {
    let work = worker.on_tick(now);
    edge.count(Metric::Ticks, 1);
    if work.poll_feed {
        start_feed_poll(worker, edge, now);
    }
    let compiled = std::sync::Arc::clone(worker.compiled());
    for request in work.refreshes {
        if let Err(e) = edge.refresh(&compiled, &request) {
            edge.warn(&format!("multitokens: sliding refresh: {e}"));
        }
    }
    for batch in work.activity.chunks(MAX_BATCH) {
        match edge.report_activity(&compiled, batch) {
            Ok(()) => edge.count(Metric::ActivityReported, batch.len() as u64),
            Err(e) => edge.warn(&format!("multitokens: device activity report: {e}")),
        }
    }
    work.look_up_again
}

/// A feed poll answered (an answer to another poll than the one under way is dropped): the page
/// applied and counted, a failure counted and logged, and the next poll started at once when the
/// worker says so.
pub fn on_feed_answer(
    worker: &mut Worker,
    edge: &mut dyn Edge,
    call: u32,
    page: Result<FeedPage, CalloutProblem>,
    now: u64,
) {
    let Some(answered) = worker.on_feed_answer(call, page, now) else { return };
    if answered.applied > 0 {
        edge.count(Metric::RevocationsApplied, answered.applied as u64);
    }
    if let Some(problem) = answered.problem {
        let metric = if problem == CalloutProblem::NoResponse { Metric::CalloutFailed } else { Metric::CalloutError };
        edge.count(metric, 1);
        edge.warn(&format!("multitokens: revocation feed poll failed: {problem:?}"));
    }
    if answered.poll_again {
        // the first page, a full page, a revocation (the next poll acknowledges it) or a long poll
        // that ran its course: poll again now, not on the next tick
        start_feed_poll(worker, edge, now);
    }
}

/// Starts a feed poll (the caller has checked that one is due).
fn start_feed_poll(worker: &mut Worker, edge: &mut dyn Edge, now: u64) {
    let compiled = std::sync::Arc::clone(worker.compiled());
    match edge.poll_feed(&compiled, worker.feed_cursor(), worker.edge_id()) {
        Ok(call) => worker.feed_poll_started(call, now),
        Err(e) => edge.warn(&format!("multitokens: revocation feed poll: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records what the orchestration asked of the shell.
    #[derive(Default)]
    struct Recorder {
        polls: Vec<Option<String>>,
        counts: Vec<(Metric, u64)>,
        fail_polls: bool,
        batches: Vec<usize>,
    }

    impl Edge for Recorder {
        fn poll_feed(&mut self, _: &Compiled, cursor: Option<&str>, _: &str) -> Result<u32, String> {
            if self.fail_polls {
                return Err("no cluster".into());
            }
            self.polls.push(cursor.map(str::to_string));
            Ok(self.polls.len() as u32)
        }
        fn refresh(&mut self, _: &Compiled, _: &LookupRequest) -> Result<(), String> {
            Ok(())
        }
        fn report_activity(&mut self, _: &Compiled, reports: &[ActivityReport]) -> Result<(), String> {
            self.batches.push(reports.len());
            Ok(())
        }
        fn count(&mut self, metric: Metric, n: u64) {
            self.counts.push((metric, n));
        }
        fn warn(&self, _: &str) {}
    }

    fn worker() -> Worker {
        let json = r#"{"companion": {"cluster": "c", "api_key": "k", "timeout_ms": 500}}"#;
        Worker::new(Compiled::parse(json.as_bytes()).unwrap())
    }

    #[test]
    fn a_tick_polls_the_feed_and_the_first_page_polls_again_at_once() {
        let (mut w, mut edge) = (worker(), Recorder::default());
        assert!(on_tick(&mut w, &mut edge, 10_000).is_empty());
        assert_eq!(edge.polls, vec![None], "the first tick polls");
        assert_eq!(edge.counts, vec![(Metric::Ticks, 1)]);
        let page = FeedPage { cursor: "5-0".into(), digests: vec![], reset: false, more: false };
        on_feed_answer(&mut w, &mut edge, 1, Ok(page), 10_010);
        assert_eq!(edge.polls, vec![None, Some("5-0".into())], "the first page is followed at once");
        on_tick(&mut w, &mut edge, 11_000);
        assert_eq!(edge.polls.len(), 2, "no second poll while one is under way");
    }

    #[test]
    fn a_failed_poll_is_counted_and_the_next_tick_tries_again() {
        let (mut w, mut edge) = (worker(), Recorder::default());
        on_tick(&mut w, &mut edge, 10_000);
        on_feed_answer(&mut w, &mut edge, 1, Err(CalloutProblem::NoResponse), 10_500);
        assert!(edge.counts.contains(&(Metric::CalloutFailed, 1)));
        on_feed_answer(&mut w, &mut edge, 1, Err(CalloutProblem::NoResponse), 10_600);
        assert_eq!(edge.counts.iter().filter(|(m, _)| *m == Metric::CalloutFailed).count(), 1, "stale: dropped");
        on_tick(&mut w, &mut edge, 11_000);
        assert_eq!(edge.polls.len(), 2);
        edge.fail_polls = true;
        on_tick(&mut w, &mut edge, 40_000);
        assert_eq!(edge.polls.len(), 2, "the overdue poll's replacement could not start");
        edge.fail_polls = false;
        on_tick(&mut w, &mut edge, 41_000);
        assert_eq!(edge.polls.len(), 3, "the next tick starts it");
    }

    #[test]
    fn activity_goes_out_on_the_tick_in_batches() {
        let (mut w, mut edge) = (worker(), Recorder::default());
        let log = w.activity.as_mut().unwrap();
        for n in 0..(MAX_BATCH + 5) {
            let mut digest = [0u8; 32];
            digest[0] = n as u8;
            let stored = crate::cache::Stored {
                tag: multitokens_core::token::RoutingTag([0; 4]),
                digest: multitokens_core::digest::TokenDigest(digest),
            };
            log.note(stored, 10, None, None);
        }
        on_tick(&mut w, &mut edge, 10_000);
        assert_eq!(edge.batches, vec![MAX_BATCH, 5]);
        assert!(edge.counts.contains(&(Metric::ActivityReported, MAX_BATCH as u64)));
        on_tick(&mut w, &mut edge, 11_000);
        assert_eq!(edge.batches.len(), 2, "each report is sent once");
    }
}
