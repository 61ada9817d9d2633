//! The ingestion body parser reads whatever anyone POSTs: it must answer every
//! input, never panic, and only let through what the contract allows.
#![no_main]

use libfuzzer_sys::fuzz_target;
use maicivy_analytics::domain::RESERVED_EVENT_TYPES;
use maicivy_analytics::event_body::{self, MAX_PAGE_URL};

fuzz_target!(|data: &[u8]| {
    match event_body::parse(data) {
        Ok(body) => {
            let t = body.event_type.as_str();
            assert!((1..=50).contains(&t.len()));
            assert!(
                t.chars()
                    .all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_' | '-' | '.' | ':'))
            );
            assert!(!RESERVED_EVENT_TYPES.contains(&t));
            assert!(body.page_url.is_none_or(|u| u.chars().count() <= MAX_PAGE_URL && !u.contains('\0')));
        }
        Err(sentence) => assert!(sentence.ends_with('.'), "{sentence:?}"),
    }
});
