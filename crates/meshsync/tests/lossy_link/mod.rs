//! A lossy link for tests: a userspace UDP proxy on 127.0.0.1 that puts a
//! bad network between two real daemons. It drops, delays (with jitter,
//! which reorders) and duplicates datagrams, as `tc qdisc … netem` would.
//! The kernel of the test machines has no `sch_netem` (adding the qdisc
//! fails with "Specified qdisc kind is unknown"), so the tests use this.
//!
//! # How it sits
//!
//! ```text
//!   device B  ──▶  front (B's static peer)  ──impair──▶  back  ──▶  device A
//!   device B  ◀──  front  ◀──impair──  back (A sees B coming from here)  ◀──  A
//! ```
//!
//! [`LossyLink::start`] binds two sockets: `front`, whose address is given
//! to B as its peer, and `back`, from which datagrams go to `upstream` (A's
//! listen address). The client is whoever last sent to `front`; datagrams
//! from anyone but `upstream` on `back` are ignored. Each direction applies
//! the link's [`Impairment`] on its own. The settings can change while
//! datagrams flow ([`LossyLink::set`]), for a blackout and a heal.
//!
//! # Deterministic given a seed
//!
//! What happens to the n-th datagram of a direction ([`Impairment::fate`])
//! depends only on the seed, the direction, n and the settings in force: it
//! takes the same four draws from its direction's [`SplitMix64`] whatever
//! the outcome. The scheduling is not deterministic (which datagram is the
//! n-th depends on the daemons, and delivery on the machine's timers), so a
//! test may rely on rates, never on which packet is lost.
//!
//! # What it must never do
//!
//! Send anywhere but loopback: it binds 127.0.0.1 only, sends only to
//! `upstream` (checked to be loopback) and to the client that sent to
//! `front` (always loopback, as `front` is bound there). It never reads or
//! changes a payload: it moves whole datagrams or none. Its threads stop
//! when the link is dropped, so a failed test leaves nothing running.

// Not every test binary uses every item.
#![allow(dead_code)]

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How bad the link is, in each direction.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Impairment {
    /// The fraction of datagrams dropped, 0.0 to 1.0.
    pub loss: f64,
    /// How long a datagram takes to cross (half the added round trip).
    pub delay: Duration,
    /// Each datagram's delay is drawn uniformly from `delay ± jitter`
    /// (never below zero). A jitter wider than the gap between two
    /// datagrams reorders them, as netem's does.
    pub jitter: Duration,
    /// The fraction of datagrams forwarded twice, each copy with its own
    /// delay (so a copy may arrive first, or after later datagrams).
    pub duplicate: f64,
    /// Whether jitter keeps the order: a datagram then waits for the one
    /// before it, as behind a queue on one path, and nothing is reordered.
    /// Otherwise each copy keeps its own delay and may overtake others, as
    /// with netem's jitter.
    pub in_order: bool,
}

impl Impairment {
    /// A perfect link: everything forwarded at once, once.
    pub const NONE: Impairment = Impairment {
        loss: 0.0,
        delay: Duration::ZERO,
        jitter: Duration::ZERO,
        duplicate: 0.0,
        in_order: true,
    };

    /// Nothing gets through (a cable pulled out).
    pub const BLACKOUT: Impairment = Impairment {
        loss: 1.0,
        ..Impairment::NONE
    };

    /// What happens to the next datagram: four draws from `rng`, whatever
    /// the outcome.
    pub fn fate(&self, rng: &mut SplitMix64) -> Fate {
        let (lost, doubled) = (rng.unit(), rng.unit());
        let (first, second) = (self.jittered(rng.unit()), self.jittered(rng.unit()));
        if lost < self.loss {
            Fate::Dropped
        } else if doubled < self.duplicate {
            Fate::Twice(first, second)
        } else {
            Fate::Once(first)
        }
    }

    /// `delay ± jitter` at `u` in [0, 1).
    fn jittered(&self, u: f64) -> Duration {
        let spread = self.jitter.as_secs_f64() * (2.0 * u - 1.0);
        Duration::from_secs_f64((self.delay.as_secs_f64() + spread).max(0.0))
    }
}

/// What happens to one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// It is lost.
    Dropped,
    /// It is forwarded after this delay.
    Once(Duration),
    /// It is forwarded twice, after each delay.
    Twice(Duration, Duration),
}

/// SplitMix64 (Steele, Lea and Flood): small, fast, and the same stream
/// for a seed on every machine and version, which a library RNG does not
/// promise.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform draw from [0, 1) (53 bits).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Which way a datagram goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Direction {
    /// From the client (B) to upstream (A).
    ToUpstream,
    /// From upstream (A) to the client (B).
    ToClient,
}

