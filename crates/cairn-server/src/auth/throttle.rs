//! Throttling of failed logins: a lockout that backs off, per user, per address and per both.
//!
//! Each failure is counted under three keys: the user at the address, the user from anywhere,
//! and the address for any user. A key that has failed more than its free allowance is locked:
//! 1 s after the first failure past the allowance, then twice as long after each further one, at
//! most 15 minutes. While a key is locked, logins under it are answered 429 at once (no password
//! is checked, so a flood costs no hashing). A key's failures are forgotten 15 minutes after its
//! last one; a successful login forgets those of the user at that address.
//!
//! Allowances: 5 for the user at one address (someone mistyping), 20 for the user from anywhere
//! (a spread guessing of one account, without letting a stranger lock a user out quickly), 20
//! for an address (one client guessing many users).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures forgiven before each kind of key locks.
const FREE_USER_AT_ADDRESS: u32 = 5;
const FREE_USER: u32 = 20;
const FREE_ADDRESS: u32 = 20;
/// The first lock, doubled for each further failure.
const FIRST_LOCK: Duration = Duration::from_secs(1);
/// The longest lock.
pub const MAX_LOCK: Duration = Duration::from_secs(15 * 60);
/// Failures are forgotten this long after the last one.
const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);
/// Keys kept at most (oldest forgotten first when full): bounds memory under a flood.
const MAX_KEYS: usize = 100_000;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    UserAt(String, IpAddr),
    User(String),
    Address(IpAddr),
}

impl Key {
    fn free(&self) -> u32 {
        match self {
            Key::UserAt(..) => FREE_USER_AT_ADDRESS,
            Key::User(_) => FREE_USER,
            Key::Address(_) => FREE_ADDRESS,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    last: Instant,
    locked_until: Option<Instant>,
}

/// Why a login was not even tried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Locked {
    /// How long until it may be tried again.
    pub retry_after: Duration,
    /// What is locked, for messages: `user admin from 10.0.0.1`, `user admin`, `address 10.0.0.1`.
    pub what: String,
}

/// The failed-login counters of a server.
#[derive(Debug, Default)]
pub struct LoginThrottle {
    entries: Mutex<HashMap<Key, Entry>>,
}

fn keys(user: &str, address: IpAddr) -> [Key; 3] {
    let user = user.to_lowercase();
    [
        Key::UserAt(user.clone(), address),
        Key::User(user),
        Key::Address(address),
    ]
}

fn describe(key: &Key) -> String {
    match key {
        Key::UserAt(u, a) => format!("user {u} from {a}"),
        Key::User(u) => format!("user {u}"),
        Key::Address(a) => format!("address {a}"),
    }
}

impl LoginThrottle {
    /// An empty throttle.
    pub fn new() -> LoginThrottle {
        LoginThrottle::default()
    }

    /// `Err` when a login of `user` from `address` must not be tried now.
    pub fn check(&self, user: &str, address: IpAddr, now: Instant) -> Result<(), Locked> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let mut worst: Option<Locked> = None;
        for key in keys(user, address) {
            if let Some(until) = entries.get(&key).and_then(|e| e.locked_until)
                && until > now
            {
                let retry_after = until - now;
                if worst.as_ref().is_none_or(|w| w.retry_after < retry_after) {
                    worst = Some(Locked {
                        retry_after,
                        what: describe(&key),
                    });
                }
            }
        }
        worst.map_or(Ok(()), Err)
    }

    /// Counts a failed login; returns the lock it caused, if any.
    pub fn failed(&self, user: &str, address: IpAddr, now: Instant) -> Option<Locked> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= MAX_KEYS {
            entries.retain(|_, e| now.duration_since(e.last) < FORGET_AFTER);
            if entries.len() >= MAX_KEYS
                && let Some(oldest) = entries.iter().min_by_key(|(_, e)| e.last).map(|(k, _)| k.clone())
            {
                entries.remove(&oldest);
            }
        }
        let mut worst: Option<Locked> = None;
        for key in keys(user, address) {
            let entry = entries.entry(key.clone()).or_insert(Entry {
                failures: 0,
                last: now,
                locked_until: None,
            });
            if now.duration_since(entry.last) >= FORGET_AFTER {
                *entry = Entry {
                    failures: 0,
                    last: now,
                    locked_until: None,
                };
            }
            entry.failures += 1;
            entry.last = now;
            if entry.failures > key.free() {
                let doublings = (entry.failures - key.free() - 1).min(20);
                let lock = FIRST_LOCK.saturating_mul(1 << doublings).min(MAX_LOCK);
                entry.locked_until = Some(now + lock);
                if worst.as_ref().is_none_or(|w| w.retry_after < lock) {
                    worst = Some(Locked {
                        retry_after: lock,
                        what: describe(&key),
                    });
                }
            }
        }
        worst
    }

    /// Forgets the failures of `user` at `address` after a successful login.
    pub fn succeeded(&self, user: &str, address: IpAddr) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.remove(&Key::UserAt(user.to_lowercase(), address));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    #[test]
    fn five_mistakes_are_free_then_the_lock_doubles_up_to_fifteen_minutes() {
        let t = LoginThrottle::new();
        let now = Instant::now();
        for _ in 0..5 {
            assert_eq!(t.failed("ann", A, now), None);
            assert!(t.check("ann", A, now).is_ok());
        }
        let lock = t.failed("ann", A, now).expect("locked after the sixth failure");
        assert_eq!(lock.retry_after, Duration::from_secs(1));
        assert_eq!(lock.what, "user ann from 10.0.0.1");
        assert!(t.check("ANN", A, now).is_err(), "names are compared without case");
        assert!(t.check("ann", A, now + Duration::from_secs(1)).is_ok());
        let later = now + Duration::from_secs(1);
        assert_eq!(t.failed("ann", A, later).unwrap().retry_after, Duration::from_secs(2));
        assert_eq!(t.failed("ann", A, later).unwrap().retry_after, Duration::from_secs(4));
        let mut last = Duration::ZERO;
        for _ in 0..30 {
            last = t.failed("ann", A, later).unwrap().retry_after;
        }
        assert_eq!(last, MAX_LOCK);
        // Another address is not locked for this user until the user's own allowance is spent.
        assert!(
            t.check("ann", B, later).is_err(),
            "36 failures lock the user everywhere"
        );
        assert!(t.check("bob", B, later).is_ok());
    }

    #[test]
    fn one_address_guessing_many_users_is_locked_and_success_forgives_only_its_own_key() {
        let t = LoginThrottle::new();
        let now = Instant::now();
        for i in 0..20 {
            assert_eq!(t.failed(&format!("user{i}"), A, now), None);
        }
        let lock = t.failed("user20", A, now).unwrap();
        assert_eq!(lock.what, "address 10.0.0.1");
        assert!(t.check("someone", A, now).is_err());
        assert!(t.check("someone", B, now).is_ok());
        t.succeeded("someone", A);
        assert!(t.check("someone", A, now).is_err(), "the address stays locked");
    }

    #[test]
    fn failures_are_forgotten_after_a_quiet_quarter_hour() {
        let t = LoginThrottle::new();
        let now = Instant::now();
        for _ in 0..6 {
            t.failed("ann", A, now);
        }
        let quiet = now + FORGET_AFTER + Duration::from_secs(1);
        assert!(t.check("ann", A, quiet).is_ok());
        assert_eq!(t.failed("ann", A, quiet), None, "counting starts again");
    }
}
