//! What Redis's answers mean: integer counters (a missing key is 0), scores, and
//! theme lists in either protocol's shape.

use ::redis::Value;

use crate::store::ThemeViews;

/// An integer answer (`GET` of a counter, `SCARD`, `PFCOUNT`); a missing key is 0.
/// `None` when it is not an integer.
pub(super) fn integer(v: &Value) -> Option<u64> {
    let n = match v {
        Value::Nil => 0,
        Value::Int(n) => *n,
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok()?,
        Value::SimpleString(s) => s.parse().ok()?,
        _ => return None,
    };
    // A counter that someone decremented below zero counts as none.
    Some(u64::try_from(n).unwrap_or(0))
}

pub(super) fn as_text(v: &Value) -> Option<String> {
    match v {
        Value::SimpleString(s) => Some(s.clone()),
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::Okay => Some("OK".to_owned()),
        _ => None,
    }
}

pub(super) fn score(v: &Value) -> Option<f64> {
    match v {
        Value::Double(f) => Some(*f),
        Value::Int(n) => Some(*n as f64),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

/// `ZREVRANGE … WITHSCORES`: a flat list (RESP2) or a list of pairs (RESP3).
pub(super) fn themes_answer(v: &Value) -> Option<Vec<ThemeViews>> {
    let Value::Array(items) = v else {
        return None;
    };
    let pair = |member: &Value, s: &Value| {
        Some(ThemeViews {
            theme: as_text(member)?,
            // As Go's `int64(score)`; a negative score (someone's ZINCRBY -1) is 0.
            views: score(s)?.max(0.0) as u64,
        })
    };
    if items
        .iter()
        .all(|i| matches!(i, Value::Array(p) if p.len() == 2))
    {
        items
            .iter()
            .map(|i| match i {
                Value::Array(p) => pair(&p[0], &p[1]),
                _ => None,
            })
            .collect()
    } else if items.len() % 2 == 0 {
        items.chunks(2).map(|p| pair(&p[0], &p[1])).collect()
    } else {
        None
    }
}

/// The integer at `i` of checked answers (checked, so never an error there).
pub(super) fn int_at(values: &[Value], i: usize) -> u64 {
    values.get(i).and_then(integer).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_read_as_integers_or_not_at_all() {
        assert_eq!(integer(&Value::Nil), Some(0));
        assert_eq!(integer(&Value::BulkString(b"42".to_vec())), Some(42));
        assert_eq!(integer(&Value::Int(7)), Some(7));
        assert_eq!(integer(&Value::BulkString(b"abc".to_vec())), None);
        assert_eq!(integer(&Value::Array(vec![])), None);
    }

    #[test]
    fn themes_are_read_from_flat_and_paired_answers() {
        let flat = Value::Array(vec![
            Value::BulkString(b"backend".to_vec()),
            Value::BulkString(b"12".to_vec()),
            Value::BulkString(b"devops".to_vec()),
            Value::BulkString(b"3".to_vec()),
        ]);
        let paired = Value::Array(vec![Value::Array(vec![
            Value::BulkString(b"backend".to_vec()),
            Value::Double(12.0),
        ])]);
        let got = themes_answer(&flat).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].theme.as_str(), got[0].views), ("backend", 12));
        assert_eq!(themes_answer(&paired).unwrap()[0].views, 12);
    }
}
