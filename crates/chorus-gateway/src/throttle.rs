//! Limits on signing up and signing in, so that neither can be used to guess
//! passwords, pile up accounts, or crowd real users out (issue 23).
//!
//! - **Failed sign-ins**, per client address and per username. Every sign-in takes one
//!   token from its address's bucket and one from its username's before the password
//!   is checked, and gives both back if the password was right. So parallel attempts
//!   count too, and a throttled address or name costs the server no password hash.
//!   While either bucket is empty, *every* sign-in from that address or as that name
//!   is refused with `rate_limited`, a right password included: letting a right one
//!   through would mean hashing every guess to find out, and the answer would tell the
//!   guesser when they were right.
//! - **Names, not accounts.** The username bucket is keyed by the name as sent,
//!   whether or not an account has it, and the limit is checked before the account is
//!   looked up: a throttled name answers the same, at once, either way.
//! - **Sign-ups** per client address.
//!
//! The client address is the peer address of the TCP connection (the server puts it in
//! each request's extensions as [`ConnectInfo`]); IPv6 addresses count per /64, which
//! one host usually has whole. Behind a proxy every client has the proxy's address:
//! raise the per-address limits there. Limits are per gateway process.

use crate::error::ApiError;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use chorus_config::AuthConfig;
use chorus_core::ratelimit::RateLimiter;
use std::convert::Infallible;
use std::hash::{BuildHasher, RandomState};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

/// The window of the sign-in limits.
const LOGIN_WINDOW: Duration = Duration::from_secs(15 * 60);
/// The window of the sign-up limit.
const REGISTRATION_WINDOW: Duration = Duration::from_secs(3600);

/// Where a request comes from: the peer address of its connection, or `None` when the
/// request carries no [`ConnectInfo`] (a router driven without a socket, as in tests):
/// such requests share one bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct ClientAddr(pub(crate) Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Infallible> {
        let addr = parts.extensions.get::<ConnectInfo<SocketAddr>>();
        if addr.is_none() {
            // A server that stopped providing the address would make every client share
            // one allowance of failed sign-ins: worth saying, once.
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| {
                tracing::warn!(
                    "requests carry no client address (ConnectInfo): per-address sign-in \
                     and sign-up limits are shared by every client"
                );
            });
        }
        Ok(Self(addr.map(|ConnectInfo(addr)| addr.ip())))
    }
}

impl ClientAddr {
    /// The bucket's key: an IPv4 address (also when written as IPv6), or an IPv6
    /// address's /64.
    fn key(self) -> Option<IpAddr> {
        self.0.map(|ip| match ip.to_canonical() {
            IpAddr::V6(v6) => {
                let network = u128::from(v6) & !u128::from(u64::MAX);
                IpAddr::V6(Ipv6Addr::from(network))
            }
            v4 => v4,
        })
    }
}

/// Which limit refused a request, for the metric.
#[derive(Clone, Copy)]
enum Limit {
    LoginAddress,
    LoginAccount,
    Registration,
}

impl Limit {
    fn refuse(self, what: &str, retry_after_ms: u64) -> ApiError {
        let name = match self {
            Self::LoginAddress => "login_address",
            Self::LoginAccount => "login_account",
            Self::Registration => "registration",
        };
        metrics::counter!("chorus_auth_refused_total", "limit" => name).increment(1);
        ApiError::too_many(what, retry_after_ms)
    }
}

/// The sign-up and sign-in limits of one gateway.
pub struct AuthLimits {
    login_per_address: RateLimiter<Option<IpAddr>>,
    login_per_account: RateLimiter<u64>,
    registrations: RateLimiter<Option<IpAddr>>,
    /// Keys usernames: buckets hold a hash, not the name (which a client chooses,
    /// of any length), keyed so that clients cannot aim for collisions.
    names: RandomState,
}

impl AuthLimits {
    /// The limits `config` sets.
    pub fn new(config: &AuthConfig) -> Self {
        Self {
            login_per_address: RateLimiter::per_window(
                config.login_failures_per_address,
                LOGIN_WINDOW,
            ),
            login_per_account: RateLimiter::per_window(
                config.login_failures_per_account,
                LOGIN_WINDOW,
            ),
            registrations: RateLimiter::per_window(
                config.registrations_per_hour,
                REGISTRATION_WINDOW,
            ),
            names: RandomState::new(),
        }
    }

