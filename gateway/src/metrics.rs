//! What operators scrape from `/metrics`, in the Prometheus text format (the
//! `prometheus` crate, without its protobuf support).

use std::time::Duration;

use prometheus::{
    exponential_buckets, Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every metric of one gateway process.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Live agent links, by `transport`.
    pub links: IntGaugeVec,
    /// Registration attempts, by `result` (`ok` or the rejection's reason).
    pub registrations: IntCounterVec,
    /// Streams opened towards spaces, by `route` and `outcome`.
    pub streams: IntCounterVec,
    /// Time from a user's request to the agent's answer on a new stream.
    pub stream_open_seconds: Histogram,
    /// Round-trip time of agent links, as pings measure it.
    pub rtt_seconds: Histogram,
    /// Links replaced by a newer link of the same space.
    pub links_replaced: IntCounter,
    /// Links told to go away because the gateway is draining.
    pub links_drained: IntCounter,
    /// Front-door connections past `public.max_connections`, answered 503 or closed.
    pub connections_refused: IntCounter,
    /// Front-door connections open, TLS handshakes included.
    pub connections: IntGauge,
    /// `relayed_bytes_total{direction="to_space"}`, held so that the relay's hot path
    /// is one atomic add.
    pub to_space: IntCounter,
    /// `relayed_bytes_total{direction="from_space"}`.
    pub from_space: IntCounter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every metric at zero, named `gateway_*`.
    pub fn new() -> Self {
        let registry = Registry::new();
        let opts = |name: &str, help: &str| Opts::new(name, help).namespace("gateway");
        // 100 µs to about 13 s: a stream open on loopback takes well under a
        // millisecond; a space across an ocean, a few hundred.
        let buckets = || exponential_buckets(0.0001, 2.0, 18).expect("valid bucket parameters");
        let histogram = |name: &str, help: &str| {
            Histogram::with_opts(
                HistogramOpts::new(name, help)
                    .namespace("gateway")
                    .buckets(buckets()),
            )
            .expect("valid histogram options")
        };
        let bytes = IntCounterVec::new(
            opts(
                "relayed_bytes_total",
                "Bytes relayed between users and spaces",
            ),
            &["direction"],
        )
        .expect("valid metric options");
        let m = Self {
            links: IntGaugeVec::new(opts("links", "Live agent links"), &["transport"])
                .expect("valid metric options"),
            registrations: IntCounterVec::new(
                opts(
                    "registrations_total",
                    "Agent registration attempts by result",
                ),
                &["result"],
            )
            .expect("valid metric options"),
            streams: IntCounterVec::new(
                opts(
                    "streams_total",
                    "Streams opened towards spaces by route and outcome",
                ),
                &["route", "outcome"],
            )
            .expect("valid metric options"),
            stream_open_seconds: histogram(
                "stream_open_seconds",
                "Time to open a stream to a space and get the agent's answer",
            ),
            rtt_seconds: histogram("link_rtt_seconds", "Round-trip time of agent links"),
            links_replaced: IntCounter::with_opts(opts(
                "links_replaced_total",
                "Links replaced by a newer link of the same space",
            ))
            .expect("valid metric options"),
            links_drained: IntCounter::with_opts(opts(
                "links_drained_total",
                "Links told to go away because the gateway drains",
            ))
            .expect("valid metric options"),
            connections: IntGauge::with_opts(opts(
                "connections",
                "Front-door connections open, TLS handshakes included",
            ))
            .expect("valid metric options"),
            connections_refused: IntCounter::with_opts(opts(
                "connections_refused_total",
                "Front-door connections refused at the connection limit",
            ))
            .expect("valid metric options"),
            to_space: bytes.with_label_values(&["to_space"]),
            from_space: bytes.with_label_values(&["from_space"]),
            registry,
        };
        // Series that exist from the start, so that dashboards see zeros, not gaps.
        for transport in ["quic", "tcp"] {
            m.links.with_label_values(&[transport]);
        }
        m.registrations.with_label_values(&["ok"]);
        let collectors: [Box<dyn prometheus::core::Collector>; 7] = [
            Box::new(m.links.clone()),
            Box::new(m.registrations.clone()),
            Box::new(m.streams.clone()),
            Box::new(bytes),
            Box::new(m.stream_open_seconds.clone()),
            Box::new(m.rtt_seconds.clone()),
            Box::new(m.links_replaced.clone()),
        ];
        for c in collectors {
            m.registry.register(c).expect("metric names are unique");
        }
        for c in [m.links_drained.clone(), m.connections_refused.clone()] {
            m.registry
                .register(Box::new(c))
                .expect("metric names are unique");
        }
        m.registry
            .register(Box::new(m.connections.clone()))
            .expect("metric names are unique");
        m
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("writing to a Vec cannot fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }

    /// Counts one stream open attempt.
    pub fn stream(&self, route: &'static str, outcome: &'static str, took: Duration) {
        self.streams.with_label_values(&[route, outcome]).inc();
        if outcome == "ok" {
            self.stream_open_seconds.observe(took.as_secs_f64());
        }
    }

    /// A registration with `result` (`ok` or a rejection reason).
    pub fn registration(&self, result: &str) {
        self.registrations.with_label_values(&[result]).inc();
    }

    /// A link on `transport` came (`+1`) or went (`-1`).
    pub fn link(&self, transport: &str, delta: i64) {
        self.links.with_label_values(&[transport]).add(delta);
    }

    /// Counts relayed bytes.
    pub fn relayed(&self, to_space: u64, from_space: u64) {
        self.to_space.inc_by(to_space);
        self.from_space.inc_by(from_space);
    }
}
