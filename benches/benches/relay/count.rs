//! Heap allocations per relayed frame, counted by the global allocator over the whole
//! process: client, gateway, agents and source.
//!
//! By default `stats_alloc` counts. Its `unsafe impl GlobalAlloc` lives in that crate:
//! the workspace's `unsafe_code = "forbid"` cannot be allowed again in a bench. With
//! `--features dhat-heap`, `dhat` records a backtrace for every allocation instead, and
//! writes one profile per case to `target/dhat/` for DHAT's viewer (`dh_view.html`,
//! in valgrind). Its global lock makes every allocation slow: the times measured with
//! it on are not the relay's.

use crate::echo::Echo;
use crate::{COUNTED_FRAMES, WARM_UP_FRAMES};

#[cfg(not(feature = "dhat-heap"))]
#[global_allocator]
static GLOBAL: &stats_alloc::StatsAlloc<std::alloc::System> = &stats_alloc::INSTRUMENTED_SYSTEM;

#[cfg(feature = "dhat-heap")]
#[global_allocator]
static GLOBAL: dhat::Alloc = dhat::Alloc;

/// Allocations (reallocations included) and allocated bytes per frame.
pub struct Count {
    pub allocations: f64,
    pub bytes: usize,
}

/// Relays `WARM_UP_FRAMES` frames, then counts the allocations of `COUNTED_FRAMES`
/// more. Background work (pings, QUIC acknowledgements and timers) counts too; over
/// a few hundred frames it is a small part.
pub async fn count_allocations(echo: &mut Echo, frame: &[u8], case: &str) -> Count {
    for _ in 0..WARM_UP_FRAMES {
        echo.round_trip(frame).await;
    }
    let counter = Counter::start(case);
    for _ in 0..COUNTED_FRAMES {
        echo.round_trip(frame).await;
    }
    let (allocations, bytes) = counter.stop();
    assert_eq!(
        &echo.buf[..frame.len()],
        frame,
        "the echo differs from the frame"
    );
    Count {
        allocations: allocations as f64 / COUNTED_FRAMES as f64,
        bytes: bytes / COUNTED_FRAMES,
    }
}

#[cfg(not(feature = "dhat-heap"))]
struct Counter(stats_alloc::Region<'static, std::alloc::System>);

#[cfg(not(feature = "dhat-heap"))]
impl Counter {
    fn start(_case: &str) -> Self {
        Self(stats_alloc::Region::new(GLOBAL))
    }

    fn stop(self) -> (usize, usize) {
        let change = self.0.change();
        (
            change.allocations + change.reallocations,
            change.bytes_allocated,
        )
    }
}

#[cfg(feature = "dhat-heap")]
struct Counter(dhat::Profiler);

#[cfg(feature = "dhat-heap")]
impl Counter {
    fn start(case: &str) -> Self {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/dhat");
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join(format!("relay-{case}.json"));
        Self(dhat::Profiler::builder().file_name(file).build())
    }

    fn stop(self) -> (usize, usize) {
        let stats = dhat::HeapStats::get();
        drop(self.0);
        (stats.total_blocks as usize, stats.total_bytes as usize)
    }
}
