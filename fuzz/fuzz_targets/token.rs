//! Token checks on arbitrary strings, and on arbitrary claims signed with the
//! deployment's key.
//!
//! A stranger cannot sign, so the input is used twice: as the token text itself (which
//! reaches the JWT header, base64 and signature checks, and must never be accepted),
//! and, when it is JSON, as claims that the fuzz key signs (which reaches the claim
//! checks: audience, times, and the typed claims of each audience).

#![no_main]

use std::sync::OnceLock;

use gateway::auth::{Minter, Verifier, ADMIN_AUDIENCE, AGENT_AUDIENCE, USER_AUDIENCE};
use gateway::keys::SigningKey;
use libfuzzer_sys::fuzz_target;

/// Generating a key takes far longer than one check, so one key serves every run.
fn keys() -> &'static (Minter, Verifier) {
    static KEYS: OnceLock<(Minter, Verifier)> = OnceLock::new();
    KEYS.get_or_init(|| {
        let key = SigningKey::generate().expect("Ed25519 key generation works");
        let verifier = Verifier::new(&key.verifying_key());
        (Minter::new(key), verifier)
    })
}

fuzz_target!(|data: &[u8]| {
    let (minter, verifier) = keys();

    // 1. The raw text: nothing a stranger writes carries this key's signature.
    let text = String::from_utf8_lossy(data);
    assert!(verifier.user(&text).is_err(), "forged user token accepted");
    assert!(
        verifier.agent(&text).is_err(),
        "forged agent token accepted"
    );
    assert!(
        verifier.admin(&text).is_err(),
        "forged admin token accepted"
    );

    // 2. Signed claims: whatever is accepted carries the audience asked for.
    let Ok(claims) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let token = minter.sign(&claims);
    if let Ok(user) = verifier.user(&token) {
        assert_eq!(user.aud, USER_AUDIENCE);
    }
    if let Ok(agent) = verifier.agent(&token) {
        assert_eq!(agent.aud, AGENT_AUDIENCE);
    }
    if let Ok(admin) = verifier.admin(&token) {
        assert_eq!(admin.aud, ADMIN_AUDIENCE);
    }
});