    /// A sign-in as `username` from `addr` about to be checked, counted as a failure
    /// until [`LoginAttempt::not_a_failure`] says otherwise; `rate_limited` when the
    /// address or the name has no failures left.
    pub(crate) fn login(
        &self,
        addr: ClientAddr,
        username: &str,
    ) -> Result<LoginAttempt<'_>, ApiError> {
        self.login_at(addr, username, Instant::now())
    }

    fn login_at(
        &self,
        addr: ClientAddr,
        username: &str,
        now: Instant,
    ) -> Result<LoginAttempt<'_>, ApiError> {
        const WHAT: &str = "failed sign-ins";
        let addr = addr.key();
        let name = self.names.hash_one(username);
        self.login_per_address
            .check_at(addr, now)
            .map_err(|ms| Limit::LoginAddress.refuse(WHAT, ms))?;
        if let Err(ms) = self.login_per_account.check_at(name, now) {
            // Refused, so not a failure of the address either.
            self.login_per_address.give_back(&addr, now);
            return Err(Limit::LoginAccount.refuse(WHAT, ms));
        }
        Ok(LoginAttempt {
            limits: self,
            addr,
            name,
        })
    }

    /// A sign-up from `addr` about to be made, counted until
    /// [`SignUp::not_counted`]; `rate_limited` past the address's limit.
    pub(crate) fn sign_up(&self, addr: ClientAddr) -> Result<SignUp<'_>, ApiError> {
        self.sign_up_at(addr, Instant::now())
    }

    fn sign_up_at(&self, addr: ClientAddr, now: Instant) -> Result<SignUp<'_>, ApiError> {
        let addr = addr.key();
        self.registrations
            .check_at(addr, now)
            .map_err(|ms| Limit::Registration.refuse("sign-ups from this address", ms))?;
        Ok(SignUp { limits: self, addr })
    }
}

/// A sign-in in progress: one failure taken from its address and its name. Dropped
/// as it is, the failure stays counted (a wrong password, or a client that hung up
/// before the answer).
pub(crate) struct LoginAttempt<'a> {
    limits: &'a AuthLimits,
    addr: Option<IpAddr>,
    name: u64,
}

impl LoginAttempt<'_> {
    /// The password was wrong: the failure stays counted.
    pub(crate) fn failed(self) {}

    /// The password was right, or could not be checked (the server was busy or a
    /// dependency failed): no failure.
    pub(crate) fn not_a_failure(self) {
        self.not_a_failure_at(Instant::now());
    }

    fn not_a_failure_at(self, now: Instant) {
        self.limits.login_per_address.give_back(&self.addr, now);
        self.limits.login_per_account.give_back(&self.name, now);
    }
}

/// A sign-up in progress, counted against its address unless
/// [`SignUp::not_counted`] is called.
pub(crate) struct SignUp<'a> {
    limits: &'a AuthLimits,
    addr: Option<IpAddr>,
}

