//! The process's lookups to the companion: at most `max_lookups_in_flight` callouts under way;
//! the lookups that come meanwhile wait here and go together, as one `POST /v1/internal/lookups`
//! per [`MAX_LOOKUP_BATCH`], as soon as a callout returns. On a load of misses one callout then
//! carries many lookups: Envoy and the companion pay for one HTTP exchange instead of each.
//! The oldest waiting request is asked to carry them (it sends the batch from its own worker,
//! where the answer comes back and its neighbours are woken without a hop to another thread);
//! Envoy's main thread sends them when no request can (the carrier went away, or on the timer).
//! The bookkeeping only: the process and the requests send and answer.

use multitokens_core::contract::MAX_LOOKUP_BATCH;
use multitokens_filter::lookup::LookupRequest;

/// Call tokens of queued lookups (a flow waits for one): above any callout id Envoy gives a
/// request, which counts from 1 per request.
const QUEUED_TOKENS: u32 = 0x8000_0000;

/// A request's lookup waiting to go in a batch.
#[derive(Debug)]
pub struct Queued {
    /// The request (woken with the answer).
    pub context_id: u32,
    /// Its lookup.
    pub request: LookupRequest,
}

/// What to do with a request's lookup.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    /// Send it now, on its own (it counts as under way until [`Lookups::done`]).
    Send,
    /// It waits for a batch, sent when a callout under way is [`Lookups::done`] (or by the
    /// flush that one already asked for); the flow waits for this call token.
    Queued(u32),
}

/// The lookups under way and those waiting.
#[derive(Debug)]
pub struct Lookups {
    max_in_flight: usize,
    in_flight: usize,
    queue: Vec<Queued>,
    flush_asked: bool,
    /// The request asked to send the waiting lookups (while a flush is asked of a request).
    carrier: Option<u32>,
    next_token: u32,
}

impl Lookups {
    /// At most `max_in_flight` callouts under way (0: every lookup goes on its own, at once).
    pub fn new(max_in_flight: usize) -> Lookups {
        Lookups { max_in_flight, in_flight: 0, queue: Vec::new(), flush_asked: false, carrier: None, next_token: 0 }
    }

    /// A request's lookup: sent at once while fewer than the limit are under way and none
    /// waits before it, else queued.
    pub fn admit(&mut self, context_id: u32, request: &LookupRequest) -> Admit {
        if self.max_in_flight == 0 || (self.queue.is_empty() && self.in_flight < self.max_in_flight) {
            self.in_flight += 1;
            return Admit::Send;
        }
        self.queue.push(Queued { context_id, request: request.clone() });
        self.next_token = (self.next_token + 1) % QUEUED_TOKENS;
        Admit::Queued(QUEUED_TOKENS | self.next_token)
    }

    /// A lookup callout (single or batch) is over, answered or not: the request to ask now to
    /// send the waiting ones, if one must be asked.
    pub fn done(&mut self) -> Option<u32> {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.ask_flush()
    }

    /// A batch whose carrier went away before it was answered (Envoy cancelled its callout): its
    /// other lookups wait again, first in line, and the request to ask to send them, if one must be.
    pub fn give_back(&mut self, batch: Vec<Queued>) -> Option<u32> {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.queue.splice(0..0, batch);
        self.ask_flush()
    }

    /// The request to ask for a flush: something waits, nothing under way will send it, and none
    /// was asked for yet; the oldest waiting request carries it. (A lookup is queued only while one
    /// is under way or a flush is asked for, so a flush is asked only here.)
    fn ask_flush(&mut self) -> Option<u32> {
        let nobody_will = self.in_flight < self.max_in_flight.max(1);
        if self.flush_asked || !nobody_will {
            return None;
        }
        let carrier = self.queue.first()?.context_id;
        self.flush_asked = true;
        self.carrier = Some(carrier);
        Some(carrier)
    }

    /// Whether a flush should be asked for on the timer: lookups wait (a safety net: a callout
    /// whose end was never reported must not hold them).
    pub fn waiting(&self) -> bool {
        !self.queue.is_empty()
    }

    /// The batches to send now, oldest lookups first, each counted as under way.
    pub fn take_batches(&mut self) -> Vec<Vec<Queued>> {
        self.flush_asked = false;
        self.carrier = None;
        let mut batches = Vec::new();
        while !self.queue.is_empty() {
            let n = self.queue.len().min(MAX_LOOKUP_BATCH);
            batches.push(self.queue.drain(..n).collect());
            self.in_flight += 1;
        }
        batches
    }

    /// A request that went away before its lookup was sent; if it was asked to carry the waiting
    /// lookups, the request to ask in its place (the flush is asked again).
    pub fn forget(&mut self, context_id: u32) -> Option<u32> {
        self.queue.retain(|q| q.context_id != context_id);
        if self.carrier != Some(context_id) {
            return None;
        }
        self.carrier = None;
        self.flush_asked = false;
        self.ask_flush()
    }

    /// Callouts under way.
    #[cfg(test)]
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use multitokens_core::digest::TokenDigest;
    use multitokens_core::token::RoutingTag;

