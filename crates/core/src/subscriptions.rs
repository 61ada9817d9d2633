//! Per-connection subscriptions: which event types a client wants.
//!
//! A filter is a small sorted set of type names held by the session, checked against
//! the kind the envelope read once per broadcast. Filtering is a comparison per client
//! and message, never a serialisation: every client that passes gets the same bytes.
//!
//! Figures (`initial_stats`, `heartbeat`) always pass. A client that never subscribes
//! gets everything, as in CONTRACT.md.

use crate::domain::EventType;
use crate::envelope::is_stats_kind;

/// At most this many names in one subscription: bounds the per-connection memory a
/// client controls.
pub const MAX_TYPES: usize = 64;

/// What a connection receives.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Filter {
    /// Every message (the contract's behaviour).
    #[default]
    All,
    /// Only these event types (sorted, no duplicates).
    Only(Vec<Box<str>>),
    /// Every event type but these (sorted, no duplicates).
    AllExcept(Vec<Box<str>>),
}

impl Filter {
    /// Whether a broadcast of `kind` goes to this connection.
    pub fn admits(&self, kind: &str, is_stats: bool) -> bool {
        match self {
            Filter::All => true,
            _ if is_stats => true,
            Filter::Only(set) => contains(set, kind),
            Filter::AllExcept(set) => !contains(set, kind),
        }
    }

    /// `subscribe`: from now on also these types. `"*"` means every type again.
    pub fn subscribe(&mut self, names: Vec<Box<str>>) -> Result<(), String> {
        let names = checked(names)?;
        if names.iter().any(|n| &**n == "*") {
            *self = Filter::All;
            return Ok(());
        }
        let next = match self.clone() {
            Filter::All => Filter::Only(names),
            Filter::Only(set) => Filter::Only(union(set, names)),
            Filter::AllExcept(set) => except_or_all(difference(set, &names)),
        };
        self.replace(next)
    }

    /// `unsubscribe`: from now on not these types. `"*"` means no event type at all
    /// (figures still arrive).
    pub fn unsubscribe(&mut self, names: Vec<Box<str>>) -> Result<(), String> {
        let names = checked(names)?;
        if names.iter().any(|n| &**n == "*") {
            *self = Filter::Only(Vec::new());
            return Ok(());
        }
        let next = match self.clone() {
            Filter::All => except_or_all(names),
            Filter::Only(set) => Filter::Only(difference(set, &names)),
            Filter::AllExcept(set) => Filter::AllExcept(union(set, names)),
        };
        self.replace(next)
    }

    /// The confirmed set, as the `subscribed` reply lists it: `(events, except)`,
    /// where `events` is `["*"]` for every type.
    pub fn describe(&self) -> (Vec<&str>, Vec<&str>) {
        match self {
            Filter::All => (vec!["*"], Vec::new()),
            Filter::Only(set) => (set.iter().map(|s| &**s).collect(), Vec::new()),
            Filter::AllExcept(set) => (vec!["*"], set.iter().map(|s| &**s).collect()),
        }
    }

    /// The filter of a `?events=a,b` query parameter.
    pub fn from_query(list: &str) -> Result<Self, String> {
        let mut f = Filter::All;
        let names: Vec<Box<str>> = list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(Into::into)
            .collect();
        if !names.is_empty() {
            f.subscribe(names)?;
        }
        Ok(f)
    }

    /// Takes `next` unless it names too many types (then nothing changes).
    fn replace(&mut self, next: Filter) -> Result<(), String> {
        match &next {
            Filter::Only(set) | Filter::AllExcept(set) if set.len() > MAX_TYPES => Err(format!(
                "a subscription may name at most {MAX_TYPES} event types."
            )),
            _ => {
                *self = next;
                Ok(())
            }
        }
    }
}

fn contains(set: &[Box<str>], kind: &str) -> bool {
    // A handful of names: a binary search over a sorted slice beats hashing.
    set.binary_search_by(|n| (**n).cmp(kind)).is_ok()
}

/// Valid, sorted, deduplicated names; figure kinds are dropped (they always arrive).
fn checked(names: Vec<Box<str>>) -> Result<Vec<Box<str>>, String> {
    if names.len() > MAX_TYPES {
        return Err(format!(
            "a subscription may name at most {MAX_TYPES} event types."
        ));
    }
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        if &*name != "*" && !EventType::is_name(&name) {
            let shown: String = name.chars().take(60).collect();
            return Err(format!(
                "{shown:?} is not an event type; names are 1 to 50 characters of a-z, 0-9, _ - . and :."
            ));
        }
        if !is_stats_kind(&name) {
            out.push(name);
        }
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

fn union(mut a: Vec<Box<str>>, b: Vec<Box<str>>) -> Vec<Box<str>> {
    a.extend(b);
    a.sort_unstable();
    a.dedup();
    a
}

fn difference(mut a: Vec<Box<str>>, b: &[Box<str>]) -> Vec<Box<str>> {
    a.retain(|n| !contains(b, n));
    a
}

fn except_or_all(set: Vec<Box<str>>) -> Filter {
    if set.is_empty() {
        Filter::All
    } else {
        Filter::AllExcept(set)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<Box<str>> {
        v.iter().map(|s| (*s).into()).collect()
    }

    #[test]
    fn only_subscribed_types_and_figures_pass() {
        let mut f = Filter::All;
        assert!(f.admits("anything", false));
        f.subscribe(names(&["page_view", "letter_generate", "page_view"]))
            .unwrap();
        assert_eq!(f.describe().0, vec!["letter_generate", "page_view"]);
        assert!(f.admits("page_view", false));
        assert!(!f.admits("pdf_download", false));
        assert!(f.admits("heartbeat", true));
        f.subscribe(names(&["pdf_download"])).unwrap();
        assert!(f.admits("pdf_download", false));
        f.unsubscribe(names(&["page_view"])).unwrap();
        assert!(!f.admits("page_view", false));
        assert_eq!(f.describe().0, vec!["letter_generate", "pdf_download"]);
        f.unsubscribe(names(&["*"])).unwrap();
        assert!(!f.admits("letter_generate", false));
        assert!(f.admits("initial_stats", true));
        f.subscribe(names(&["*"])).unwrap();
        assert_eq!(f, Filter::All);
    }

    #[test]
    fn unsubscribing_from_everything_keeps_the_rest() {
        let mut f = Filter::All;
        f.unsubscribe(names(&["heartbeat", "visitor_connected"]))
            .unwrap();
        assert_eq!(f, Filter::AllExcept(names(&["visitor_connected"])));
        assert!(f.admits("page_view", false));
        assert!(!f.admits("visitor_connected", false));
        assert_eq!(f.describe(), (vec!["*"], vec!["visitor_connected"]));
        f.subscribe(names(&["visitor_connected"])).unwrap();
        assert_eq!(f, Filter::All);
    }

    #[test]
    fn bad_names_and_huge_lists_are_refused_with_a_sentence() {
        let mut f = Filter::All;
        let err = f.subscribe(names(&["Page View"])).unwrap_err();
        assert!(err.ends_with('.'), "{err}");
        assert_eq!(f, Filter::All, "unchanged after a refusal");
        let many: Vec<Box<str>> = (0..=MAX_TYPES).map(|i| format!("t{i}").into()).collect();
        assert!(f.subscribe(many).is_err());
        assert_eq!(
            Filter::from_query("page_view, letter_generate").unwrap(),
            Filter::Only(names(&["letter_generate", "page_view"]))
        );
        assert_eq!(Filter::from_query("").unwrap(), Filter::All);
    }
}
