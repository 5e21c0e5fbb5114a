//! `http` (small requests, keep-alive, `concurrency` connections per space) and `bulk`
//! (one large download after another), through `USER--SPACE--PORT.DOMAIN` or directly.

use super::{Opts, GRACE};
use crate::client::{HttpConn, Via};
use crate::clock::{now_ns, Deadline};
use crate::spaces::{Space, USER};
use crate::stats::Stats;

fn host(via: &Via, space: &Space) -> String {
    let port = space.sources.http.port();
    format!("{USER}--{}--{port}.{}", space.name, via.domain())
}

/// `concurrency` keep-alive connections on `space`, each sending one request after
/// another until the duration is over.
pub async fn requests(opts: Opts, via: Via, space: Space) -> Stats {
    let tasks: Vec<_> = (0..opts.concurrency)
        .map(|_| tokio::spawn(request_loop(opts.clone(), via.clone(), space.clone(), "/")))
        .collect();
    let mut all = Stats::default();
    for t in tasks {
        match t.await {
            Ok(s) => all.merge(&s),
            Err(e) => all.error(1, || format!("a client task failed: {e}")),
        }
    }
    all
}

/// Downloads of `bulk_size` bytes, one after another, on one connection.
pub async fn downloads(opts: Opts, via: Via, space: Space) -> Stats {
    let path = format!("/bulk/{}", opts.bulk_size);
    request_loop(opts, via, space, &path).await
}

/// GETs `path` over one keep-alive connection until the duration is over. A request
/// still running at the duration's end may finish within [`GRACE`]; an unfinished one
/// is an error.
async fn request_loop(opts: Opts, via: Via, space: Space, path: &str) -> Stats {
    let mut stats = Stats::default();
    let stop = Deadline::after(opts.duration);
    let deadline = Deadline::after(opts.duration + GRACE);
    let host = host(&via, &space);
    let mut conn = match deadline
        .run(HttpConn::open(&via, &host, space.sources.http))
        .await
    {
        Some(Ok(c)) => c,
        Some(Err(e)) => {
            stats.error(1, || format!("HTTP client could not connect: {e:#}"));
            return stats;
        }
        None => {
            stats.error(1, || "HTTP client could not connect in time".to_owned());
            return stats;
        }
    };
    // Bounded by the clock, and by a count no run reaches (10 s at 100k requests/s).
    for _ in 0..1_000_000u32 {
        if stop.passed() {
            break;
        }
        let sent = now_ns();
        match deadline.run(conn.get(path)).await {
            Some(Ok(len)) => {
                stats.record_ns(now_ns() - sent);
                stats.bytes += len;
            }
            Some(Err(e)) => {
                stats.error(1, || format!("GET {path}: {e:#}"));
                break;
            }
            None => {
                let got = conn.progress();
                stats.error(1, || {
                    format!("GET {path}: not finished by the deadline ({got})")
                });
                break;
            }
        }
    }
    stats
}
