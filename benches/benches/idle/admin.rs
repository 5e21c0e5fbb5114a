//! The gateway's admin listener, polled for `/metrics`.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{sleep, timeout, Instant};

/// The metric counted to know that the links are up, as `loadtest` counts it.
const REGISTERED: &str = "gateway_registrations_total{result=\"ok\"}";

/// Waits until the gateway's admin listener at `admin` answers `/metrics`; returns it.
pub async fn wait_up(admin: SocketAddr) -> SocketAddr {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !get(admin, "/metrics")
        .await
        .is_ok_and(|body| body.contains(REGISTERED))
    {
        assert!(
            Instant::now() < deadline,
            "the admin listener {admin} never answered"
        );
        sleep(Duration::from_millis(100)).await;
    }
    admin
}

/// Successful registrations since the gateway started.
pub async fn registrations(admin: SocketAddr) -> u64 {
    let text = get(admin, "/metrics").await.unwrap();
    let total: f64 = text
        .lines()
        .filter(|l| l.starts_with(REGISTERED))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    total as u64
}

/// Waits until `want` registrations have succeeded, polling every 20 ms; the time taken.
pub async fn wait_registered(admin: SocketAddr, want: u64, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let done = registrations(admin).await;
        if done >= want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "only {done} of {want} registrations within {limit:?}"
        );
        sleep(Duration::from_millis(20)).await;
    }
}

/// A plain HTTP/1.0 GET; the body.
async fn get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let fetch = async {
        let mut tcp = tokio::net::TcpStream::connect(addr).await?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: admin\r\n\r\n");
        tcp.write_all(request.as_bytes()).await?;
        let mut text = Vec::new();
        tcp.read_to_end(&mut text).await?;
        std::io::Result::Ok(String::from_utf8_lossy(&text).into_owned())
    };
    let text = timeout(Duration::from_secs(2), fetch).await??;
    let body = text.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    Ok(body.to_owned())
}
