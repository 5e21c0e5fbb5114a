//! The live heap of the whole process: gateway, agents and this harness.
//!
//! By default `stats_alloc` counts (its `unsafe impl GlobalAlloc` lives in that crate:
//! the workspace's `unsafe_code = "forbid"` cannot be allowed again in a bench), and a
//! window is the difference of two snapshots. With `--features dhat-heap`, `dhat`
//! records a full backtrace for every allocation made during the window and writes
//! `target/dhat/idle-TRANSPORT.json`; the live heap at the window's end is then that of
//! the blocks allocated during the window, which are still live.

/// Bytes and blocks live on the heap.
#[derive(Debug, Clone, Copy, Default)]
pub struct Live {
    pub bytes: i64,
    pub blocks: i64,
}

impl std::ops::Sub for Live {
    type Output = Live;

    fn sub(self, rhs: Live) -> Live {
        Live {
            bytes: self.bytes - rhs.bytes,
            blocks: self.blocks - rhs.blocks,
        }
    }
}

#[cfg(not(feature = "dhat-heap"))]
#[global_allocator]
static GLOBAL: &stats_alloc::StatsAlloc<std::alloc::System> = &stats_alloc::INSTRUMENTED_SYSTEM;

#[cfg(feature = "dhat-heap")]
#[global_allocator]
static GLOBAL: dhat::Alloc = dhat::Alloc;

/// The heap from a window's start.
#[derive(Debug)]
pub struct Window {
    pub before: Live,
    #[cfg(feature = "dhat-heap")]
    profiler: dhat::Profiler,
}

#[cfg(not(feature = "dhat-heap"))]
fn live() -> Live {
    let stats = GLOBAL.stats();
    Live {
        bytes: stats.bytes_allocated as i64 - stats.bytes_deallocated as i64,
        blocks: stats.allocations as i64 - stats.deallocations as i64,
    }
}

#[cfg(not(feature = "dhat-heap"))]
impl Window {
    pub fn start(_transport: &str) -> Self {
        Self { before: live() }
    }

    /// The live heap now.
    pub fn finish(self) -> Live {
        live()
    }
}

#[cfg(feature = "dhat-heap")]
impl Window {
    pub fn start(transport: &str) -> Self {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/dhat");
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join(format!("idle-{transport}.json"));
        // Untrimmed backtraces: the bottom frames name the thread (gateway or agents)
        // that allocated.
        let profiler = dhat::Profiler::builder()
            .file_name(file)
            .trim_backtraces(None)
            .build();
        Self {
            before: Live::default(),
            profiler,
        }
    }

    /// The live blocks allocated since the start; writes the profile.
    pub fn finish(self) -> Live {
        let stats = dhat::HeapStats::get();
        drop(self.profiler);
        Live {
            bytes: stats.curr_bytes as i64,
            blocks: stats.curr_blocks as i64,
        }
    }
}