    fn request(n: u8) -> LookupRequest {
        LookupRequest {
            tag: RoutingTag([n; 4]),
            digest: TokenDigest([n; 32]),
            previous: vec![],
            key_id: None,
            refresh_ttl: None,
        }
    }

    #[test]
    fn beyond_the_limit_lookups_wait_and_go_together_when_one_returns() {
        let mut lookups = Lookups::new(2);
        assert_eq!(lookups.admit(1, &request(1)), Admit::Send);
        assert_eq!(lookups.admit(2, &request(2)), Admit::Send);
        // two under way: the rest wait, and the callouts under way will flush them
        let Admit::Queued(a) = lookups.admit(3, &request(3)) else { panic!() };
        let Admit::Queued(b) = lookups.admit(4, &request(4)) else { panic!() };
        assert!(a >= QUEUED_TOKENS && b >= QUEUED_TOKENS && a != b);
        assert_eq!(lookups.done(), Some(3), "one returned: the oldest waiting request sends them");
        assert_eq!(lookups.done(), None, "asked once");
        // while a flush is pending, a new lookup waits behind the others
        assert!(matches!(lookups.admit(5, &request(5)), Admit::Queued(_)));
        assert_eq!(lookups.forget(4), None, "not the carrier");
        let batches = lookups.take_batches();
        let members: Vec<Vec<u32>> = batches.iter().map(|b| b.iter().map(|q| q.context_id).collect()).collect();
        assert_eq!(members, [vec![3, 5]]);
        assert_eq!(lookups.in_flight(), 1);
        assert!(!lookups.waiting());
        assert_eq!(lookups.admit(6, &request(6)), Admit::Send, "room again");
    }

    #[test]
    fn a_long_queue_goes_in_batches_of_the_contract_size_and_zero_means_no_batching() {
        let mut lookups = Lookups::new(1);
        assert_eq!(lookups.admit(0, &request(0)), Admit::Send);
        for c in 1..=(MAX_LOOKUP_BATCH as u32 * 2 + 1) {
            lookups.admit(c, &request(1));
        }
        assert_eq!(lookups.done(), Some(1));
        let sizes: Vec<usize> = lookups.take_batches().iter().map(Vec::len).collect();
        assert_eq!(sizes, [MAX_LOOKUP_BATCH, MAX_LOOKUP_BATCH, 1]);
        assert_eq!(lookups.in_flight(), 3);
        let mut unbatched = Lookups::new(0);
        assert!((0..100).all(|c| unbatched.admit(c, &request(1)) == Admit::Send));
    }

    #[test]
    fn nothing_under_way_means_the_lookup_that_waits_asks_for_its_own_flush() {
        let mut lookups = Lookups::new(1);
        assert_eq!(lookups.admit(1, &request(1)), Admit::Send);
        assert!(matches!(lookups.admit(2, &request(2)), Admit::Queued(_)));
        assert_eq!(lookups.done(), Some(2));
        // the flush was asked but has not run: a lookup now still waits behind the queue
        assert!(matches!(lookups.admit(3, &request(3)), Admit::Queued(_)));
        assert_eq!(lookups.take_batches().len(), 1);
        // the batch returned with nothing waiting: no flush; then a lookup goes on its own again
        assert_eq!(lookups.done(), None);
        assert_eq!(lookups.admit(4, &request(4)), Admit::Send);
    }

    #[test]
    fn a_carrier_that_goes_away_hands_the_flush_on_and_a_cancelled_batch_waits_again_first() {
        let mut lookups = Lookups::new(1);
        assert_eq!(lookups.admit(1, &request(1)), Admit::Send);
        for c in 2..=4 {
            assert!(matches!(lookups.admit(c, &request(c as u8)), Admit::Queued(_)));
        }
        assert_eq!(lookups.done(), Some(2));
        // the carrier went away before it sent: the next oldest is asked, once
        assert_eq!(lookups.forget(2), Some(3));
        assert_eq!(lookups.forget(4), None);
        let batch = lookups.take_batches().remove(0);
        assert_eq!(batch.iter().map(|q| q.context_id).collect::<Vec<_>>(), [3]);
        // a lookup that came meanwhile waits; the carrier is gone with the batch under way
        assert!(matches!(lookups.admit(5, &request(5)), Admit::Queued(_)));
        let others: Vec<Queued> = batch.into_iter().filter(|q| q.context_id != 3).collect();
        assert_eq!(lookups.give_back(others), Some(5), "nothing came back but the queue is asked for");
        assert_eq!(lookups.in_flight(), 0);
        // a batch given back goes first
        assert_eq!(lookups.take_batches().remove(0).iter().map(|q| q.context_id).collect::<Vec<_>>(), [5]);
        assert!(matches!(lookups.admit(6, &request(6)), Admit::Queued(_)));
        let back = vec![Queued { context_id: 7, request: request(7) }];
        assert_eq!(lookups.give_back(back), Some(7));
        assert_eq!(lookups.take_batches().remove(0).iter().map(|q| q.context_id).collect::<Vec<_>>(), [7, 6]);
    }
}
