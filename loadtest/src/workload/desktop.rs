//! `desktop`: a viewer asks its space's desktop source for `fps × duration` frames and
//! times each from the moment the source wrote it to the moment the viewer has it whole.

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use super::{Opts, GRACE};
use crate::client::Via;
use crate::clock::{now_ns, Deadline};
use crate::frame;
use crate::sources::FrameRequest;
use crate::spaces::{Space, USER};
use crate::stats::Stats;

/// One viewer on `space`'s desktop.
pub async fn view(opts: Opts, via: Via, space: Space) -> Stats {
    let mut stats = Stats::default();
    let count = (opts.fps as f64 * opts.duration.as_secs_f64()).ceil() as u64;
    let deadline = Deadline::after(opts.duration + GRACE);
    let host = format!("{USER}--{}--vnc.{}", space.name, via.domain());
    let ws = deadline
        .run(via.websocket(&host, "/websockify", space.sources.desktop))
        .await;
    let mut ws = match ws {
        Some(Ok(ws)) => ws,
        Some(Err(e)) => {
            stats.error(count, || format!("viewer could not connect: {e:#}"));
            return stats;
        }
        None => {
            stats.error(count, || "viewer could not connect in time".to_owned());
            return stats;
        }
    };
    let ask = FrameRequest {
        fps: opts.fps,
        size: opts.frame_size,
        count,
    };
    if let Err(e) = ws.send(Message::Binary(ask.encode().into())).await {
        stats.error(count, || format!("viewer could not ask for frames: {e}"));
        return stats;
    }

    // Frames arrive in order on one websocket: one that comes before the next expected
    // sequence number is a duplicate, one past it means the ones between are missing.
    let mut next = 0u64;
    while next < count {
        let msg = match deadline.run(ws.next()).await {
            Some(Some(Ok(msg))) => msg,
            Some(Some(Err(e))) => {
                stats.error(1, || format!("viewer connection failed: {e}"));
                break;
            }
            // The source closed, or the deadline came: what is left is missing.
            Some(None) | None => break,
        };
        let bytes = match msg {
            Message::Binary(b) => b,
            Message::Close(_) => break,
            _ => continue,
        };
        let arrived = now_ns();
        match frame::check(&bytes, opts.frame_size as usize) {
            Ok(got) if got.seq < next => stats.error(1, || format!("frame {} twice", got.seq)),
            Ok(got) if got.seq >= count => stats.error(1, || format!("frame {} unasked", got.seq)),
            Ok(got) => {
                stats.error(got.seq - next, || {
                    format!("frames {next}..{} missing", got.seq)
                });
                stats.record_ns(arrived.saturating_sub(got.sent_ns));
                stats.bytes += bytes.len() as u64;
                next = got.seq + 1;
            }
            Err(e) => {
                // Counted here, and taken to hold the next number, so not again as missing.
                stats.error(1, || e);
                next += 1;
            }
        }
    }
    stats.error(count - next, || {
        format!(
            "{} of {count} frames never arrived (by the deadline)",
            count - next
        )
    });
    let _ = ws.close(None).await;
    stats
}
