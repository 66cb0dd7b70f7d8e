//! Owner sessions and the login rate limit. Both are pure state machines driven by an explicit
//! clock, bounded in size, so tests reach expiry and lockout by construction.

use std::collections::HashMap;
use std::net::IpAddr;

/// A logged-in owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The owner's name.
    pub owner: String,
    /// When the session ends (Unix ms), however active it is.
    pub expires_ms: u64,
}

/// Live sessions, keyed by the SHA-256 of their token (the token itself is never kept).
#[derive(Debug)]
pub struct Sessions {
    by_hash: HashMap<[u8; 32], Session>,
    ttl_ms: u64,
    max_sessions: usize,
    max_per_owner: usize,
}

impl Sessions {
    /// Sessions that last `ttl_ms`, at most `max_sessions` in all and `max_per_owner` per
    /// owner (a new one beyond either bound ends the oldest).
    pub fn new(ttl_ms: u64, max_sessions: usize, max_per_owner: usize) -> Self {
        Self {
            by_hash: HashMap::new(),
            ttl_ms,
            max_sessions: max_sessions.max(1),
            max_per_owner: max_per_owner.max(1),
        }
    }

    /// Starts a session for `owner`; returns its token (64 hex digits) and its end.
    pub fn start(&mut self, owner: &str, now_ms: u64) -> (String, u64) {
        self.by_hash.retain(|_, s| s.expires_ms > now_ms);
        let mine = self.by_hash.values().filter(|s| s.owner == owner).count();
        if mine >= self.max_per_owner {
            self.end_oldest(|s| s.owner == owner);
        }
        if self.by_hash.len() >= self.max_sessions {
            self.end_oldest(|_| true);
        }
        let token = hex::encode(rand::random::<[u8; 32]>());
        let expires_ms = now_ms.saturating_add(self.ttl_ms);
        self.by_hash.insert(
            rigd_client::sha256(token.as_bytes()),
            Session {
                owner: owner.to_owned(),
                expires_ms,
            },
        );
        (token, expires_ms)
    }

    fn end_oldest(&mut self, which: impl Fn(&Session) -> bool) {
        let oldest = self
            .by_hash
            .iter()
            .filter(|(_, s)| which(s))
            .min_by_key(|(_, s)| s.expires_ms)
            .map(|(h, _)| *h);
        if let Some(h) = oldest {
            self.by_hash.remove(&h);
        }
    }

    /// The owner of a live session with `token`; an expired one is ended.
    pub fn owner(&mut self, token: &str, now_ms: u64) -> Option<String> {
        let hash = rigd_client::sha256(token.as_bytes());
        match self.by_hash.get(&hash) {
            Some(s) if s.expires_ms > now_ms => Some(s.owner.clone()),
            Some(_) => {
                self.by_hash.remove(&hash);
                None
            }
            None => None,
        }
    }

    /// Ends the session with `token`, if any.
    pub fn end(&mut self, token: &str) {
        self.by_hash.remove(&rigd_client::sha256(token.as_bytes()));
    }

    /// Live and expired-but-not-yet-purged sessions.
    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }
}

/// What the limiter keys failures by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Name(String),
    Addr(IpAddr),
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    window_ends_ms: u64,
}

/// Failed logins per owner name and per client address within a window; past either limit,
/// logins are refused until the window ends. Bounded: when full of live entries it refuses
/// every login that has no entry yet, so a flood cannot grow it without bound.
#[derive(Debug)]
pub struct LoginLimiter {
    failures: HashMap<Key, Failures>,
    window_ms: u64,
    per_name: u32,
    per_addr: u32,
    max_entries: usize,
}

/// Limits of a [`LoginLimiter`].
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The window failures count in, ms.
    pub window_ms: u64,
    /// Failures allowed per owner name in a window.
    pub per_name: u32,
    /// Failures allowed per client address in a window.
    pub per_addr: u32,
    /// Most names and addresses tracked.
    pub max_entries: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            window_ms: 15 * 60 * 1000,
            per_name: 5,
            per_addr: 20,
            max_entries: 100_000,
        }
    }
}

impl LoginLimiter {
    /// A limiter with `limits`.
    pub fn new(limits: Limits) -> Self {
        Self {
            failures: HashMap::new(),
            window_ms: limits.window_ms,
            per_name: limits.per_name,
            per_addr: limits.per_addr,
            max_entries: limits.max_entries.max(1),
        }
    }