/// What one direction of the link did so far.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DirectionStats {
    /// Datagrams that entered the link.
    pub received: u64,
    /// Datagrams lost ([`Impairment::loss`]).
    pub dropped: u64,
    /// Datagrams dropped because the queue was full (see [`QUEUE_LIMIT`]).
    pub overflowed: u64,
    /// Datagrams sent twice.
    pub duplicated: u64,
    /// Copies sent on (a duplicated datagram counts twice).
    pub delivered: u64,
    /// Copies sent after a datagram that entered the link later.
    pub reordered: u64,
}

/// What the link did so far, both ways.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LinkStats {
    /// From the client to upstream.
    pub to_upstream: DirectionStats,
    /// From upstream to the client.
    pub to_client: DirectionStats,
}

/// At most this many datagrams wait in the link (netem's default limit
/// is 1,000; this is higher because the link has no rate limit to pace
/// them): beyond, a datagram is dropped as by a full router queue.
pub const QUEUE_LIMIT: usize = 20_000;

/// How often a blocked reader looks whether the link is stopping.
const READ_TICK: Duration = Duration::from_millis(50);

/// Socket buffers, like the daemon's own (4 MiB), so the link adds no loss
/// of its own under a burst.
const SOCKET_BUFFER: usize = 4 << 20;

/// A datagram waiting for its time.
struct Queued {
    due: Instant,
    /// Order of entry into the link (both directions), for ties and for
    /// counting reordering.
    entered: u64,
    direction: Direction,
    bytes: Arc<[u8]>,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Queued {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key().cmp(&other.key())
    }
}
impl Queued {
    fn key(&self) -> (Instant, u64, Direction) {
        (self.due, self.entered, self.direction)
    }
}

/// The state the threads share.
struct Shared {
    state: Mutex<State>,
    /// Wakes the sender when a datagram is queued or the link stops.
    queued: Condvar,
    stopping: AtomicBool,
    entered: AtomicU64,
}

struct State {
    impairment: Impairment,
    rng_to_upstream: SplitMix64,
    rng_to_client: SplitMix64,
    queue: BinaryHeap<Reverse<Queued>>,
    /// Where datagrams to the client go: the last sender on `front`.
    client: Option<SocketAddr>,
    /// The latest entry number sent on, per direction (reorder count).
    last_sent: [Option<u64>; 2],
    /// The latest due time queued, per direction (for `in_order`).
    last_due: [Option<Instant>; 2],
    stats: LinkStats,
}

impl State {
    fn stats_mut(&mut self, d: Direction) -> &mut DirectionStats {
        match d {
            Direction::ToUpstream => &mut self.stats.to_upstream,
            Direction::ToClient => &mut self.stats.to_client,
        }
    }

    /// Decides `bytes`' fate and queues its copies.
    fn admit(&mut self, direction: Direction, bytes: &[u8], entered: u64, now: Instant) {
        let impairment = self.impairment;
        let rng = match direction {
            Direction::ToUpstream => &mut self.rng_to_upstream,
            Direction::ToClient => &mut self.rng_to_client,
        };
        let fate = impairment.fate(rng);
        self.stats_mut(direction).received += 1;
        let delays: &[Duration] = match &fate {
            Fate::Dropped => {
                self.stats_mut(direction).dropped += 1;
                return;
            }
            Fate::Once(d) => std::slice::from_ref(d),
            Fate::Twice(d1, d2) => {
                self.stats_mut(direction).duplicated += 1;
                &[*d1, *d2]
            }
        };
        let bytes: Arc<[u8]> = Arc::from(bytes);
        for delay in delays {
            if self.queue.len() >= QUEUE_LIMIT {
                self.stats_mut(direction).overflowed += 1;
                continue;
            }
            let mut due = now + *delay;
            let last_due = &mut self.last_due[direction as usize];
            if impairment.in_order {
                due = last_due.map_or(due, |last| due.max(last));
            }
            *last_due = Some(last_due.map_or(due, |last| due.max(last)));
            self.queue.push(Reverse(Queued {
                due,
                entered,
                direction,
                bytes: Arc::clone(&bytes),
            }));
        }
    }
}

