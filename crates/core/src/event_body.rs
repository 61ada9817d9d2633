//! The event body of `POST /api/v1/analytics/event` (CONTRACT.md), parsed and
//! validated without any I/O, so that it can be fuzzed and property-tested. The
//! HTTP layer adds what needs the request (the cookie, the cookieless id).

use serde_json::{Map, Value};

use crate::domain::{EventType, VisitorId};

/// Longest `page_url` accepted, in characters: maicivy's column is `VARCHAR(500)`,
/// and a longer value would make the database refuse the whole batch.
pub const MAX_PAGE_URL: usize = 500;

/// A valid event body.
#[derive(Debug, Clone, PartialEq)]
pub struct EventBody {
    pub event_type: EventType,
    /// Always an object (absent or `null` becomes `{}`).
    pub event_data: Map<String, Value>,
    pub page_url: Option<String>,
    /// `None`: the body named no visitor; the HTTP layer finds one.
    pub visitor_id: Option<VisitorId>,
}

/// PostgreSQL cannot store the NUL character in text or JSONB (SQLite would, and
/// the two stores must accept the same events): refused here, before it can fail a
/// whole batch of other clients' events.
const NUL_REFUSED: &str = "{field} contains the NUL character (\\u0000), which cannot be stored.";

fn has_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(has_nul),
        Value::Object(m) => m.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

fn has_float(v: &Value) -> bool {
    match v {
        Value::Number(n) => n.is_f64(),
        Value::Array(items) => items.iter().any(has_float),
        Value::Object(m) => m.values().any(has_float),
        _ => false,
    }
}

