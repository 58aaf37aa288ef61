//! Concurrent misses of one token share one lookup. A page load after a login or a cache expiry
//! sends many requests with the same token at once; the first one (the leader) asks the store and
//! the others (followers) wait for its answer instead of each making a callout. Each follower
//! checks the shared answer against the revocations applied since the lookup was sent, as the
//! leader does. A lookup whose answer is overdue (the host should always answer, if only with a
//! timeout) takes no more followers, and the tick sends its followers to look up again.

use std::collections::HashMap;

/// Most followers one lookup carries; more requests make their own lookup.
pub const MAX_FOLLOWERS: usize = 1024;
/// Most lookups shared at once per VM; past it, requests make their own lookup.
pub const MAX_SHARED: usize = 10_000;

/// A lookup others may follow.
#[derive(Debug)]
struct Shared {
    /// The leader's context.
    leader: u32,
    /// The lookup's call id.
    call: u32,
    /// Feed pages applied when it was sent.
    epoch: u64,
    /// When it was sent (ms).
    sent_at: u64,
    /// Contexts waiting for its answer.
    followers: Vec<u32>,
}

/// The lookups under way that a request with the same token can follow.
#[derive(Debug, Default)]
pub struct InFlight {
    by_token: HashMap<Box<str>, Shared>,
}

/// A lookup joined: its call and the feed epoch it was sent at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Joined {
    /// The call id of the leader's lookup.
    pub call: u32,
    /// Feed pages applied when it was sent.
    pub epoch: u64,
}

impl InFlight {
    /// Joins the lookup under way for `token`, if there is one with room that was sent less than
    /// `max_wait_ms` ago.
    pub fn follow(&mut self, token: &str, context: u32, now: u64, max_wait_ms: u64) -> Option<Joined> {
        let shared = self.by_token.get_mut(token).filter(|s| {
            s.followers.len() < MAX_FOLLOWERS && s.leader != context && now.saturating_sub(s.sent_at) < max_wait_ms
        })?;
        shared.followers.push(context);
        Some(Joined { call: shared.call, epoch: shared.epoch })
    }

    /// Offers a lookup just sent for others to follow. It replaces an overdue lookup of the same
    /// token, whose followers then follow it: they are answered by it (each still checks the
    /// revocations applied since its own, older, epoch), never left waiting for an answer that no
    /// longer reaches them.
    pub fn lead(&mut self, token: &str, context: u32, call: u32, epoch: u64, now: u64) {
        if self.by_token.len() < MAX_SHARED || self.by_token.contains_key(token) {
            let followers = self.by_token.remove(token).map(|s| s.followers).unwrap_or_default();
            self.by_token.insert(token.into(), Shared { leader: context, call, epoch, sent_at: now, followers });
        }
    }

    /// Drops the lookups sent `max_wait_ms` or more ago and still unanswered; returns their
    /// followers, which must look up again.
    pub fn expire(&mut self, now: u64, max_wait_ms: u64) -> Vec<u32> {
        let mut waiting = Vec::new();
        self.by_token.retain(|_, s| {
            let overdue = now.saturating_sub(s.sent_at) >= max_wait_ms;
            if overdue {
                waiting.append(&mut s.followers);
            }
            !overdue
        });
        waiting
    }

