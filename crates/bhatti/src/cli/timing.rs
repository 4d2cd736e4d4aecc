//! `--timing`: where the last HTTP request's time went (v1's flag), printed on stderr when the
//! command ends.
//!
//! The phases, each measured by the client itself: `dns` (resolving the daemon's host name;
//! nothing for an address or a Unix socket), `connect` (the TCP or Unix connect), `tls` (always
//! `-`: the CLI speaks plain HTTP to its daemon, TLS ends in front of it), `server` (request
//! sent to the answer's head), `transfer` (the head to the end of the body, as the command read
//! it) and `total`. Marks reset at every request, so only the last one counts, as in v1.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// One request's marks.
#[derive(Debug, Clone, Copy)]
struct Marks {
    start: Instant,
    resolved: Option<Instant>,
    connected: Option<Instant>,
    head: Option<Instant>,
}

/// The marks of the last request, shared by a client's clones.
#[derive(Debug, Clone, Default)]
pub struct Timing {
    last: Arc<Mutex<Option<Marks>>>,
}

/// The phases of one request (`None`: the request did not get that far).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Phases {
    /// Resolving the host name.
    pub dns: Option<Duration>,
    /// Connecting.
    pub connect: Option<Duration>,
    /// Sending the request and waiting for the answer's head.
    pub server: Option<Duration>,
    /// Reading the body.
    pub transfer: Option<Duration>,
    /// Start to end.
    pub total: Duration,
}

impl Timing {
    fn with(&self, f: impl FnOnce(&mut Option<Marks>)) {
        f(&mut self.last.lock().unwrap_or_else(PoisonError::into_inner));
    }

    /// A request starts (forgets the previous one).
    pub fn start(&self) {
        let now = Instant::now();
        self.with(|m| *m = Some(Marks { start: now, resolved: None, connected: None, head: None }));
    }

    /// The host name is resolved.
    pub fn resolved(&self) {
        let now = Instant::now();
        self.with(|m| m.iter_mut().for_each(|m| m.resolved = Some(now)));
    }

    /// The connection is up.
    pub fn connected(&self) {
        let now = Instant::now();
        self.with(|m| m.iter_mut().for_each(|m| m.connected = Some(now)));
    }

    /// The answer's head arrived.
    pub fn head(&self) {
        let now = Instant::now();
        self.with(|m| m.iter_mut().for_each(|m| m.head = Some(now)));
    }

    /// The last request's phases, measured up to `end`; `None` if no request was made.
    pub fn phases(&self, end: Instant) -> Option<Phases> {
        let marks = *self.last.lock().unwrap_or_else(PoisonError::into_inner);
        marks.map(|m| phases(&m, end))
    }
}

fn phases(m: &Marks, end: Instant) -> Phases {
    let since = |from: Instant, to: Option<Instant>| to.map(|t| t.saturating_duration_since(from));
    let connect_from = m.resolved.unwrap_or(m.start);
    Phases {
        dns: since(m.start, m.resolved),
        connect: since(connect_from, m.connected),
        server: m.connected.and_then(|c| since(c, m.head)),
        transfer: m.head.map(|h| end.saturating_duration_since(h)),
        total: end.saturating_duration_since(m.start),
    }
}

/// The stderr line: `timing: dns 0.1ms connect 0.3ms tls - server 12.0ms transfer 0.2ms total 12.6ms`.
pub fn line(p: &Phases) -> String {
    let ms = |d: Option<Duration>| match d {
        Some(d) => format!("{:.1}ms", d.as_secs_f64() * 1000.0),
        None => "-".to_owned(),
    };
    format!(
        "timing: dns {} connect {} tls - server {} transfer {} total {}",
        ms(p.dns),
        ms(p.connect),
        ms(p.server),
        ms(p.transfer),
        ms(Some(p.total))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_follow_the_marks() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let d = |ms: u64| Some(Duration::from_millis(ms));
        let table = [
            (
                "every phase",
                Marks {
                    start: t0,
                    resolved: Some(at(1)),
                    connected: Some(at(3)),
                    head: Some(at(10)),
                },
                at(12),
                Phases {
                    dns: d(1),
                    connect: d(2),
                    server: d(7),
                    transfer: d(2),
                    total: Duration::from_millis(12),
                },
            ),
            (
                "no name to resolve: connect counts from the start",
                Marks { start: t0, resolved: None, connected: Some(at(2)), head: Some(at(5)) },
                at(5),
                Phases {
                    dns: None,
                    connect: d(2),
                    server: d(3),
                    transfer: d(0),
                    total: Duration::from_millis(5),
                },
            ),
            (
                "connect failed",
                Marks { start: t0, resolved: Some(at(1)), connected: None, head: None },
                at(4),
                Phases {
                    dns: d(1),
                    connect: None,
                    server: None,
                    transfer: None,
                    total: Duration::from_millis(4),
                },
            ),
        ];
        for (name, marks, end, want) in table {
            assert_eq!(phases(&marks, end), want, "{name}");
        }
    }

    #[test]
    fn the_line_shows_missing_phases_as_dashes() {
        let p = Phases {
            dns: None,
            connect: Some(Duration::from_micros(300)),
            server: None,
            transfer: None,
            total: Duration::from_millis(3),
        };
        assert_eq!(line(&p), "timing: dns - connect 0.3ms tls - server - transfer - total 3.0ms");
    }

    #[test]
    fn a_new_request_forgets_the_last() {
        let t = Timing::default();
        assert!(t.phases(Instant::now()).is_none());
        t.start();
        t.connected();
        t.head();
        t.start();
        let p = t.phases(Instant::now()).unwrap();
        assert_eq!((p.connect, p.server), (None, None));
    }
}