impl SignUp<'_> {
    /// The server could not make the account for reasons of its own (busy, a
    /// dependency failed): it does not count against the address.
    pub(crate) fn not_counted(self) {
        self.not_counted_at(Instant::now());
    }

    fn not_counted_at(self, now: Instant) {
        self.limits.registrations.give_back(&self.addr, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chorus_core::ErrorCode;

    fn limits(per_address: u32, per_account: u32, registrations: u32) -> AuthLimits {
        AuthLimits::new(&AuthConfig {
            login_failures_per_address: per_address,
            login_failures_per_account: per_account,
            registrations_per_hour: registrations,
            ..AuthConfig::default()
        })
    }

    fn addr(ip: &str) -> ClientAddr {
        ClientAddr(Some(ip.parse().unwrap()))
    }

    #[track_caller]
    fn refused(r: Result<impl Sized, ApiError>) -> u64 {
        let Err(e) = r else { panic!("not refused") };
        assert_eq!(e.code, ErrorCode::RateLimited);
        e.retry_after_ms.expect("a retry hint")
    }

    #[test]
    fn failures_from_one_address_throttle_that_address_for_every_name() {
        let limits = limits(3, 100, 10);
        let t0 = Instant::now();
        let attacker = addr("203.0.113.7");
        for i in 0..3 {
            limits
                .login_at(attacker, &format!("guess{i}"), t0)
                .unwrap()
                .failed();
        }
        // A right password from the throttled address waits too.
        let wait = refused(limits.login_at(attacker, "ada", t0));
        assert_eq!(wait, 300_000, "one failure forgiven every 15 min / 3");
        // Another address is not throttled, and neither is the name.
        limits
            .login_at(addr("198.51.100.1"), "ada", t0)
            .unwrap()
            .not_a_failure();
        // Once a failure's worth of time has passed, the address may try again.
        let later = t0 + Duration::from_millis(wait);
        limits.login_at(attacker, "ada", later).unwrap().failed();
    }

    #[test]
    fn failures_for_one_name_throttle_it_from_every_address_whether_it_exists_or_not() {
        let limits = limits(100, 2, 10);
        let t0 = Instant::now();
        for name in ["ada", "nobody-has-this-name"] {
            limits
                .login_at(addr("203.0.113.1"), name, t0)
                .unwrap()
                .failed();
            limits
                .login_at(addr("203.0.113.2"), name, t0)
                .unwrap()
                .failed();
            let a = limits
                .login_at(addr("198.51.100.9"), name, t0)
                .err()
                .unwrap();
            assert_eq!(a.code, ErrorCode::RateLimited);
            assert_eq!(a.retry_after_ms, Some(450_000));
            assert_eq!(a.message, "too many failed sign-ins; retry in 450000 ms");
        }
        // The name's refusals did not count against the third address.
        for i in 0..100 {
            limits
                .login_at(addr("198.51.100.9"), &format!("n{i}"), t0)
                .unwrap()
                .failed();
        }
    }

    #[test]
    fn right_passwords_and_parallel_attempts_are_counted_as_they_should() {
        let limits = limits(2, 100, 10);
        let t0 = Instant::now();
        let home = addr("192.0.2.10");
        // Right passwords give their token back: any number of them.
        for _ in 0..10 {
            limits.login_at(home, "ada", t0).unwrap().not_a_failure();
        }
        // Attempts in flight at once hold their tokens: the third waits.
        let first = limits.login_at(home, "ada", t0).unwrap();
        let second = limits.login_at(home, "bob", t0).unwrap();
        refused(limits.login_at(home, "cyd", t0));
        first.not_a_failure_at(t0);
        second.failed();
        limits.login_at(home, "cyd", t0).unwrap().failed();
        refused(limits.login_at(home, "dan", t0));
    }

    #[test]
    fn ipv6_addresses_count_per_64_and_mapped_ipv4_as_ipv4() {
        let limits = limits(1, 100, 10);
        let t0 = Instant::now();
        limits
            .login_at(addr("2001:db8:1:2::1"), "a", t0)
            .unwrap()
            .failed();
        refused(limits.login_at(addr("2001:db8:1:2:ffff::9"), "b", t0));
        limits
            .login_at(addr("2001:db8:1:3::1"), "c", t0)
            .unwrap()
            .failed();
        limits
            .login_at(addr("192.0.2.1"), "d", t0)
            .unwrap()
            .failed();
        refused(limits.login_at(addr("::ffff:192.0.2.1"), "e", t0));
        // Without an address every request shares one bucket.
        limits.login_at(ClientAddr(None), "f", t0).unwrap().failed();
        refused(limits.login_at(ClientAddr(None), "g", t0));
    }

    #[test]
    fn sign_ups_per_address_are_limited_and_refunded_when_the_server_failed() {
        let limits = limits(10, 10, 2);
        let t0 = Instant::now();
        let home = addr("192.0.2.10");
        limits.sign_up_at(home, t0).unwrap();
        limits.sign_up_at(home, t0).unwrap().not_counted_at(t0);
        limits.sign_up_at(home, t0).unwrap();
        let wait = refused(limits.sign_up_at(home, t0));
        assert_eq!(wait, 1_800_000, "one more every 30 minutes at 2 an hour");
        limits.sign_up_at(addr("192.0.2.11"), t0).unwrap();
        limits
            .sign_up_at(home, t0 + Duration::from_millis(wait))
            .unwrap();
    }
}