/// A running lossy link. Dropping it stops its threads.
pub struct LossyLink {
    front: SocketAddr,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl LossyLink {
    /// Starts a link to `upstream` (a loopback address) with `impairment`
    /// both ways and the random streams of `seed`.
    pub fn start(upstream: SocketAddr, impairment: Impairment, seed: u64) -> LossyLink {
        assert!(
            upstream.ip().is_loopback(),
            "the lossy link forwards to loopback only, not {upstream}"
        );
        let front = bind_loopback();
        let back = bind_loopback();
        let front_addr = front.local_addr().expect("front address");
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                impairment,
                // One stream per direction, so one side's traffic does not
                // change the other's fates.
                rng_to_upstream: SplitMix64::new(seed ^ 0x5550_5354_5245_414d),
                rng_to_client: SplitMix64::new(seed ^ 0x434c_4945_4e54_0000),
                queue: BinaryHeap::new(),
                client: None,
                last_sent: [None; 2],
                last_due: [None; 2],
                stats: LinkStats::default(),
            }),
            queued: Condvar::new(),
            stopping: AtomicBool::new(false),
            entered: AtomicU64::new(0),
        });
        let clone = |s: &UdpSocket| s.try_clone().expect("cloning a socket");
        let threads = vec![
            spawn("lossy-link-front", {
                let (sock, shared) = (clone(&front), Arc::clone(&shared));
                move || read_front(&sock, &shared)
            }),
            spawn("lossy-link-back", {
                let (sock, shared) = (clone(&back), Arc::clone(&shared));
                move || read_back(&sock, upstream, &shared)
            }),
            spawn("lossy-link-send", {
                let shared = Arc::clone(&shared);
                move || send_due(&front, &back, upstream, &shared)
            }),
        ];
        LossyLink {
            front: front_addr,
            shared,
            threads,
        }
    }

    /// The address to give the client as its peer.
    pub fn addr(&self) -> SocketAddr {
        self.front
    }

    /// Changes the impairment from the next datagram on (datagrams already
    /// in the link keep their fate).
    pub fn set(&self, impairment: Impairment) {
        self.shared.state.lock().expect("poisoned").impairment = impairment;
    }

    /// What the link did so far.
    pub fn stats(&self) -> LinkStats {
        self.shared.state.lock().expect("poisoned").stats
    }
}

impl Drop for LossyLink {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.shared.queued.notify_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn bind_loopback() -> UdpSocket {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).expect("UDP socket");
    // Best effort: Linux caps the request at net.core.[rw]mem_max.
    let _ = s.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = s.set_send_buffer_size(SOCKET_BUFFER);
    let any_port: SocketAddr = "127.0.0.1:0".parse().expect("address");
    s.bind(&any_port.into()).expect("binding 127.0.0.1");
    let s: UdpSocket = s.into();
    s.set_read_timeout(Some(READ_TICK)).expect("read timeout");
    s
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .expect("starting a lossy-link thread")
}

/// Reads `sock` until the link stops, handing each datagram and its
/// sender to `admit` (which says whether to take it).
fn read_loop(
    sock: &UdpSocket,
    shared: &Shared,
    mut admit: impl FnMut(&mut State, SocketAddr) -> Option<Direction>,
) {
    let mut buf = vec![0u8; 65_536];
    while !shared.stopping.load(Ordering::SeqCst) {
        let (n, from) = match sock.recv_from(&mut buf) {
            Ok(got) => got,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            // ICMP errors reported on the socket (a daemon not up yet).
            Err(_) => continue,
        };
        let now = Instant::now();
        let entered = shared.entered.fetch_add(1, Ordering::SeqCst);
        let mut state = shared.state.lock().expect("poisoned");
        if let Some(direction) = admit(&mut state, from) {
            state.admit(direction, &buf[..n], entered, now);
            shared.queued.notify_one();
        }
    }
}

/// Datagrams from the client, who is whoever sent last.
fn read_front(sock: &UdpSocket, shared: &Shared) {
    read_loop(sock, shared, |state, from| {
        state.client = Some(from);
        Some(Direction::ToUpstream)
    });
}

/// Datagrams from upstream; anything else is ignored.
fn read_back(sock: &UdpSocket, upstream: SocketAddr, shared: &Shared) {
    read_loop(sock, shared, |_, from| {
        (from == upstream).then_some(Direction::ToClient)
    });
}

/// Sends each queued datagram when it is due, until the link stops.
fn send_due(front: &UdpSocket, back: &UdpSocket, upstream: SocketAddr, shared: &Shared) {
    let mut state = shared.state.lock().expect("poisoned");
    while !shared.stopping.load(Ordering::SeqCst) {
        let now = Instant::now();
        let next_due = state.queue.peek().map(|Reverse(q)| q.due);
        match next_due {
            Some(due) if due <= now => {
                let Reverse(q) = state.queue.pop().expect("peeked");
                let slot = &mut state.last_sent[q.direction as usize];
                let reordered = slot.is_some_and(|last| q.entered < last);
                *slot = Some(slot.map_or(q.entered, |last| last.max(q.entered)));
                let client = state.client;
                let stats = state.stats_mut(q.direction);
                stats.delivered += 1;
                stats.reordered += u64::from(reordered);
                // Send without the lock; a send error (a daemon stopped)
                // is a lost datagram, as on a real link.
                drop(state);
                let _ = match q.direction {
                    Direction::ToUpstream => back.send_to(&q.bytes, upstream),
                    Direction::ToClient => match client {
                        Some(c) => front.send_to(&q.bytes, c),
                        None => Ok(0),
                    },
                };
                state = shared.state.lock().expect("poisoned");
            }
            Some(due) => {
                state = shared
                    .queued
                    .wait_timeout(state, due - now)
                    .expect("poisoned")
                    .0;
            }
            None => {
                state = shared.queued.wait(state).expect("poisoned");
            }
        }
    }
}
