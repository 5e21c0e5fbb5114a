//! The lossy mode's delay (`--delay`). This kernel has no delay qdisc (no netem), so the
//! namespace is joined by two TUN devices instead of a veth pair, and this process moves
//! the IP packets between them: a thread each way reads a packet from one device and
//! hands it, stamped with its release time (now plus half the round trip), to a second
//! thread that writes it to the other device once that time has come. Being a hop for
//! IP packets, it delays TCP and UDP alike. Each way is one FIFO, so packets keep their
//! order; it is bounded, and a packet that finds it full is dropped and counted.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use tokio::time::Instant;

/// How often an idle thread looks at the stop flag: the longest a stop waits for it.
const POLL: Duration = Duration::from_millis(50);

/// Larger than any packet a TUN device with the default 1500-byte MTU hands over.
const MAX_PACKET: usize = 64 * 1024;

/// Opens a TUN device named `name` for IP packets without the packet-information
/// header (IFF_TUN | IFF_NO_PI, the crate's default); the kernel removes the device when
/// both halves are dropped.
pub fn open(name: &str) -> anyhow::Result<(tun::Reader, tun::Writer)> {
    let mut config = tun::Configuration::default();
    // Addresses are set with `ip` later: one device moves to the namespace first.
    config.tun_name(name).layer(tun::Layer::L3);
    let device = tun::create(&config).with_context(|| format!("creating TUN device {name}"))?;
    Ok(device.split())
}

/// Where one way's packets come from.
pub trait PacketIn: Send + 'static {
    /// The next packet's length in `buf`, or `None` when none came within [`POLL`].
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>>;
}

/// Where one way's packets go.
pub trait PacketOut: Send + 'static {
    fn send(&mut self, packet: &[u8]) -> io::Result<()>;
}

impl PacketIn for tun::Reader {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        match self.recv_timeout(buf, POLL) {
            Ok(n) => Ok(Some(n)),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}

impl PacketOut for tun::Writer {
    fn send(&mut self, packet: &[u8]) -> io::Result<()> {
        // A TUN device takes one whole packet per write.
        self.write(packet).map(drop)
    }
}

/// What happened to one way's packets.
#[derive(Debug, Default)]
pub struct Counts {
    pub forwarded: AtomicU64,
    /// Dropped because the way's queue was full.
    pub overflowed: AtomicU64,
    /// Reads or writes the device refused.
    pub failed: AtomicU64,
}

/// A packet waiting for its release time.
#[derive(Debug)]
struct Held {
    release: Instant,
    bytes: Vec<u8>,
}

/// One way: its counts and its two threads.
#[derive(Debug)]
struct Way {
    counts: Arc<Counts>,
    threads: [JoinHandle<()>; 2],
}

/// Packets moving both ways with a delay; the threads stop (and the devices close)
/// when this is dropped.
#[derive(Debug)]
pub struct DelayLine {
    stop: Arc<AtomicBool>,
    ways: Vec<Way>,
}

impl DelayLine {
    /// An empty line; [`DelayLine::way`] adds each direction.
    pub fn new() -> Self {
        Self {
            stop: Arc::new(AtomicBool::new(false)),
            ways: Vec::new(),
        }
    }

    /// Starts a way: packets from `from` reach `to` after `delay`, at most `queue`
    /// of them waiting.
    pub fn way(
        &mut self,
        name: &str,
        from: impl PacketIn,
        to: impl PacketOut,
        delay: Duration,
        queue: usize,
    ) -> anyhow::Result<()> {
        let counts = Arc::new(Counts::default());
        let (tx, rx) = mpsc::sync_channel(queue);
        let (stop, c) = (self.stop.clone(), counts.clone());
        let reader = std::thread::Builder::new()
            .name(format!("delay-in-{name}"))
            .spawn(move || take(from, tx, delay, &stop, &c))
            .context("starting a delay thread")?;
        let (stop, c) = (self.stop.clone(), counts.clone());
        let writer = std::thread::Builder::new()
            .name(format!("delay-out-{name}"))
            .spawn(move || release(rx, to, &stop, &c));
        let writer = match writer {
            Ok(w) => w,
            Err(e) => {
                // The reader ends once it sees the flag; this line is not kept.
                self.stop.store(true, Ordering::Relaxed);
                return Err(e).context("starting a delay thread");
            }
        };
        self.ways.push(Way {
            counts,
            threads: [reader, writer],
        });
        Ok(())
    }

