//! Which spaces have a live link. A single gateway keeps this in memory.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use agent_link::proto::{ControlMessage, Service};
use agent_link::transport::Link;
use tokio::sync::mpsc;

use crate::stall::Stalls;

/// A space as users name it: its owner and its name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SpaceKey {
    /// The owner's user name.
    pub user: String,
    /// The space's name.
    pub space: String,
}

impl fmt::Display for SpaceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}--{}", self.user, self.space)
    }
}

/// Identifies one registration of one link, so that a stale link's cleanup cannot
/// remove the link that replaced it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionId(pub u64);

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A live link and what its space offers.
#[derive(Debug)]
pub struct Entry {
    /// This registration.
    pub session: SessionId,
    /// The space's id from the agent token.
    pub space_id: String,
    /// The link.
    pub link: Link,
    /// The services declared in `Hello` or the last `ServicesUpdate`.
    pub services: RwLock<Vec<Service>>,
    /// Messages for the link's control stream (for example `GoAway`). Boxed: the
    /// channel allocates its first 32 slots at once, on every link, idle ones too.
    pub control: mpsc::Sender<Box<ControlMessage>>,
    /// When the link registered.
    pub since: SystemTime,
    /// The last measured round-trip time of the link, microseconds (0: not yet).
    pub rtt_micros: AtomicU64,
    /// Streams open on this link now.
    pub open_streams: AtomicU64,
    /// The agent process's `Hello.instance` (0: not given).
    pub instance: u64,
    /// Which streams' users have stopped reading.
    pub stalls: Stalls,
}

impl Entry {
    /// A freshly registered link.
    pub fn new(
        session: SessionId,
        space_id: String,
        link: Link,
        services: Vec<Service>,
        control: mpsc::Sender<Box<ControlMessage>>,
        instance: u64,
    ) -> Self {
        Self {
            session,
            space_id,
            link,
            services: RwLock::new(services),
            control,
            since: SystemTime::now(),
            rtt_micros: AtomicU64::new(0),
            open_streams: AtomicU64::new(0),
            instance,
            stalls: Stalls::default(),
        }
    }

    /// The service on `port`, if the space offers it.
    pub fn service(&self, port: u16) -> Option<Service> {
        self.services
            .read()
            .expect("services lock poisoned")
            .iter()
            .find(|s| s.port == port)
            .cloned()
    }

    /// The first service of `kind`.
    pub fn service_of_kind(&self, kind: agent_link::proto::ServiceKind) -> Option<Service> {
        self.services
            .read()
            .expect("services lock poisoned")
            .iter()
            .find(|s| s.kind == kind)
            .cloned()
    }
}

/// The live spaces.
#[derive(Debug, Default)]
pub struct Registry {
    spaces: RwLock<HashMap<SpaceKey, Arc<Entry>>>,
    next_session: AtomicU64,
    /// For each space taken over by another agent: the agents that lost it while it
    /// stayed linked.
    displaced: RwLock<HashMap<SpaceKey, Vec<Displaced>>>,
}

/// Displaced agents remembered per space; the oldest is forgotten past this (a token
/// copied to more machines than this would flap again, among the forgotten ones).
const MAX_DISPLACED: usize = 16;

/// An agent instance that lost its space to another agent instance.
#[derive(Debug, Clone, Copy)]
struct Displaced {
    loser: u64,
    /// Whether the warning about it has been logged.
    reported: bool,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self {
            spaces: RwLock::default(),
            next_session: AtomicU64::new(1),
            displaced: RwLock::default(),
        }
    }

    /// A fresh session id.
    pub fn next_session(&self) -> SessionId {
        SessionId(self.next_session.fetch_add(1, Ordering::Relaxed))
    }

    /// Registers `entry` for `key`, returning the entry it replaced, if any. When the
    /// old link came from another agent process, that agent is remembered as displaced
    /// (see [`standby`](Self::standby)).
    pub fn insert(&self, key: SpaceKey, entry: Arc<Entry>) -> Option<Arc<Entry>> {
        let (winner, k) = (entry.instance, key.clone());
        let old = self
            .spaces
            .write()
            .expect("registry lock poisoned")
            .insert(key, entry);
        if let Some(old) = &old {
            if old.instance != 0 && winner != 0 && old.instance != winner {
                let mut displaced = self.displaced.write().expect("registry lock poisoned");
                let list = displaced.entry(k).or_default();
                // The winner holds the space now: it is no longer standing by.
                list.retain(|d| d.loser != winner && d.loser != old.instance);
                if list.len() == MAX_DISPLACED {
                    list.remove(0);
                }
                list.push(Displaced {
                    loser: old.instance,
                    reported: false,
                });
            }
        }
        old
    }

    /// Whether agent `instance` should stand by instead of registering `key`: it lost
    /// the space to another agent, and a link of another agent still holds it. Live
    /// agents with one token would otherwise take the space from each other forever;
    /// the one that took over last is kept, however many there are. `Some(first)`,
    /// with `first` true the first time this agent is caught (for one warning rather
    /// than one per retry).
    pub fn standby(&self, key: &SpaceKey, instance: u64) -> Option<bool> {
        if instance == 0 {
            return None;
        }
        let holder = self.get(key)?.instance;
        if holder == instance {
            return None;
        }
        let mut displaced = self.displaced.write().expect("registry lock poisoned");
        let d = displaced
            .get_mut(key)?
            .iter_mut()
            .find(|d| d.loser == instance)?;
        let first = !d.reported;
        d.reported = true;
        Some(first)
    }

    /// Removes `key` only if it is still registered by `session`.
    pub fn remove(&self, key: &SpaceKey, session: SessionId) -> bool {
        let mut spaces = self.spaces.write().expect("registry lock poisoned");
        if spaces.get(key).is_some_and(|e| e.session == session) {
            spaces.remove(key);
            drop(spaces);
            // No link holds the space any more: whoever comes first may have it.
            self.displaced
                .write()
                .expect("registry lock poisoned")
                .remove(key);
            return true;
        }
        false
    }

    /// The live link of `key`.
    pub fn get(&self, key: &SpaceKey) -> Option<Arc<Entry>> {
        self.spaces
            .read()
            .expect("registry lock poisoned")
            .get(key)
            .cloned()
    }

    /// How many spaces are linked.
    pub fn len(&self) -> usize {
        self.spaces.read().expect("registry lock poisoned").len()
    }

    /// Whether no space is linked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every live entry, for listings and draining.
    pub fn snapshot(&self) -> Vec<(SpaceKey, Arc<Entry>)> {
        self.spaces
            .read()
            .expect("registry lock poisoned")
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}
