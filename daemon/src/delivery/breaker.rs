//! Delivery step, before a request leaves: a circuit breaker per provider host. A host that
//! keeps failing (no connection, 5xx) is given a rest instead of every waiting request's
//! retries: after [`THRESHOLD`] failures in a row the circuit opens, requests to the host wait
//! without being sent (and without using up their attempts), and once the rest is over a single
//! trial request goes through — its success closes the circuit, its failure opens it again
//! for twice as long. Rate limits (429 and the providers' codes) are not failures: the
//! provider answered, and its `Retry-After` already paces the retries.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures in a row that open a host's circuit.
pub const THRESHOLD: u32 = 5;
/// The first rest; each failed trial doubles it, up to [`MAX_REST`].
const FIRST_REST: Duration = Duration::from_secs(5);
const MAX_REST: Duration = Duration::from_secs(120);
/// How long a request waits while another one is the trial.
const TRIAL_WAIT: Duration = Duration::from_millis(500);

#[derive(Debug, Default)]
struct Circuit {
    failures: u32,
    open_until: Option<Instant>,
    rest: Duration,
    trial_in_flight: bool,
}

/// What a request may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Send it (the circuit is closed, or this is the trial).
    Go,
    /// Wait this long and ask again; the circuit is open.
    Wait(Duration),
}

/// The circuits of one daemon's provider hosts.
#[derive(Debug, Default)]
pub struct Breakers {
    circuits: Mutex<HashMap<String, Circuit>>,
}

impl Breakers {
    fn circuits(&self) -> std::sync::MutexGuard<'_, HashMap<String, Circuit>> {
        self.circuits
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Whether a request to `host` may go now.
    pub fn admit(&self, host: &str, now: Instant) -> Admission {
        let mut circuits = self.circuits();
        let Some(circuit) = circuits.get_mut(host) else {
            return Admission::Go;
        };
        match circuit.open_until {
            None => Admission::Go,
            Some(until) if until > now => Admission::Wait(until - now),
            Some(_) if circuit.trial_in_flight => Admission::Wait(TRIAL_WAIT),
            Some(_) => {
                circuit.trial_in_flight = true;
                Admission::Go
            }
        }
    }

    /// The host answered (anything but a 5xx): its circuit closes. Whether it was open.
    pub fn succeeded(&self, host: &str) -> bool {
        self.circuits()
            .remove(host)
            .is_some_and(|circuit| circuit.open_until.is_some())
    }

    /// No connection, or a 5xx. Whether this opened the circuit (or opened it again).
    pub fn failed(&self, host: &str, now: Instant) -> bool {
        let mut circuits = self.circuits();
        let circuit = circuits.entry(host.to_owned()).or_default();
        circuit.failures += 1;
        if circuit.trial_in_flight {
            circuit.trial_in_flight = false;
            circuit.rest = (circuit.rest * 2).clamp(FIRST_REST, MAX_REST);
            circuit.open_until = Some(now + circuit.rest);
            return true;
        }
        if circuit.open_until.is_none() && circuit.failures >= THRESHOLD {
            circuit.rest = FIRST_REST;
            circuit.open_until = Some(now + circuit.rest);
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_host_rests_then_gets_one_trial() {
        let breakers = Breakers::default();
        let start = Instant::now();
        for n in 1..THRESHOLD {
            assert!(
                !breakers.failed("api", start),
                "failure {n} keeps it closed"
            );
            assert_eq!(breakers.admit("api", start), Admission::Go);
        }
        assert!(breakers.failed("api", start), "the threshold opens it");
        assert_eq!(breakers.admit("api", start), Admission::Wait(FIRST_REST));
        assert_eq!(breakers.admit("other", start), Admission::Go, "per host");
        // Rested: one trial, the others wait for it.
        let later = start + FIRST_REST;
        assert_eq!(breakers.admit("api", later), Admission::Go);
        assert_eq!(breakers.admit("api", later), Admission::Wait(TRIAL_WAIT));
        // The trial fails: a longer rest.
        assert!(breakers.failed("api", later));
        assert_eq!(
            breakers.admit("api", later),
            Admission::Wait(FIRST_REST * 2)
        );
        // The next trial succeeds: closed.
        let again = later + FIRST_REST * 2;
        assert_eq!(breakers.admit("api", again), Admission::Go);
        assert!(breakers.succeeded("api"));
        assert_eq!(breakers.admit("api", again), Admission::Go);
        assert!(!breakers.succeeded("api"), "closed already");
    }
}
