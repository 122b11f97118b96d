//! `soak --worker`: one client process. It connects (through the proxy) to the echo server,
//! sends one message per tick on each of the four default channels, checks every echo and
//! prints one machine-readable line per second on standard output for the parent.
//!
//! Lines (space-separated `key=value`; lists comma-separated, one entry per channel 0..=3):
//! ```text
//! connected id=ID                 the handshake finished; sending starts now
//! rtt t=T ch=C us=A,B,...         round-trip times of the echoes of channel C that arrived in second T
//! tick t=T sent=.. got=.. srtt_us=.. rttvar_us=.. loss_ppm=.. pkts_sent=.. pkts_recv=.. resent=..
//!      lost=.. dups=.. stale=.. unrel_dropped=.. qfull=.. violations=..   (cumulative counters)
//! unrel t=S sent=N echoed=M       unreliable messages sent in second S and echoed (within
//!                                 about a second; printed at the tick of second S + 2 or at the end)
//! violation TEXT                  an invariant broke (the first 20; all are counted)
//! fail TEXT                       the run could not go on (no connection, disconnected)
//! bulk ok=0|1 us=T octets=N      with --bulk: the download on the bulk lane arrived T µs after
//!                                 the connection, intact (1) or not (0); at the end `bulk ok=0
//!                                 us=0 octets=0` if it never came
//! done missing=.. violations=.. ok=0|1   the last line, after the drain
//! ```
//! The `rtt` lines of second T come before its `tick` line. Messages: sequence number (u32),
//! send time in µs since the worker started (u64), channel, worker id (u16), a pattern derived
//! from all that, and an FNV-1a checksum of everything before it; an echo must be
//! byte-for-byte the message its sequence number and send time regenerate.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use tickwire::io::{ClientDriver, SocketConfig};
use tickwire::{ChannelId, ClientConfig, Event, SendError, ServerKey};

use super::{bulk, connection_config, CLOSE_TIMEOUT, CONNECT_TIMEOUT};

/// Ticks a late worker catches up at once before it skips ahead.
const MAX_CATCH_UP: u32 = 3;
/// How long unreliable echoes are waited for once every reliable one is back.
const UNRELIABLE_GRACE: Duration = Duration::from_millis(500);
/// Violation lines printed at most (all are counted).
const MAX_VIOLATION_LINES: u32 = 20;
/// Octets before the pattern: seq, send time, channel, worker id; and the checksum after.
pub const MIN_SIZE: usize = 4 + 8 + 1 + 2 + 4;

/// What the parent passes: `soak --worker --connect ADDR --server-key HEX ...`.
#[derive(clap::Parser, Debug)]
#[command(name = "soak --worker", long_about = None)]
struct WorkerArgs {
    /// The proxy's address.
    #[arg(long, value_name = "ADDR")]
    connect: SocketAddr,
    /// The echo server's key.
    #[arg(long = "server-key", value_name = "HEX")]
    key: ServerKey,
    /// Seconds of sending.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    secs: u64,
    /// Messages per second on each channel.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..))]
    hz: u32,
    /// Message size in octets.
    #[arg(long, default_value_t = 64, value_parser = worker_size)]
    size: usize,
    /// This worker's number.
    #[arg(long, default_value_t = 0)]
    id: u16,
    /// Seconds to wait for outstanding echoes.
    #[arg(long, default_value = "5", value_parser = drain_secs)]
    drain: Duration,
    /// The size of the download the server sends on the bulk lane once connected.
    #[arg(long, value_name = "SIZE", value_parser = bulk::size)]
    bulk: Option<usize>,
}

fn worker_size(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= MIN_SIZE => Ok(n),
        _ => Err(format!("not a size of at least {MIN_SIZE}")),
    }
}

fn drain_secs(s: &str) -> Result<Duration, String> {
    s.parse::<u64>()
        .map(Duration::from_secs)
        .map_err(|e| e.to_string())
}

fn parse(argv: &[String]) -> Result<WorkerArgs, clap::Error> {
    use clap::Parser;
    let argv = std::iter::once("soak --worker").chain(argv.iter().map(String::as_str));
    WorkerArgs::try_parse_from(argv)
}

