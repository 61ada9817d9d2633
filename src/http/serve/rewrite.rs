//! JSON answers written by hand: hyper's own refusals (400 for malformed HTTP, 414,
//! 431), found in what it writes and given the JSON sentence of their status, and
//! the refusals at accept.

use axum::http::StatusCode;

use crate::http::{error_json, status_sentence};

/// An HTTP/1.1 answer with the JSON sentence, written by hand (no request to
/// answer through hyper). `extra`: header lines, each ending with CRLF.
pub(super) fn raw_answer(status: StatusCode, sentence: &str, extra: &str) -> Vec<u8> {
    let body = error_json(sentence);
    format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n{extra}\r\n{body}",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len(),
    )
    .into_bytes()
}

/// Where hyper's own answer to a request it could not read starts in `buf`, and its
/// length: `HTTP/1.1 4xx …` then `connection: close` and `content-length: 0`, the
/// only answer with an error status and no body (`json_error_bodies` gives each
/// of the app's a body). Hyper writes it whole, in one buffer, and closes.
pub(super) fn hyper_refusal(buf: &[u8]) -> Option<(usize, usize)> {
    const AFTER_STATUS_LINE: &[u8] = b"\r\nconnection: close\r\ncontent-length: 0\r\n";
    let mut from = 0;
    while let Some(i) = find(&buf[from..], b"HTTP/1.1 ") {
        let at = from + i;
        let head = &buf[at..];
        let is_error_status = head.len() > 13
            && matches!(head[9], b'4' | b'5')
            && head[10].is_ascii_digit()
            && head[11].is_ascii_digit()
            && head[12] == b' ';
        if is_error_status
            && let Some(line) = find(head, b"\r\n")
            && head[line..].starts_with(AFTER_STATUS_LINE)
            && let Some(end) = find(head, b"\r\n\r\n")
        {
            return Some((at, end + 4));
        }
        from = at + 1;
    }
    None
}

/// Hyper's refusal `head`, with the JSON sentence of its status.
pub(super) fn with_sentence(head: &[u8]) -> Vec<u8> {
    let status = head
        .get(9..12)
        .and_then(|code| StatusCode::from_bytes(code).ok())
        .unwrap_or(StatusCode::BAD_REQUEST);
    let date = find(head, b"\r\ndate: ").map(|at| {
        let line = &head[at + 2..];
        let end = find(line, b"\r\n").unwrap_or(line.len());
        format!("{}\r\n", String::from_utf8_lossy(&line[..end]))
    });
    raw_answer(
        status,
        &status_sentence(status),
        date.as_deref().unwrap_or(""),
    )
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    const REFUSAL: &[u8] = b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\ndate: Tue, 01 Dec 2026 11:00:01 GMT\r\n\r\n";

    fn split(answer: &[u8]) -> (String, serde_json::Value) {
        let text = std::str::from_utf8(answer).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        (head.to_owned(), serde_json::from_str(body).unwrap())
    }

    #[test]
    fn hypers_refusal_is_found_after_an_earlier_answer_and_given_a_sentence() {
        assert_eq!(hyper_refusal(REFUSAL), Some((0, REFUSAL.len())));
        let earlier = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
        let both = [&earlier[..], REFUSAL].concat();
        assert_eq!(hyper_refusal(&both), Some((earlier.len(), REFUSAL.len())));
        let (head, body) = split(&with_sentence(REFUSAL));
        assert!(
            head.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
            "{head}"
        );
        assert!(head.contains("content-type: application/json"), "{head}");
        assert!(
            head.contains("\r\ndate: Tue, 01 Dec 2026 11:00:01 GMT"),
            "{head}"
        );
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(len, body.to_string().len());
        assert_eq!(body["success"], false);
        assert!(body["error"].as_str().unwrap().ends_with('.'));
    }

    #[test]
    fn the_apps_own_answers_are_left_alone() {
        for answer in [
            &b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"[..],
            b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}",
            b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 60\r\n\r\n",
            // Not whole: never taken apart.
            b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n",
            b"HTTP/1.1 4",
            b"",
        ] {
            assert_eq!(hyper_refusal(answer), None, "{}", String::from_utf8_lossy(answer));
        }
    }
}
