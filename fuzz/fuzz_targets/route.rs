//! Routing by host and path. The first byte says where the host ends; the rest is
//! split there and read as lossy UTF-8, as a header value could be. Routing must never
//! panic, and a space it names must be one the registry could hold.

#![no_main]

use gateway::front::route::{route, Route};
use gateway::registry::SpaceKey;
use libfuzzer_sys::fuzz_target;

const DOMAIN: &str = "gateway.localhost";

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let (host, path) = rest.split_at(usize::from(split).min(rest.len()));
    let host = String::from_utf8_lossy(host);
    let path = String::from_utf8_lossy(path);
    if let Ok(found) = route(Some(&host), &path, DOMAIN) {
        check(&found);
    }
});

fn check(found: &Route) {
    let space = match found {
        Route::Port { space, port } | Route::Tcp { space, port } => {
            assert_ne!(*port, 0, "{found:?}");
            space
        }
        Route::Vnc { space } | Route::Ssh { space } => space,
    };
    valid(space);
}

fn valid(space: &SpaceKey) {
    for name in [&space.user, &space.space] {
        assert!(!name.is_empty() && name.len() <= 63, "{space:?}");
        assert!(!name.contains("--"), "{space:?}");
        assert!(!name.starts_with('-') && !name.ends_with('-'), "{space:?}");
        assert!(
            name.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'),
            "{space:?}"
        );
    }
}