/// Runs a worker with the arguments after `--worker`. Status 0: every check passed; 1: a
/// check failed or the connection broke; 2: bad arguments; 3: standard output closed.
pub fn main(argv: &[String]) -> ExitCode {
    let args = match parse(argv) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("soak worker: {e}");
            return ExitCode::from(2);
        }
    };
    let mut out = io::stdout().lock();
    match run(&args, &mut out) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("soak worker {}: {e}", args.id);
            ExitCode::from(3)
        }
    }
}

/// The message `seq` of `channel`, sent at `sent_us`, by worker `id`.
fn message(seq: u32, sent_us: u64, channel: u8, id: u16, size: usize) -> Vec<u8> {
    let mut m = Vec::with_capacity(size);
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(&sent_us.to_be_bytes());
    m.push(channel);
    m.extend_from_slice(&id.to_be_bytes());
    let base = seq
        .wrapping_mul(31)
        .wrapping_add(u32::from(channel) * 101)
        .wrapping_add(sent_us as u32);
    m.extend((m.len()..size - 4).map(|i| base.wrapping_add(i as u32 * 7) as u8));
    let sum = fnv1a(&m);
    m.extend_from_slice(&sum.to_be_bytes());
    m
}

fn fnv1a(data: &[u8]) -> u32 {
    data.iter().fold(0x811c_9dc5, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// The sequence number and send time of an echo if it is intact and ours.
fn check(data: &[u8], channel: u8, id: u16, size: usize) -> Option<(u32, u64)> {
    if data.len() != size {
        return None;
    }
    let seq = u32::from_be_bytes(data[..4].try_into().ok()?);
    let sent_us = u64::from_be_bytes(data[4..12].try_into().ok()?);
    (data == message(seq, sent_us, channel, id, size).as_slice()).then_some((seq, sent_us))
}

/// One channel's books.
#[derive(Default)]
struct Chan {
    sent: u32,
    got: u32,
    /// Which sequence numbers came back (unreliable, reliable-unordered, reliable-ordered).
    seen: Vec<bool>,
    /// Reliable-ordered: the next sequence number due.
    next: u32,
    /// Sequenced: the newest delivered.
    last: Option<u32>,
    /// Round-trip times (µs) of this second.
    rtts: Vec<u32>,
}

struct State {
    epoch: Instant,
    /// When sending started.
    start: Instant,
    /// The second (1 = the first) each unreliable message was sent in.
    unrel_second: Vec<u32>,
    /// Unreliable messages sent and echoed, by the second they were sent in.
    by_second: Vec<[u32; 2]>,
    /// Seconds of `by_second` already printed (index 0 is unused).
    by_second_printed: usize,
    id: u16,
    size: usize,
    chans: [Chan; 4],
    violations: u64,
    queue_full: u64,
    failure: Option<String>,
    /// The download's size, if one is due, and when the connection started.
    bulk: Option<usize>,
    connected_at: Instant,
    /// Whether the download arrived (intact or not).
    bulk_arrived: bool,
}

impl State {
    fn violation(&mut self, out: &mut impl Write, what: String) -> io::Result<()> {
        self.violations += 1;
        if self.violations <= u64::from(MAX_VIOLATION_LINES) {
            writeln!(out, "violation {what}")?;
        }
        Ok(())
    }

    fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    /// Sends one message on each channel.
    fn send_all(&mut self, driver: &mut ClientDriver, out: &mut impl Write) -> io::Result<()> {
        for ch in 0..4u8 {
            let c = &self.chans[usize::from(ch)];
            let msg = message(c.sent, self.now_us(), ch, self.id, self.size);
            match driver.send(ChannelId(ch), &msg) {
                Ok(()) => {
                    if ch == 0 {
                        let second = self.start.elapsed().as_secs() as usize + 1;
                        if self.by_second.len() <= second {
                            self.by_second.resize(second + 1, [0; 2]);
                        }
                        self.by_second[second][0] += 1;
                        self.unrel_second.push(second as u32);
                    }
                    let c = &mut self.chans[usize::from(ch)];
                    c.sent += 1;
                    if ch != 1 {
                        c.seen.push(false);
                    }
                }
                Err(SendError::QueueFull) => self.queue_full += 1,
                Err(e) => {
                    if self.failure.is_none() {
                        writeln!(out, "fail send on channel {ch} refused: {e}")?;
                        self.failure = Some(format!("send refused: {e}"));
                    }
                }
            }
        }
        Ok(())
    }

    /// Checks an echo; `Ok(false)` if the connection ended.
    fn on_event(
        &mut self,
        ev: Event,
        driver: &mut ClientDriver,
        out: &mut impl Write,
    ) -> io::Result<bool> {
        match ev {
            Event::Message { channel, data, .. }
                if channel == ChannelId::BULK && self.bulk.is_some() =>
            {
                let size = self.bulk.expect("checked");
                let intact = !self.bulk_arrived && bulk::is_intact(&data, size);
                let us = self.connected_at.elapsed().as_micros();
                writeln!(
                    out,
                    "bulk ok={} us={us} octets={}",
                    u8::from(intact),
                    data.len()
                )?;
                if !intact {
                    self.violation(
                        out,
                        format!("bulk download of {} octets not intact", data.len()),
                    )?;
                }
                self.bulk_arrived = true;
                Ok(true)
            }
            Event::Message { channel, data, .. } => {
                let ch = channel.0;
                let Some((seq, sent_us)) = (ch < 4)
                    .then(|| check(&data, ch, self.id, self.size))
                    .flatten()
                else {
                    self.violation(
                        out,
                        format!("ch={ch} corrupt echo of {} octets", data.len()),
                    )?;
                    driver.recycle(data);
                    return Ok(true);
                };
                driver.recycle(data);
                let rtt = self
                    .now_us()
                    .saturating_sub(sent_us)
                    .min(u64::from(u32::MAX)) as u32;
                let c = &mut self.chans[usize::from(ch)];
                let problem = if seq >= c.sent {
                    Some(format!("ch={ch} echo {seq} never sent"))
                } else if ch == 1 {
                    // Sequenced: never one older than (or as old as) one delivered.
                    match c.last {
                        Some(last) if seq <= last => {
                            Some(format!("ch=1 stale sequenced echo {seq} after {last}"))
                        }
                        _ => {
                            c.last = Some(seq);
                            c.got += 1;
                            c.rtts.push(rtt);
                            None
                        }
                    }
                } else if c.seen[seq as usize] {
                    Some(format!("ch={ch} echo {seq} delivered twice"))
                } else {
                    c.seen[seq as usize] = true;
                    c.got += 1;
                    c.rtts.push(rtt);
                    if ch == 0 {
                        let second = self.unrel_second[seq as usize] as usize;
                        self.by_second[second][1] += 1;
                    }
                    if ch == 3 {
                        let expected = c.next;
                        c.next = c.next.max(seq + 1);
                        (seq != expected).then(|| {
                            format!("ch=3 reliable-ordered echo {seq} out of order (expected {expected})")
                        })
                    } else {
                        None
                    }
                };
                if let Some(p) = problem {
                    self.violation(out, p)?;
                }
                Ok(true)
            }
            Event::Disconnected { reason, .. } => {
                writeln!(out, "fail disconnected: {reason}")?;
                self.failure = Some(format!("disconnected: {reason}"));
                Ok(false)
            }
            _ => Ok(true),
        }
    }

    /// The `unrel` lines of the seconds up to `upto` not printed yet.
    fn print_unreliable(&mut self, upto: usize, out: &mut impl Write) -> io::Result<()> {
        let upto = upto.min(self.by_second.len().saturating_sub(1));
        for second in self.by_second_printed + 1..=upto {
            let [sent, echoed] = self.by_second[second];
            writeln!(out, "unrel t={second} sent={sent} echoed={echoed}")?;
        }
        self.by_second_printed = self.by_second_printed.max(upto);
        Ok(())
    }

    /// The `rtt` lines and the `tick` line of second `t`.
    fn report(&mut self, t: u64, driver: &ClientDriver, out: &mut impl Write) -> io::Result<()> {
        self.print_unreliable((t as usize).saturating_sub(2), out)?;
        for (ch, c) in self.chans.iter_mut().enumerate() {
            if c.rtts.is_empty() {
                continue;
            }
            let list: Vec<String> = c.rtts.iter().map(u32::to_string).collect();
            writeln!(out, "rtt t={t} ch={ch} us={}", list.join(","))?;
            c.rtts.clear();
        }
        let s = driver.client().stats();
        let list = |f: fn(&Chan) -> u32| {
            self.chans
                .iter()
                .map(|c| f(c).to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        writeln!(
            out,
            "tick t={t} sent={} got={} srtt_us={} rttvar_us={} loss_ppm={} pkts_sent={} \
             pkts_recv={} resent={} lost={} dups={} stale={} unrel_dropped={} qfull={} \
             violations={}",
            list(|c| c.sent),
            list(|c| c.got),
            s.rtt.as_micros(),
            s.jitter.as_micros(),
            (s.loss * 1e6).round() as u64,
            s.packets_sent,
            s.packets_received,
            s.packets_resent,
            s.packets_lost,
            s.duplicates,
            s.stale_dropped,
            s.unreliable_dropped,
            self.queue_full,
            self.violations
        )
    }

    fn reliable_done(&self) -> bool {
        self.chans[2].got == self.chans[2].sent
            && self.chans[3].got == self.chans[3].sent
            && (self.bulk.is_none() || self.bulk_arrived)
    }

    fn all_done(&self) -> bool {
        self.chans.iter().all(|c| c.got == c.sent)
    }
}

fn run(a: &WorkerArgs, out: &mut impl Write) -> io::Result<bool> {
    let epoch = Instant::now();
    let mut st = State {
        epoch,
        start: epoch,
        unrel_second: Vec::new(),
        by_second: Vec::new(),
        by_second_printed: 0,
        id: a.id,
        size: a.size,
        chans: Default::default(),
        violations: 0,
        queue_full: 0,
        failure: None,
        bulk: a.bulk,
        connected_at: epoch,
        bulk_arrived: false,
    };
    let mut config = ClientConfig::new(a.key);
    config.connection = bulk::with_bulk(connection_config(), a.bulk);
    let mut driver = match ClientDriver::connect(config, a.connect, SocketConfig::default()) {
        Ok(d) => d,
        Err(e) => {
            writeln!(out, "fail cannot set up the client: {e}")?;
            writeln!(out, "done missing=0,0,0,0 violations=0 ok=0")?;
            return Ok(false);
        }
    };

    // Connecting.
    let give_up = Instant::now() + CONNECT_TIMEOUT;
    let mut connected = false;
    while !connected {
        let now = Instant::now();
        if now >= give_up {
            writeln!(out, "fail no connection within {CONNECT_TIMEOUT:?}")?;
            writeln!(out, "done missing=0,0,0,0 violations=0 ok=0")?;
            return Ok(false);
        }
        match driver.run_until_event(Some((give_up - now).min(Duration::from_millis(100))))? {
            Some(Event::Connected { client }) => {
                writeln!(out, "connected id={client}")?;
                st.connected_at = Instant::now();
                connected = true;
            }
            Some(Event::Disconnected { reason, .. }) => {
                writeln!(out, "fail could not connect: {reason}")?;
                writeln!(out, "done missing=0,0,0,0 violations=0 ok=0")?;
                return Ok(false);
            }
            _ => {}
        }
    }

    // Sending: one message per channel per tick; a report per second.
    let period = Duration::from_secs_f64(1.0 / f64::from(a.hz));
    let start = Instant::now();
    st.start = start;
    let stop = start + Duration::from_secs(a.secs);
    let mut next_send = start;
    let mut t = 1u64;
    let mut next_report = start + Duration::from_secs(1);
    // Bounded in count as well as time: far more passes than events or ticks can cause.
    let budget = (a.secs + a.drain.as_secs() + 5) * (u64::from(a.hz) * 16 + 4000);
    let mut passes = 0u64;
    let mut alive = true;
    while alive && passes < budget {
        passes += 1;
        let now = Instant::now();
        if now >= next_report {
            st.report(t, &driver, out)?;
            t += 1;
            next_report += Duration::from_secs(1);
        }
        if now >= stop {
            break;
        }
        let mut burst = 0;
        while next_send <= now && burst < MAX_CATCH_UP {
            st.send_all(&mut driver, out)?;
            next_send += period;
            burst += 1;
        }
        if next_send <= now {
            next_send = now + period; // too far behind: skip rather than burst
        }
        let wake = next_send.min(next_report).min(stop);
        if let Some(ev) = driver.run_until_event(Some(wake.saturating_duration_since(now)))? {
            alive = st.on_event(ev, &mut driver, out)?;
        }
    }

    // Draining: the echoes still on their way.
    let drain_end = Instant::now() + a.drain;
    let mut reliable_done_at = None;
    while alive && passes < budget {
        passes += 1;
        let now = Instant::now();
        if now >= next_report {
            st.report(t, &driver, out)?;
            t += 1;
            next_report += Duration::from_secs(1);
        }
        if st.reliable_done() {
            let done = *reliable_done_at.get_or_insert(now);
            if st.all_done() || now >= done + UNRELIABLE_GRACE {
                break;
            }
        }
        if now >= drain_end {
            break;
        }
        let wake = next_report
            .min(drain_end)
            .min(now + Duration::from_millis(20));
        if let Some(ev) = driver.run_until_event(Some(wake.saturating_duration_since(now)))? {
            alive = st.on_event(ev, &mut driver, out)?;
        }
    }
    // The partial last second, and every second of unreliable messages.
    st.report(t, &driver, out)?;
    st.print_unreliable(usize::MAX, out)?;
    let missing: Vec<String> = st
        .chans
        .iter()
        .map(|c| (c.sent - c.got).to_string())
        .collect();
    let reliable_missing =
        (st.chans[2].sent - st.chans[2].got) + (st.chans[3].sent - st.chans[3].got);
    if reliable_missing > 0 && st.failure.is_none() {
        writeln!(
            out,
            "fail {reliable_missing} reliable echoes missing after the drain of {:?}",
            a.drain
        )?;
    }
    let bulk_missing = st.bulk.is_some() && !st.bulk_arrived;
    if bulk_missing {
        writeln!(out, "bulk ok=0 us=0 octets=0")?;
        if st.failure.is_none() {
            writeln!(
                out,
                "fail the bulk download did not arrive within the drain"
            )?;
        }
    }
    let ok = st.failure.is_none() && st.violations == 0 && reliable_missing == 0 && !bulk_missing;
    writeln!(
        out,
        "done missing={} violations={} ok={}",
        missing.join(","),
        st.violations,
        u8::from(ok)
    )?;
    out.flush()?;

    // Closing, bounded.
    if alive {
        driver.disconnect("soak done");
        let give_up = Instant::now() + CLOSE_TIMEOUT;
        let mut passes = 0;
        while passes < 10_000 {
            passes += 1;
            let now = Instant::now();
            if now >= give_up || driver.client().is_closed() {
                break;
            }
            if let Some(Event::Disconnected { .. }) =
                driver.run_until_event(Some((give_up - now).min(Duration::from_millis(50))))?
            {
                break;
            }
        }
    }
    Ok(ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echoes_are_checked_byte_for_byte() {
        let m = message(7, 123_456, 3, 5, 64);
        assert_eq!(m.len(), 64);
        assert_eq!(check(&m, 3, 5, 64), Some((7, 123_456)));
        assert_eq!(check(&m, 2, 5, 64), None, "another channel");
        assert_eq!(check(&m, 3, 6, 64), None, "another worker");
        assert_eq!(check(&m[..63], 3, 5, 63), None, "truncated");
        for i in 0..m.len() {
            let mut bad = m.clone();
            bad[i] ^= 0x10;
            assert_eq!(check(&bad, 3, 5, 64), None, "byte {i} flipped");
        }
    }
}
