//! The JSON that `GET /status` answers: the link's state and what this agent offers.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::status::LinkState;
use crate::proto::Service;

/// What does not change while the agent runs.
#[derive(Debug, Clone)]
pub(super) struct AgentFacts {
    /// The gateway endpoint as configured (`HOST:PORT`).
    pub(super) endpoint: String,
    /// The services offered in `Hello`.
    pub(super) services: Vec<Service>,
}

#[derive(Debug, Serialize)]
struct StatusReport<'a> {
    connected: bool,
    transport: Option<&'static str>,
    endpoint: &'a str,
    gateway_addr: Option<String>,
    session: Option<u64>,
    connected_since: Option<String>,
    reconnects: u64,
    last_error: Option<&'a str>,
    services: Vec<ServiceReport<'a>>,
    version: &'static str,
}

#[derive(Debug, Serialize)]
struct ServiceReport<'a> {
    name: &'a str,
    port: u16,
    kind: &'static str,
    public: bool,
}

/// The `/status` body: one JSON object, keys documented in docs/configuration.md.
pub(super) fn status_json(state: &LinkState, facts: &AgentFacts) -> String {
    let up = state.up.as_ref();
    let report = StatusReport {
        connected: up.is_some(),
        transport: up.map(|u| u.transport.as_str()),
        endpoint: &facts.endpoint,
        gateway_addr: up.map(|u| u.gateway.to_string()),
        session: up.map(|u| u.session),
        connected_since: up.map(|u| rfc3339(u.since)),
        reconnects: state.reconnects(),
        last_error: state.last_error.as_deref(),
        services: facts.services.iter().map(service_report).collect(),
        version: env!("CARGO_PKG_VERSION"),
    };
    // Serializing plain strings, numbers and options cannot fail.
    serde_json::to_string_pretty(&report).unwrap_or_default()
}

fn service_report(s: &Service) -> ServiceReport<'_> {
    ServiceReport {
        name: &s.name,
        port: s.port,
        kind: s.kind.as_str(),
        public: s.public,
    }
}

/// `time` as RFC 3339 in UTC to the second, e.g. `2024-05-01T12:00:00Z`.
fn rfc3339(time: SystemTime) -> String {
    let secs = time
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    let (hh, mm, ss) = (rem / 3600, rem % 3600 / 60, rem % 60);
    format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}Z")
}

/// The proleptic Gregorian date of a day count since 1970-01-01, by Howard Hinnant's
/// `civil_from_days` (eras of 400 years, years starting in March so that the leap day
/// comes last).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use super::*;
    use crate::agent::status::LinkUp;
    use crate::proto::ServiceKind;
    use crate::transport::TransportKind;

    #[test]
    fn rfc3339_dates_across_leap_years() {
        let at = |secs| rfc3339(UNIX_EPOCH + Duration::from_secs(secs));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_709_251_199), "2024-02-29T23:59:59Z");
        assert_eq!(at(4_102_444_800), "2100-01-01T00:00:00Z");
    }

    #[test]
    fn status_shows_the_link_and_the_services() {
        let facts = AgentFacts {
            endpoint: "gw.example:7443".into(),
            services: vec![Service {
                name: "ssh".into(),
                port: 22,
                kind: ServiceKind::Tcp,
                public: false,
            }],
        };
        let state = LinkState {
            up: Some(LinkUp {
                transport: TransportKind::Quic,
                gateway: SocketAddr::from(([192, 0, 2, 1], 7443)),
                session: 9,
                since: UNIX_EPOCH,
            }),
            registrations: 3,
            last_error: None,
        };
        let json: serde_json::Value = serde_json::from_str(&status_json(&state, &facts)).unwrap();
        assert_eq!(json["connected"], true);
        assert_eq!(json["transport"], "quic");
        assert_eq!(json["gateway_addr"], "192.0.2.1:7443");
        assert_eq!(json["connected_since"], "1970-01-01T00:00:00Z");
        assert_eq!(json["reconnects"], 2);
        assert_eq!(json["services"][0]["kind"], "tcp");
        assert_eq!(json["version"], env!("CARGO_PKG_VERSION"));
    }

    #[test]
    fn status_while_down_says_why() {
        let facts = AgentFacts {
            endpoint: "gw.example:7443".into(),
            services: Vec::new(),
        };
        let state = LinkState {
            up: None,
            registrations: 1,
            last_error: Some("link closed".into()),
        };
        let json: serde_json::Value = serde_json::from_str(&status_json(&state, &facts)).unwrap();
        assert_eq!(json["connected"], false);
        assert_eq!(json["transport"], serde_json::Value::Null);
        assert_eq!(json["last_error"], "link closed");
    }
}