/// The first integer literal in the value of the body's top-level `event_data` that
/// fits neither `i64` nor `u64`. serde_json reads such a literal as the nearest
/// `f64` (`18446744073709551616` becomes `1.8446744073709552e19`), so it would be
/// stored as another number; a literal with a fraction or an exponent is a float
/// by the client's own choice and is kept as one.
///
/// `json` must be valid JSON (it is scanned after serde_json has read it), so a
/// small lexer suffices: strings are skipped whole (keys included, escapes
/// understood), and a number is every character from a `-` or a digit on that can
/// belong to one.
fn inexact_integer(json: &[u8]) -> Option<&str> {
    let mut depth = 0usize;
    // At depth 1: whether the next string is a key, and whether the value being
    // read belongs to `event_data`.
    let mut expect_key = false;
    let mut key_is_event_data = false;
    let mut in_event_data = false;
    let mut i = 0;
    while i < json.len() {
        match json[i] {
            b'"' => {
                let end = string_end(json, i);
                if depth == 1 && expect_key {
                    key_is_event_data = is_event_data_key(&json[i..end]);
                }
                i = end;
                continue;
            }
            b'{' | b'[' => {
                depth += 1;
                if depth == 1 {
                    expect_key = true;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            b':' if depth == 1 => {
                expect_key = false;
                in_event_data = key_is_event_data;
            }
            b',' if depth == 1 => {
                expect_key = true;
                in_event_data = false;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < json.len()
                    && matches!(json[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                {
                    i += 1;
                }
                let literal = std::str::from_utf8(&json[start..i]).unwrap_or("");
                let integer = !literal.contains(['.', 'e', 'E']);
                if in_event_data
                    && integer
                    && literal.parse::<i64>().is_err()
                    && literal.parse::<u64>().is_err()
                {
                    return Some(literal);
                }
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// The index just past the string that opens at `json[open]` (a `"`).
fn string_end(json: &[u8], open: usize) -> usize {
    let mut j = open + 1;
    while j < json.len() {
        match json[j] {
            b'\\' => j += 2,
            b'"' => return j + 1,
            _ => j += 1,
        }
    }
    json.len()
}

/// Whether a key, quotes included, is `event_data` once its escapes are read
/// (`"event\u005fdata"` is the same key to serde_json).
fn is_event_data_key(quoted: &[u8]) -> bool {
    if quoted.contains(&b'\\') {
        serde_json::from_slice::<String>(quoted).is_ok_and(|k| k == "event_data")
    } else {
        quoted == b"\"event_data\""
    }
}

fn inexact_integer_refused(literal: &str) -> String {
    const SHOWN: usize = 40;
    let shown = if literal.len() > SHOWN {
        format!("{}…", &literal[..SHOWN])
    } else {
        literal.to_owned()
    };
    format!(
        "event_data holds the whole number {shown}, which cannot be stored exactly: whole \
         numbers must lie between {} and {}; send a larger one as a string.",
        i64::MIN,
        u64::MAX
    )
}

/// Parses a body; the error is a sentence for the client (a 400). Unknown fields
/// are ignored.
pub fn parse(bytes: &[u8]) -> Result<EventBody, String> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| {
        format!(
            "The body is not valid JSON ({} at line {}, column {}).",
            match e.classify() {
                serde_json::error::Category::Eof => "it ends too early",
                serde_json::error::Category::Syntax => "syntax error",
                _ => "unexpected data",
            },
            e.line(),
            e.column()
        )
    })?;
    let Value::Object(mut fields) = value else {
        return Err(
            "The body must be a JSON object such as {\"event_type\":\"page_view\"}.".into(),
        );
    };
    let event_type = match fields.remove("event_type") {
        Some(Value::String(s)) => EventType::parse(&s)?,
        None | Some(Value::Null) => return Err("event_type is required.".into()),
        Some(_) => return Err("event_type must be a string.".into()),
    };
    let event_data = match fields.remove("event_data") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m,
        Some(_) => return Err("event_data must be a JSON object.".into()),
    };
    if event_data
        .iter()
        .any(|(k, v)| k.contains('\0') || has_nul(v))
    {
        return Err(NUL_REFUSED.replace("{field}", "event_data"));
    }
    // Only a float can have been such an integer: most bodies skip the scan.
    if event_data.values().any(has_float)
        && let Some(literal) = inexact_integer(bytes)
    {
        return Err(inexact_integer_refused(literal));
    }
    let page_url = match fields.remove("page_url") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.contains('\0') => {
            return Err(NUL_REFUSED.replace("{field}", "page_url"));
        }
        Some(Value::String(s)) if s.chars().count() <= MAX_PAGE_URL => Some(s),
        Some(Value::String(_)) => {
            return Err(format!(
                "page_url is longer than {MAX_PAGE_URL} characters."
            ));
        }
        Some(_) => return Err("page_url must be a string.".into()),
    };
    let visitor_id = match fields.remove("visitor_id") {
        Some(Value::String(s)) => Some(VisitorId::parse(&s)?),
        None | Some(Value::Null) => None,
        Some(_) => return Err("visitor_id must be a UUID string.".into()),
    };
    Ok(EventBody {
        event_type,
        event_data,
        page_url,
        visitor_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::RESERVED_EVENT_TYPES;
    use proptest::prelude::*;
    use serde_json::json;

    fn is_valid_event_type(s: &str) -> bool {
        (1..=EventType::MAX_LEN).contains(&s.len())
            && s.chars()
                .all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_' | '-' | '.' | ':'))
            && !RESERVED_EVENT_TYPES.contains(&s)
    }

    #[test]
    fn a_full_body_parses() {
        let id = "3f1c6a2e-8b4d-4c1e-9a7f-2d5e8c0b1a34";
        let body = json!({"event_type": "letter_generate", "event_data": {"k": 1},
            "page_url": "/letters", "visitor_id": id, "extra": true});
        let e = parse(body.to_string().as_bytes()).unwrap();
        assert_eq!(e.event_type.as_str(), "letter_generate");
        assert_eq!(e.event_data["k"], 1);
        assert_eq!(e.page_url.as_deref(), Some("/letters"));
        assert_eq!(e.visitor_id.unwrap().to_string(), id);
        let e = parse(br#"{"event_type":"x","event_data":null,"visitor_id":null}"#).unwrap();
        assert!(e.event_data.is_empty() && e.visitor_id.is_none() && e.page_url.is_none());
    }

    #[test]
    fn every_refusal_is_a_sentence() {
        for body in [
            "",
            "[]",
            "{",
            "{}",
            r#"{"event_type":1}"#,
            r#"{"event_type":"heartbeat"}"#,
            r#"{"event_type":"x","event_data":[]}"#,
            r#"{"event_type":"x","page_url":5}"#,
            r#"{"event_type":"x","visitor_id":"nope"}"#,
            r#"{"event_type":"x","visitor_id":7}"#,
        ] {
            let e = parse(body.as_bytes()).unwrap_err();
            assert!(e.ends_with('.') && e.len() > 10, "{body}: {e}");
        }
    }

    #[test]
    fn integers_beyond_i64_and_u64_in_event_data_are_refused_others_kept_exactly() {
        let kept = br#"{"event_type":"x","event_data":{"a":9007199254740993,
            "b":18446744073709551615,"c":-9223372036854775808,"d":[1.5,1e30,-0],
            "e":"123456789012345678901234567890","123456789012345678901234567890":1}}"#;
        let e = parse(kept).unwrap();
        assert_eq!(e.event_data["a"].as_u64(), Some(9_007_199_254_740_993));
        assert_eq!(e.event_data["b"].as_u64(), Some(u64::MAX));
        assert_eq!(e.event_data["c"].as_i64(), Some(i64::MIN));
        assert_eq!(e.event_data["d"][1].as_f64(), Some(1e30));
        for (body, literal) in [
            (
                r#"{"event_type":"x","event_data":{"n":18446744073709551616}}"#,
                "18446744073709551616",
            ),
            (
                r#"{"event_type":"x","event_data":{"n":-9223372036854775809}}"#,
                "-9223372036854775809",
            ),
            // Nested, after strings holding quotes and brackets, and with a float
            // elsewhere that lets the scan run.
            (
                r#"{"event_type":"x","event_data":{"s":"a\"]}{,:","n":{"m":[1.5,123456789012345678901234567890]}}}"#,
                "123456789012345678901234567890",
            ),
            // The key written with an escape is the same key.
            (
                r#"{"event_type":"x","event\u005fdata":{"n":99999999999999999999}}"#,
                "99999999999999999999",
            ),
        ] {
            let e = parse(body.as_bytes()).unwrap_err();
            assert!(e.contains(literal) && e.ends_with('.'), "{body}: {e}");
        }
        // A huge literal is named, not echoed whole.
        let huge = format!(
            r#"{{"event_type":"x","event_data":{{"n":{}}}}}"#,
            "9".repeat(5000)
        );
        let e = parse(huge.as_bytes()).unwrap_err();
        assert!(e.len() < 300, "{e}");
        // Outside event_data (an unknown field, ignored) nothing is refused.
        let other = br#"{"event_type":"x","extra":18446744073709551616,"event_data":{"f":0.5}}"#;
        assert!(parse(other).is_ok());
    }

    proptest! {
        /// Any whole number that fits i64 or u64 comes back exactly; any other is
        /// refused, never stored as a float.
        #[test]
        fn whole_numbers_are_exact_or_refused(digits in "-?[1-9][0-9]{0,25}") {
            let body = format!(r#"{{"event_type":"x","event_data":{{"n":{digits},"f":0.5}}}}"#);
            match parse(body.as_bytes()) {
                Ok(e) => prop_assert_eq!(e.event_data["n"].to_string(), digits),
                Err(sentence) => {
                    prop_assert!(digits.parse::<i64>().is_err() && digits.parse::<u64>().is_err());
                    prop_assert!(sentence.contains(&digits), "{}", sentence);
                }
            }
        }
    }

    proptest! {
        /// The rule of CONTRACT.md for `event_type`, checked against an independent
        /// statement of it, on arbitrary strings and on strings near the alphabet.
        #[test]
        fn event_types_follow_the_contract(s in "\\PC{0,60}|[a-z0-9_.:A-Z -]{0,60}") {
            let body = json!({"event_type": s}).to_string();
            prop_assert_eq!(parse(body.as_bytes()).is_ok(), is_valid_event_type(&s));
        }

        #[test]
        fn page_urls_are_bounded(len in 0usize..3000) {
            let body = json!({"event_type": "page_view", "page_url": "a".repeat(len)}).to_string();
            prop_assert_eq!(parse(body.as_bytes()).is_ok(), len <= MAX_PAGE_URL);
        }

        #[test]
        fn visitor_ids_are_uuids(id in proptest::option::of("\\PC{0,40}"), uuid in any::<u128>()) {
            let valid = uuid::Uuid::from_u128(uuid).to_string();
            let body = json!({"event_type": "page_view", "visitor_id": valid}).to_string();
            let parsed = parse(body.as_bytes()).unwrap().visitor_id.unwrap();
            prop_assert_eq!(parsed.to_string(), valid);
            if let Some(id) = id {
                let body = json!({"event_type": "page_view", "visitor_id": id}).to_string();
                prop_assert_eq!(parse(body.as_bytes()).is_ok(), uuid::Uuid::parse_str(id.trim()).is_ok());
            }
        }

        /// Whatever the bytes, the parser answers (never panics) and an error is a
        /// sentence.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            if let Err(e) = parse(&bytes) {
                prop_assert!(e.ends_with('.'));
            }
        }
    }
}
