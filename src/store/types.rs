//! The values the `EventStore` trait answers with: plain data, no SQL, so that the
//! routes and the live figures can use them without seeing a query.

use chrono::NaiveDate;

/// Counts over a time range, for the `stats` route and for rebuilding today's figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Summary {
    pub total_events: u64,
    pub letters_generated: u64,
    pub unique_visitors: u64,
}

/// Events of one minute, for the dashboard's chart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct MinuteCount {
    /// Unix milliseconds of the minute's start (UTC minutes).
    pub minute_ms: i64,
    pub count: u64,
}

/// A page being viewed now, for the dashboard.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PageNow {
    pub page_url: String,
    /// Visitors whose latest `page_view` in the window is this page: who is on it now.
    pub visitors: u64,
    /// `page_view` events of this page in the window.
    pub views: u64,
}

/// Views of one CV theme (`cv_theme_change` events whose `event_data.theme` is a
/// string), for the `themes` route.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ThemeViews {
    pub theme: String,
    pub views: u64,
}

/// Clicks at one rounded position, for the `heatmap` route.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct HeatCell {
    /// `event_data.x` and `.y` rounded to whole numbers (half to even, as maicivy's
    /// `%.0f`).
    pub x: f64,
    pub y: f64,
    pub count: u64,
}

/// The letters of a period, for the `letters` route: from maicivy's
/// `generated_letters` rows where that table exists, otherwise from the
/// `letter_generate` events' `event_data.letter_type`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Letters {
    pub motivation: u64,
    pub anti_motivation: u64,
    /// Letters per local calendar day (in the `tz` asked for), oldest first; days
    /// without letters are left out.
    pub per_day: Vec<(NaiveDate, u64)>,
}

/// What one `fold_step` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FoldProgress {
    /// Rows folded by this step.
    pub folded: u64,
    /// Rows folded since the aggregates were (re)built.
    pub total_folded: u64,
    /// Nothing is left to fold for now: the routes read the aggregates.
    pub caught_up: bool,
    /// More rows may come that the writer does not count (PostgreSQL, which
    /// maicivy's Go backend writes too): keep folding now and then.
    pub continuous: bool,
}