    /// Each way's counts, in the order the ways were added.
    pub fn counts(&self) -> impl Iterator<Item = &Counts> {
        self.ways.iter().map(|w| &*w.counts)
    }
}

impl Drop for DelayLine {
    fn drop(&mut self) {
        // Each thread sees the flag within POLL, or once its packet in hand is out (at
        // most the delay).
        self.stop.store(true, Ordering::Relaxed);
        for way in self.ways.drain(..) {
            for thread in way.threads {
                let _ = thread.join();
            }
        }
    }
}

/// The reading side of a way: stamps each packet and queues it, or counts it dropped.
fn take(
    mut from: impl PacketIn,
    queue: SyncSender<Held>,
    delay: Duration,
    stop: &AtomicBool,
    counts: &Counts,
) {
    let mut buf = vec![0u8; MAX_PACKET];
    while !stop.load(Ordering::Relaxed) {
        let n = match from.recv(&mut buf) {
            Ok(Some(n)) => n,
            Ok(None) => continue,
            Err(_) => {
                // The device is gone or broken: this way ends, and says so in its count.
                counts.failed.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        let held = Held {
            release: Instant::now() + delay,
            bytes: buf[..n].to_vec(),
        };
        match queue.try_send(held) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                counts.overflowed.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Disconnected(_)) => return,
        }
    }
}

/// The writing side of a way: each packet in queue order, once its time has come.
fn release(queue: Receiver<Held>, mut to: impl PacketOut, stop: &AtomicBool, counts: &Counts) {
    while !stop.load(Ordering::Relaxed) {
        let held = match queue.recv_timeout(POLL) {
            Ok(held) => held,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        // Release times rise in queue order, so waiting for this one never holds back
        // a packet that is due earlier.
        let wait = held.release.saturating_duration_since(Instant::now());
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
        match to.send(&held.bytes) {
            Ok(()) => counts.forwarded.fetch_add(1, Ordering::Relaxed),
            Err(_) => counts.failed.fetch_add(1, Ordering::Relaxed),
        };
    }
}

/// Queue entries for one way: room for four times what the rate can put in flight in
/// `delay` as full 1500-byte packets, at least 4096 (acknowledgements are small
/// packets, each an entry too), at most 262,144 (about 400 MB of full packets).
pub fn queue_len(rate_mbit: u32, delay: Duration) -> usize {
    let bytes = rate_mbit as f64 * 125_000.0 * delay.as_secs_f64();
    ((4.0 * bytes / 1500.0) as usize).clamp(4096, 262_144)
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixDatagram;

    use super::*;

    /// A datagram socket stands in for a TUN device: it too keeps packet boundaries.
    struct Socket(UnixDatagram);

    impl PacketIn for Socket {
        fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
            match self.0.recv(buf) {
                Ok(n) => Ok(Some(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
                Err(e) => Err(e),
            }
        }
    }

    impl PacketOut for Socket {
        fn send(&mut self, packet: &[u8]) -> io::Result<()> {
            self.0.send(packet).map(drop)
        }
    }

    /// A way from a socket pair to another: returns the sending end of the first and
    /// the receiving end of the second.
    fn line(delay: Duration, queue: usize) -> (DelayLine, UnixDatagram, UnixDatagram) {
        let (send, inbound) = UnixDatagram::pair().unwrap();
        let (outbound, recv) = UnixDatagram::pair().unwrap();
        inbound.set_read_timeout(Some(POLL)).unwrap();
        recv.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut line = DelayLine::new();
        line.way("test", Socket(inbound), Socket(outbound), delay, queue)
            .unwrap();
        (line, send, recv)
    }

    #[test]
    fn every_packet_arrives_after_the_delay_and_in_order() {
        let delay = Duration::from_millis(30);
        let (line, send, recv) = line(delay, 64);
        for i in 0u8..20 {
            let sent = Instant::now();
            send.send(&[i; 100]).unwrap();
            let mut buf = [0u8; 200];
            let n = recv.recv(&mut buf).unwrap();
            assert!(
                sent.elapsed() >= delay,
                "packet {i} after {:?}",
                sent.elapsed()
            );
            assert_eq!(&buf[..n], &[i; 100]);
        }
        // The writer counts a packet just after sending it: give it up to a second.
        let counts = line.counts().next().unwrap();
        for _ in 0..100 {
            if counts.forwarded.load(Ordering::Relaxed) == 20 {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(counts.forwarded.load(Ordering::Relaxed), 20);
        assert_eq!(counts.overflowed.load(Ordering::Relaxed), 0);
    }

    /// Guards against a full queue blocking the reader or losing packets unseen.
    #[test]
    fn a_full_queue_drops_and_counts_what_does_not_fit() {
        let (line, send, recv) = line(Duration::from_millis(300), 4);
        for i in 0u8..10 {
            send.send(&[i]).unwrap();
        }
        // Four wait in the queue, and the writer may hold one more while it sleeps:
        // whichever packet arrived once it had taken the first from the queue.
        recv.set_read_timeout(Some(Duration::from_millis(800)))
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 8];
        for _ in 0..10 {
            let Ok(n) = recv.recv(&mut buf) else { break };
            got.extend_from_slice(&buf[..n]);
        }
        assert!(matches!(got.len(), 4 | 5), "{got:?}");
        assert!(
            got.starts_with(&[0, 1, 2, 3]) && got.windows(2).all(|w| w[0] < w[1]),
            "the first four, then at most one later packet, in order: {got:?}"
        );
        let counts = line.counts().next().unwrap();
        let dropped = counts.overflowed.load(Ordering::Relaxed);
        assert_eq!(dropped as usize, 10 - got.len());
    }

    #[test]
    fn the_queue_holds_the_rate_times_the_delay_within_bounds() {
        assert_eq!(queue_len(100, Duration::from_millis(25)), 4096);
        assert_eq!(queue_len(10_000, Duration::from_millis(500)), 262_144);
        let gbit = queue_len(1000, Duration::from_millis(100));
        assert_eq!(gbit, 33_333);
    }
}
