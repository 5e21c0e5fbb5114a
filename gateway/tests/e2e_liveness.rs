//! Links that die without a word, and fleets that lose their gateway: each end notices a
//! silent link within the configured bound (three ping intervals), agents come back when
//! packets flow again, and agents that lost a gateway together return spread out.

// Helpers outside #[test] functions unwrap too: a failure is a failed test. The
// processes under test run on the real clock, so the test measures with it too, and
// prints what it measured.
#![allow(clippy::unwrap_used, clippy::disallowed_methods, clippy::print_stdout)]

mod support;

use std::thread;
use std::time::{Duration, Instant};

use support::{netns, wait_for_registrations, Agent, Gateway, Transport};

/// Three silent ping intervals of one second, plus room for a busy machine.
const NOTICE_LIMIT: Duration = Duration::from_secs(10);

/// Waits until `log()` contains `needle`, at most [`NOTICE_LIMIT`] after `start`;
/// how long after `start` it did.
fn wait_for(what: &str, log: impl Fn() -> String, needle: &str, start: Instant) -> Duration {
    while !log().contains(needle) {
        assert!(
            start.elapsed() < NOTICE_LIMIT,
            "{what} did not log {needle:?} within {NOTICE_LIMIT:?}; log:\n{}",
            log()
        );
        thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

fn a_silent_link_is_noticed_by_both_ends_and_comes_back(transport: Transport) {
    if !netns::inside() {
        let name = format!(
            "a_silent_link_is_noticed_by_both_ends_and_comes_back::{}",
            transport.name()
        );
        return netns::rerun_inside(&name);
    }
    let gw = Gateway::start_quick();
    let agent = Agent::start(
        &gw,
        transport,
        "alice",
        "dev",
        &[("KNOT_HTTP_PORT", "8080".to_owned())],
    );

    // Every packet of the link is dropped: no reset, no error, just silence.
    netns::silence_port(gw.agent_port);
    let cut = Instant::now();
    let gateway_noticed = wait_for(
        "the gateway",
        || gw.log(),
        "space unregistered space=alice--dev",
        cut,
    );
    let agent_noticed = wait_for("the agent", || agent.log(), "no answer to pings", cut);
    println!("silent link noticed: gateway after {gateway_noticed:?}, agent by {agent_noticed:?}");
    let log = gw.log();
    assert!(log.contains("no pong for"), "log:\n{log}");
    // A cut network is not taken for a full window: nothing came from the agent.
    assert!(!log.contains("packets kept coming"), "log:\n{log}");

    // Packets flow again: the agent is back by itself.
    netns::restore();
    wait_for_registrations(&gw, "alice", "dev", transport, 2, Duration::from_secs(40));
}

on_both_transports!(a_silent_link_is_noticed_by_both_ends_and_comes_back);

/// Seconds since midnight of a log line's RFC 3339 timestamp.
fn log_time(line: &str) -> f64 {
    let hms = line
        .get(11..26)
        .unwrap_or_else(|| panic!("no timestamp: {line}"));
    let parts: Vec<f64> = hms.split(':').map(|p| p.parse().unwrap()).collect();
    parts[0] * 3600.0 + parts[1] * 60.0 + parts[2]
}

#[test]
fn fifty_agents_return_to_a_restarted_gateway_spread_out() {
    const AGENTS: usize = 50;
    let registered = |gw: &Gateway| -> Vec<f64> {
        gw.log()
            .lines()
            .filter(|l| l.contains("space registered"))
            .map(log_time)
            .collect()
    };
    let mut gw = Gateway::start_quick();
    let _agents: Vec<Agent> = (0..AGENTS)
        .map(|i| {
            let transport = if i % 2 == 0 { "quic" } else { "tcp" };
            let env = [
                ("KNOT_HTTP_PORT", "8080".to_owned()),
                ("KNOT_AGENT_TRANSPORT", transport.to_owned()),
            ];
            Agent::spawn(&gw, &gw.agent_token("fleet", &format!("s{i}")), &env)
        })
        .collect();
    let wait_registered = |gw: &Gateway, count: usize, limit: Duration| {
        let start = Instant::now();
        while registered(gw).len() < count {
            assert!(
                start.elapsed() < limit,
                "{} of {count} registrations within {limit:?}; log:\n{}",
                registered(gw).len(),
                gw.log()
            );
            thread::sleep(Duration::from_millis(20));
        }
        start.elapsed()
    };
    wait_registered(&gw, AGENTS, Duration::from_secs(60));

    // The gateway dies without a word and is back two seconds later.
    gw.kill();
    thread::sleep(Duration::from_secs(2));
    gw.restart();
    let back = wait_registered(&gw, 2 * AGENTS, Duration::from_secs(60));

    let mut times = registered(&gw)[AGENTS..].to_vec();
    times.sort_by(f64::total_cmp);
    let spread = times[AGENTS - 1] - times[0];
    let busiest = times
        .iter()
        .map(|t| times.iter().filter(|u| (*u - t).abs() < 0.05).count())
        .max()
        .unwrap();
    println!(
        "all {AGENTS} back {back:?} after the restart; spread {spread:.2} s; \
         at most {busiest} within any 100 ms"
    );
    assert!(
        spread >= 0.5,
        "the agents came back within {spread:.2} s of each other: no jitter"
    );
    assert!(
        busiest <= AGENTS / 2,
        "{busiest} of {AGENTS} agents came back within 100 ms of each other"
    );
}

/// A QUIC agent whose gateway restarted hears so at its next packet: the gateway keeps
/// its stateless-reset key in the data directory, so it can answer a link it no longer
/// knows with a reset the agent trusts, and the agent does not wait for its pings to go
/// unanswered.
#[test]
fn a_quic_agent_is_told_at_once_that_a_restarted_gateway_lost_its_link() {
    let mut gw = Gateway::start();
    let agent = Agent::start(
        &gw,
        Transport::Quic,
        "alice",
        "dev",
        &[("KNOT_HTTP_PORT", "8080".to_owned())],
    );
    gw.kill();
    gw.restart();
    wait_for_registrations(
        &gw,
        "alice",
        "dev",
        Transport::Quic,
        2,
        Duration::from_secs(40),
    );
    let log = agent.log();
    let down: Vec<&str> = log.lines().filter(|l| l.contains("link down")).collect();
    assert_eq!(down.len(), 1, "agent log:\n{log}");
    assert!(down[0].contains("reset by peer"), "agent log:\n{log}");
}

/// An agent stopped with SIGTERM (the scheduler stopping its space) closes its link, so
/// the gateway forgets the space at once: users are told it is not connected instead of
/// waiting for the silent-link limit, and a restarted agent is not kept out by the old
/// link.
fn a_stopped_agent_closes_its_link(transport: Transport) {
    let gw = Gateway::start();
    let mut agent = Agent::start(
        &gw,
        transport,
        "alice",
        "dev",
        &[("KNOT_HTTP_PORT", "8080".to_owned())],
    );
    agent.signal("TERM");
    assert_eq!(
        agent.wait_exit(Duration::from_secs(10)),
        Some(0),
        "{}",
        agent.log()
    );
    assert!(
        agent.log().contains("stopping: closing the link"),
        "{}",
        agent.log()
    );
    let log = gw.wait_for_log("space unregistered space=alice--dev", 1);
    let line = log
        .lines()
        .find(|l| l.contains("space unregistered space=alice--dev"))
        .unwrap();
    // Not noticed by silence: three default ping intervals would be 15 s.
    assert!(!line.contains("no pong"), "{line}");
}

on_both_transports!(a_stopped_agent_closes_its_link);