    /// Whether a login for `name` from `addr` may be tried now.
    pub fn allows(&mut self, name: &str, addr: IpAddr, now_ms: u64) -> bool {
        let live = |f: Option<&Failures>| f.filter(|f| f.window_ends_ms > now_ms).map(|f| f.count);
        let by_name = live(self.failures.get(&Key::Name(name.to_owned())));
        let by_addr = live(self.failures.get(&Key::Addr(addr)));
        if by_name.is_some_and(|n| n >= self.per_name)
            || by_addr.is_some_and(|n| n >= self.per_addr)
        {
            return false;
        }
        if by_name.is_none() || by_addr.is_none() {
            self.purge(now_ms);
            if self.failures.len().saturating_add(2) > self.max_entries {
                return false;
            }
        }
        true
    }

    /// Counts a failed login.
    pub fn failed(&mut self, name: &str, addr: IpAddr, now_ms: u64) {
        for key in [Key::Name(name.to_owned()), Key::Addr(addr)] {
            let window_ends_ms = now_ms.saturating_add(self.window_ms);
            let f = self.failures.entry(key).or_insert(Failures {
                count: 0,
                window_ends_ms,
            });
            if f.window_ends_ms <= now_ms {
                *f = Failures {
                    count: 0,
                    window_ends_ms,
                };
            }
            f.count = f.count.saturating_add(1);
        }
    }

    /// A successful login clears its name's failures (not its address's).
    pub fn succeeded(&mut self, name: &str) {
        self.failures.remove(&Key::Name(name.to_owned()));
    }

    fn purge(&mut self, now_ms: u64) {
        self.failures.retain(|_, f| f.window_ends_ms > now_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_ends_at_its_expiry_or_logout() {
        let mut s = Sessions::new(1000, 100, 4);
        let (token, ends) = s.start("alice", 10);
        assert_eq!(ends, 1010);
        assert_eq!(s.owner(&token, 1009).as_deref(), Some("alice"));
        assert_eq!(s.owner(&token, 1010), None);
        assert!(s.is_empty(), "an expired session is dropped when seen");
        let (token, _) = s.start("alice", 2000);
        s.end(&token);
        assert_eq!(s.owner(&token, 2001), None);
        assert_eq!(s.owner("not a token", 2001), None);
    }

    #[test]
    fn sessions_are_bounded_per_owner_and_in_all() {
        let mut s = Sessions::new(1_000_000, 5, 2);
        let a1 = s.start("alice", 1).0;
        let a2 = s.start("alice", 2).0;
        let a3 = s.start("alice", 3).0;
        assert_eq!(s.owner(&a1, 4), None, "the oldest of alice's ended");
        assert!(s.owner(&a2, 4).is_some() && s.owner(&a3, 4).is_some());
        let others: Vec<String> = (0..4)
            .map(|i| s.start(&format!("o{i}"), 10 + i).0)
            .collect();
        assert_eq!(s.len(), 5);
        assert_eq!(s.owner(&a2, 20), None, "the oldest of all ended");
        assert!(others.iter().all(|t| s.owner(t, 20).is_some()));
    }

    #[test]
    fn failures_lock_a_name_and_an_address_until_the_window_ends() {
        let limits = Limits {
            window_ms: 100,
            per_name: 3,
            per_addr: 5,
            max_entries: 1000,
        };
        let mut l = LoginLimiter::new(limits);
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        for _ in 0..3 {
            assert!(l.allows("alice", a, 0));
            l.failed("alice", a, 0);
        }
        assert!(!l.allows("alice", a, 50), "name locked");
        assert!(!l.allows("alice", b, 50), "from any address");
        assert!(l.allows("bob", a, 50), "the address is not yet");
        l.failed("bob", a, 50);
        l.failed("carol", a, 50);
        assert!(!l.allows("dave", a, 60), "address locked after 5");
        assert!(l.allows("dave", b, 60));
        assert!(l.allows("alice", b, 100), "window over");
        l.succeeded("bob");
    }

    #[test]
    fn a_full_limiter_refuses_newcomers_only() {
        let limits = Limits {
            window_ms: 100,
            per_name: 3,
            per_addr: 100,
            max_entries: 4,
        };
        let mut l = LoginLimiter::new(limits);
        let a: IpAddr = [10, 0, 0, 1].into();
        l.failed("n1", a, 0);
        l.failed("n2", a, 0);
        l.failed("n3", a, 0);
        assert!(!l.allows("n4", a, 1), "full: no room for n4");
        assert!(l.allows("n1", a, 1), "known entries still served");
        assert!(l.allows("n4", a, 100), "room again once the window ends");
    }
}
