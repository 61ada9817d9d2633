//! The WebSocket client-message parser the sessions call (`protocol::parse_text`
//! for text frames, `parse_binary` for Protocol Buffers ones) reads whatever any
//! client sends: it must answer every input, never panic, and every refusal must be
//! a sentence.
#![no_main]

use libfuzzer_sys::fuzz_target;
use maicivy_analytics::protocol::{parse_binary, parse_text};

fuzz_target!(|data: &[u8]| {
    if let Err(sentence) = parse_binary(data) {
        assert!(sentence.ends_with('.'), "{sentence:?}");
        assert!(sentence.len() < 1024, "{} bytes", sentence.len());
    }
    // Text frames reach it only as valid UTF-8 (yawc checks them).
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(sentence) = parse_text(text) {
        assert!(sentence.ends_with('.'), "{sentence:?}");
        // The echoed type is truncated to 60 characters (each escaped to at most
        // 10 bytes, `\u{10ffff}`): an error stays small whatever the input.
        assert!(sentence.len() < 1024, "{} bytes", sentence.len());
    }
});
