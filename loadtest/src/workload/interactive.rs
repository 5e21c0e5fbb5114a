//! `interactive`: keystrokes of 1 to 3 bytes, each timed until its echo is back whole.
//! Through the gateway they travel the SSH websocket route (`/ssh/USER/SPACE`) to an
//! echo server; directly, raw TCP to the same echo server.

use std::collections::VecDeque;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

use super::{Opts, GRACE};
use crate::client::{Io, Via, Ws};
use crate::clock::{now_ns, Deadline};
use crate::spaces::{Space, USER};
use crate::stats::Stats;

/// A terminal: a websocket through the gateway, or a plain connection.
enum Terminal {
    Ws(Box<Ws>, VecDeque<u8>),
    Raw(Box<dyn Io>),
}

impl Terminal {
    async fn open(via: &Via, space: &Space) -> anyhow::Result<Self> {
        match via {
            Via::Direct => Ok(Self::Raw(via.connect("direct", space.sources.echo).await?)),
            Via::Gateway { target, .. } => {
                let path = format!("/ssh/{USER}/{}", space.name);
                let ws = via
                    .websocket(&target.domain, &path, space.sources.echo)
                    .await?;
                Ok(Self::Ws(Box::new(ws), VecDeque::new()))
            }
        }
    }

    async fn send(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        match self {
            Self::Ws(ws, _) => ws.send(Message::Binary(bytes.to_vec().into())).await?,
            Self::Raw(io) => io.write_all(bytes).await?,
        }
        Ok(())
    }

    async fn recv(&mut self, out: &mut [u8]) -> anyhow::Result<()> {
        match self {
            Self::Raw(io) => {
                io.read_exact(out).await?;
            }
            Self::Ws(ws, pending) => {
                while pending.len() < out.len() {
                    match ws.next().await {
                        Some(Ok(Message::Binary(b))) => pending.extend(b.iter()),
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                        other => anyhow::bail!("terminal ended: {other:?}"),
                    }
                }
                let n = out.len();
                for (o, b) in out.iter_mut().zip(pending.drain(..n)) {
                    *o = b;
                }
            }
        }
        Ok(())
    }
}

/// One terminal on `space`, typing `keys_per_sec` keystrokes for the duration.
pub async fn type_keys(opts: Opts, via: Via, space: Space) -> Stats {
    let mut stats = Stats::default();
    let deadline = Deadline::after(opts.duration + GRACE);
    let stop = Deadline::after(opts.duration);
    let mut term = match deadline.run(Terminal::open(&via, &space)).await {
        Some(Ok(t)) => t,
        Some(Err(e)) => {
            stats.error(1, || format!("terminal could not connect: {e:#}"));
            return stats;
        }
        None => {
            stats.error(1, || "terminal could not connect in time".to_owned());
            return stats;
        }
    };
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / opts.keys_per_sec as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut echo = [0u8; 3];
    for n in 0u64.. {
        tick.tick().await;
        if stop.passed() {
            break;
        }
        // 1, 2 or 3 bytes, their values from the keystroke's number.
        let len = 1 + (n % 3) as usize;
        let key: Vec<u8> = (0..len).map(|i| (n as u8).wrapping_add(i as u8)).collect();
        let sent = now_ns();
        let round = async {
            term.send(&key).await?;
            term.recv(&mut echo[..len]).await
        };
        match deadline.run(round).await {
            Some(Ok(())) if echo[..len] == key[..] => {
                stats.record_ns(now_ns() - sent);
                stats.bytes += len as u64;
            }
            Some(Ok(())) => stats.error(1, || format!("keystroke {n} echoed wrong")),
            Some(Err(e)) => {
                stats.error(1, || format!("terminal failed: {e:#}"));
                break;
            }
            None => {
                stats.error(1, || format!("keystroke {n}: no echo by the deadline"));
                break;
            }
        }
    }
    stats
}