    /// The lookup `call` for `token` answered: its followers, to be given the answer.
    pub fn finish(&mut self, token: &str, call: u32) -> Vec<u32> {
        match self.by_token.get(token) {
            Some(s) if s.call == call => self.by_token.remove(token).map(|s| s.followers).unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    /// A waiting context is gone (its stream ended). A follower just leaves; a leader's lookup
    /// will never be answered (the host cancels it), so its followers are returned to look up again.
    pub fn leave(&mut self, context: u32) -> Vec<u32> {
        let led = self.by_token.iter().find(|(_, s)| s.leader == context).map(|(t, _)| t.clone());
        if let Some(token) = led {
            return self.by_token.remove(&token).map(|s| s.followers).unwrap_or_default();
        }
        for shared in self.by_token.values_mut() {
            shared.followers.retain(|&f| f != context);
        }
        Vec::new()
    }

    /// Number of lookups that can be followed.
    pub fn len(&self) -> usize {
        self.by_token.len()
    }

    /// Whether none can be followed.
    pub fn is_empty(&self) -> bool {
        self.by_token.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn followers_join_the_leaders_lookup_and_get_its_answer() {
        let mut f = InFlight::default();
        assert_eq!(f.follow("t", 2, 0, 1000), None, "nothing to follow yet");
        f.lead("t", 1, 77, 5, 0);
        assert_eq!(f.follow("t", 1, 0, 1000), None, "a leader does not follow itself");
        assert_eq!(f.follow("t", 2, 10, 1000), Some(Joined { call: 77, epoch: 5 }));
        assert_eq!(f.follow("t", 3, 20, 1000), Some(Joined { call: 77, epoch: 5 }));
        assert_eq!(f.follow("u", 4, 20, 1000), None, "another token");
        assert_eq!(f.finish("t", 76), Vec::<u32>::new(), "another call's answer");
        assert_eq!(f.finish("t", 77), vec![2, 3]);
        assert!(f.is_empty());
        assert_eq!(f.finish("t", 77), Vec::<u32>::new(), "answered once");
    }

    #[test]
    fn a_gone_follower_leaves_and_a_gone_leader_releases_its_followers() {
        let mut f = InFlight::default();
        f.lead("t", 1, 77, 0, 0);
        f.follow("t", 2, 0, 1000);
        f.follow("t", 3, 0, 1000);
        assert_eq!(f.leave(2), Vec::<u32>::new());
        assert_eq!(f.leave(1), vec![3], "the rest look up again");
        assert!(f.is_empty());
    }

    #[test]
    fn an_overdue_lookup_takes_no_followers_and_its_followers_look_up_again() {
        let mut f = InFlight::default();
        f.lead("t", 1, 77, 0, 1_000);
        f.lead("u", 5, 78, 0, 1_900);
        assert!(f.follow("t", 2, 1_500, 1_000).is_some());
        assert_eq!(f.follow("t", 3, 2_000, 1_000), None, "overdue: no more followers");
        assert_eq!(f.expire(1_999, 1_000), Vec::<u32>::new());
        assert_eq!(f.expire(2_000, 1_000), vec![2]);
        assert_eq!(f.len(), 1, "the other lookup is not overdue yet");
        // a new lookup of the token replaces an overdue one
        f.lead("u", 6, 79, 0, 3_000);
        assert_eq!(f.follow("u", 7, 3_000, 1_000), Some(Joined { call: 79, epoch: 0 }));
    }

    #[test]
    fn followers_of_a_replaced_lookup_are_answered_by_its_replacement() {
        let mut f = InFlight::default();
        f.lead("t", 1, 77, 3, 1_000);
        assert!(f.follow("t", 2, 1_100, 1_000).is_some());
        // overdue before the tick expired it: a new request leads a new lookup of the same token
        assert_eq!(f.follow("t", 3, 2_100, 1_000), None);
        f.lead("t", 3, 78, 4, 2_100);
        assert_eq!(f.finish("t", 77), Vec::<u32>::new(), "the old answer reaches the old leader only");
        assert_eq!(f.finish("t", 78), vec![2], "the follower gets the new lookup's answer");
    }

    #[test]
    fn bounded() {
        let mut f = InFlight::default();
        f.lead("t", 0, 1, 0, 0);
        for c in 1..=MAX_FOLLOWERS as u32 {
            assert!(f.follow("t", c, 0, 1000).is_some());
        }
        assert_eq!(f.follow("t", 5000, 0, 1000), None, "a full lookup takes no more followers");
        for i in 0..MAX_SHARED + 10 {
            f.lead(&format!("x{i}"), 0, 2, 0, 0);
        }
        assert_eq!(f.len(), MAX_SHARED);
    }
}
