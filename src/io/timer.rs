//! A wake-up with sub-millisecond precision for the driver's wait.
//!
//! mio rounds a [`Poll::poll`](mio::Poll::poll) timeout up to whole milliseconds (epoll's
//! unit). Most endpoint deadlines do not mind, but pacing does: a connection that must wait
//! 150 µs for its next datagram would wait a whole millisecond, sending at most one burst per
//! millisecond, a fraction of its pacing rate. On Linux a one-shot `timerfd` registered with
//! the same [`Poll`](mio::Poll) wakes the wait at the deadline to the microsecond, while
//! readiness of the socket still wakes it at once; elsewhere the wait keeps mio's rounding.

use std::io;
use std::time::{Duration, Instant};

use mio::{Registry, Token};

/// Waits shorter than this, and not a whole number of milliseconds, use the timer: mio's
/// rounding would add more than a tenth to them.
pub(crate) const PRECISE_BELOW: Duration = Duration::from_millis(10);

/// Whether a wait of `d` needs the precise timer.
pub(crate) fn needs_timer(d: Duration) -> bool {
    !d.is_zero() && d < PRECISE_BELOW && d.subsec_nanos() % 1_000_000 != 0
}

#[cfg(target_os = "linux")]
mod imp {
    use std::io;
    use std::os::fd::{AsRawFd, OwnedFd};
    use std::time::Duration;

    use mio::unix::SourceFd;
    use mio::{Interest, Registry, Token};
    use rustix::time::{
        timerfd_create, timerfd_settime, Itimerspec, TimerfdClockId, TimerfdFlags,
        TimerfdTimerFlags, Timespec,
    };

    /// A non-blocking one-shot `timerfd` on the monotonic clock.
    #[derive(Debug)]
    pub(crate) struct Timer {
        fd: OwnedFd,
    }

    impl Timer {
        pub(crate) fn new(registry: &Registry, token: Token) -> io::Result<Self> {
            let fd = timerfd_create(
                TimerfdClockId::Monotonic,
                TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
            )?;
            registry.register(&mut SourceFd(&fd.as_raw_fd()), token, Interest::READABLE)?;
            Ok(Self { fd })
        }

        /// Fires once, `after` from now (replacing any earlier setting). A timer that fires
        /// after the wait it was set for ended only causes one more pass that finds nothing
        /// to do; its count is never read (setting it again resets it), and mio's
        /// edge-triggered registration reports every expiry.
        pub(crate) fn arm(&mut self, after: Duration) -> io::Result<()> {
            let zero = Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            let value = Timespec {
                tv_sec: after.as_secs().try_into().unwrap_or(i64::MAX),
                // Zero would disarm it; a nanosecond is as good as now.
                tv_nsec: i64::from(after.subsec_nanos().max(u32::from(after.is_zero()))),
            };
            timerfd_settime(
                &self.fd,
                TimerfdTimerFlags::empty(),
                &Itimerspec {
                    it_interval: zero,
                    it_value: value,
                },
            )?;
            Ok(())
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use std::io;
    use std::time::Duration;

    use mio::{Registry, Token};

    /// No precise timer here: waits keep mio's millisecond rounding.
    #[derive(Debug)]
    pub(crate) struct Timer;

    impl Timer {
        pub(crate) fn new(_: &Registry, _: Token) -> io::Result<Self> {
            Err(io::ErrorKind::Unsupported.into())
        }

        pub(crate) fn arm(&mut self, _: Duration) -> io::Result<()> {
            Ok(())
        }
    }
}

/// A precise one-shot wake-up for the driver's [`Poll`](mio::Poll), where the system has one.
#[derive(Debug)]
pub(crate) struct Timer {
    imp: imp::Timer,
    /// When it was last set to fire (it fires once, then this is in the past).
    armed: Option<Instant>,
}

impl Timer {
    /// A timer registered with `registry` under `token`, or `None` where there is none.
    pub(crate) fn new(registry: &Registry, token: Token) -> Option<Self> {
        match imp::Timer::new(registry, token) {
            Ok(t) => Some(Self {
                imp: t,
                armed: None,
            }),
            Err(e) => {
                tracing::debug!(error = %e, "no precise timer; waits are rounded to milliseconds");
                None
            }
        }
    }

    /// Wakes the poll once, `after` from `now`. Returns false, and makes no system call, when
    /// it is already set for that moment and has not fired (a wait that a datagram ended
    /// before its deadline, followed by a wait for the same deadline).
    ///
    /// # Errors
    /// Any error of `timerfd_settime`.
    pub(crate) fn arm(&mut self, now: Instant, after: Duration) -> io::Result<bool> {
        let at = now + after;
        if self.armed.is_some_and(|a| a == at && a > now) {
            return Ok(false);
        }
        self.imp.arm(after)?;
        self.armed = Some(at);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    use mio::{Events, Poll};

    #[test]
    fn only_short_fractional_waits_need_it() {
        assert!(needs_timer(Duration::from_micros(150)));
        assert!(needs_timer(Duration::from_micros(1500)));
        assert!(!needs_timer(Duration::ZERO));
        assert!(!needs_timer(Duration::from_millis(1)));
        assert!(!needs_timer(Duration::from_millis(3)));
        assert!(!needs_timer(Duration::from_micros(10_500)));
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn is_not_set_again_for_the_deadline_it_waits_for() {
        let poll = Poll::new().unwrap();
        let mut timer = Timer::new(poll.registry(), Token(7)).expect("timerfd on Linux");
        let now = Instant::now();
        let deadline = now + Duration::from_millis(500);
        assert!(timer.arm(now, deadline - now).unwrap());
        // A later wait for the same deadline (a datagram ended the first): kept.
        let later = now + Duration::from_micros(300);
        assert!(!timer.arm(later, deadline - later).unwrap());
        // Another deadline: set.
        assert!(timer.arm(later, Duration::from_micros(700)).unwrap());
        // The same moment once it has passed (it fired): set again.
        let past = now + Duration::from_secs(1);
        timer.armed = Some(past);
        assert!(timer.arm(past, Duration::ZERO).unwrap());
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn wakes_the_poll_before_mio_would() {
        let mut poll = Poll::new().unwrap();
        let mut timer = Timer::new(poll.registry(), Token(7)).expect("timerfd on Linux");
        let mut events = Events::with_capacity(4);
        // A 200 µs timer against a 1 s poll timeout: the poll returns because of it.
        let start = Instant::now();
        assert!(timer.arm(start, Duration::from_micros(200)).unwrap());
        poll.poll(&mut events, Some(Duration::from_secs(1)))
            .unwrap();
        let waited = start.elapsed();
        assert!(waited >= Duration::from_micros(200), "{waited:?}");
        assert!(events.iter().any(|e| e.token() == Token(7)));
        // Re-armed, it fires again (edge-triggered, count never read).
        assert!(timer
            .arm(Instant::now(), Duration::from_micros(100))
            .unwrap());
        poll.poll(&mut events, Some(Duration::from_secs(1)))
            .unwrap();
        assert!(events.iter().any(|e| e.token() == Token(7)));
    }
}
