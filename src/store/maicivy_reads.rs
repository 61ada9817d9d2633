//! The reads of maicivy's routes: CV themes, the click heatmap, generated letters.
//! Each raw, or from its aggregates; the rounding of clicks and the local days of
//! letters are Rust's, so that both backends give the same answer.

use chrono::NaiveDate;

use super::{HeatCell, Letters, count, minute_from_sql};

/// Rounds the raw `x`/`y` groups of the heatmap query and merges those that round
/// to the same cell. Values that are not finite numbers are left out.
pub(super) fn heat_cells(rows: Vec<(Option<String>, Option<String>, i64)>) -> Vec<HeatCell> {
    fn round(raw: Option<&str>) -> Option<f64> {
        let v: f64 = raw?.trim().parse().ok()?;
        // `+ 0.0` turns -0 into 0, so that -0.4 and 0.4 share a cell.
        v.is_finite().then(|| v.round_ties_even() + 0.0)
    }
    let mut cells: std::collections::HashMap<(u64, u64), HeatCell> =
        std::collections::HashMap::new();
    for (x, y, n) in rows {
        let (Some(x), Some(y)) = (round(x.as_deref()), round(y.as_deref())) else {
            continue;
        };
        cells
            .entry((x.to_bits(), y.to_bits()))
            .or_insert(HeatCell { x, y, count: 0 })
            .count += count(n);
    }
    let mut cells: Vec<HeatCell> = cells.into_values().collect();
    cells.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then(a.x.total_cmp(&b.x))
            .then(a.y.total_cmp(&b.y))
    });
    cells
}

/// Folds the per-minute letter counts of the letters query into `Letters`. The
/// query groups by UTC minute, not by day, because a local day starts at a UTC
/// minute that need not be a whole hour (India is UTC+5:30, Nepal +5:45), and only
/// Rust knows `tz`.
pub(super) fn letters_by_day(
    rows: Vec<(String, i64, i64, i64)>,
    tz: chrono_tz::Tz,
) -> Result<Letters, sqlx::Error> {
    let mut letters = Letters::default();
    let mut days: std::collections::BTreeMap<NaiveDate, u64> = std::collections::BTreeMap::new();
    for (minute, total, motivation, anti) in rows {
        let day = minute_from_sql(&minute)?.with_timezone(&tz).date_naive();
        *days.entry(day).or_default() += count(total);
        letters.motivation += count(motivation);
        letters.anti_motivation += count(anti);
    }
    letters.per_day = days.into_iter().collect();
    Ok(letters)
}

/// maicivy's routes' queries, for `sql_store_impl!`.
macro_rules! maicivy_reads_impl {
    ($store:ty, $db:ty, $d:ident) => {
        impl $store {
            async fn raw_top_themes(
                &self,
                limit: u32,
            ) -> Result<Vec<$crate::store::ThemeViews>, $crate::store::StoreError> {
                let rows: Vec<(String, i64)> = sqlx::query_as(concat!(
                    "SELECT theme, views FROM (SELECT ",
                    $d!(json_text "theme"),
                    " AS theme, COUNT(*) AS views FROM analytics_events \
                     WHERE event_type = 'cv_theme_change' AND deleted_at IS NULL AND ",
                    $d!(json_is_string "theme"),
                    " GROUP BY 1) t ORDER BY views DESC, theme",
                    $d!(binary_order),
                    " LIMIT $1"
                ))
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?;
                Ok(rows
                    .into_iter()
                    .map(|(theme, views)| $crate::store::ThemeViews {
                        theme,
                        views: $crate::store::count(views),
                    })
                    .collect())
            }

            async fn agg_top_themes(
                &self,
                limit: u32,
            ) -> Result<Vec<$crate::store::ThemeViews>, $crate::store::StoreError> {
                let rows: Vec<(String, i64)> = sqlx::query_as(concat!(
                    "SELECT theme, views FROM agg_theme WHERE views > 0 \
                     ORDER BY views DESC, theme",
                    $d!(binary_order),
                    " LIMIT $1"
                ))
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?;
                Ok(rows
                    .into_iter()
                    .map(|(theme, views)| $crate::store::ThemeViews {
                        theme,
                        views: $crate::store::count(views),
                    })
                    .collect())
            }

            /// Raw clicks of `[from, to)` grouped by their JSON `x` and `y`.
            async fn raw_heat_rows(
                &self,
                from: chrono::DateTime<chrono::Utc>,
                to: chrono::DateTime<chrono::Utc>,
                page_url: Option<&str>,
            ) -> Result<Vec<(Option<String>, Option<String>, i64)>, $crate::store::StoreError> {
                // Grouped by the raw JSON numbers (few distinct positions, whatever
                // the number of clicks); rounding and merging is Rust's, so that it
                // is half-to-even on both backends.
                Ok(sqlx::query_as(concat!(
                    "SELECT ",
                    $d!(json_raw "x"),
                    ", ",
                    $d!(json_raw "y"),
                    ", COUNT(*) FROM analytics_events \
                     WHERE event_type IN ('button_click', 'link_click') \
                     AND deleted_at IS NULL AND created_at >= CAST($1 AS ",
                    $d!(time),
                    ") AND created_at < CAST($3 AS ",
                    $d!(time),
                    ") AND ($2 IS NULL OR page_url = $2) AND ",
                    $d!(json_is_number "x"),
                    " AND ",
                    $d!(json_is_number "y"),
                    " GROUP BY 1, 2"
                ))
                .bind($crate::store::time_to_sql(from))
                .bind(page_url)
                // Always a bound, never `$3 IS NULL OR …`: SQLite plans a statement
                // once for any value, and with that OR its index range had no end,
                // so the heatmap's one-minute head read every click since `from`.
                .bind($crate::store::time_to_sql(to))
                .fetch_all(&self.pool)
                .await?)
            }

            async fn agg_heatmap(
                &self,
                from: chrono::DateTime<chrono::Utc>,
                page_url: Option<&str>,
            ) -> Result<Vec<$crate::store::HeatCell>, $crate::store::StoreError> {
                use $crate::store::aggregates::{ceil_bucket, from_micros, heat_ranges, micros};
                const MINUTE: i64 = 60_000_000;
                let first = ceil_bucket(micros(from), MINUTE);
                let head_end = from_micros(first * MINUTE);
                let mut rows = Vec::new();
                if from < head_end {
                    rows = self.raw_heat_rows(from, head_end, page_url).await?;
                }
                let r = heat_ranges(first);
                // One page's cells, or the cells of all pages together.
                let (base, page) = match page_url {
                    Some(p) => (0, p),
                    None => ($crate::store::aggregates::ALL_PAGES, ""),
                };
                let cells: Vec<(f64, f64, i64)> = sqlx::query_as(
                    "SELECT x, y, CAST(SUM(clicks) AS BIGINT) FROM agg_heat \
                     WHERE ((level = $7 AND bucket >= $1 AND bucket < $2) \
                        OR (level = $7 + 1 AND bucket >= $3 AND bucket < $4) \
                        OR (level = $7 + 2 AND bucket >= $5)) \
                     AND page_url = $6 GROUP BY x, y",
                )
                .bind(r.minutes.0)
                .bind(r.minutes.1)
                .bind(r.hours.0)
                .bind(r.hours.1)
                .bind(r.days_from)
                .bind(page)
                .bind(base)
                .fetch_all(&self.pool)
                .await?;
                // The aggregated cells are rounded already: they merge with the raw
                // ones through the same rounding.
                rows.extend(
                    cells
                        .into_iter()
                        .map(|(x, y, n)| (Some(x.to_string()), Some(y.to_string()), n)),
                );
                Ok($crate::store::heat_cells(rows))
            }

            async fn raw_letters(
                &self,
                from: chrono::DateTime<chrono::Utc>,
                to: chrono::DateTime<chrono::Utc>,
                tz: chrono_tz::Tz,
            ) -> Result<$crate::store::Letters, $crate::store::StoreError> {
                let sql = if self.tables.generated_letters {
                    concat!(
                        "SELECT ",
                        $d!(minute_text "created_at"),
                        ", COUNT(*), \
                         SUM(CASE WHEN letter_type = 'motivation' THEN 1 ELSE 0 END), \
                         SUM(CASE WHEN letter_type = 'anti_motivation' THEN 1 ELSE 0 END) \
                         FROM generated_letters WHERE deleted_at IS NULL \
                         AND created_at >= CAST($1 AS ",
                        $d!(time),
                        ") AND created_at < CAST($2 AS ",
                        $d!(time),
                        ") GROUP BY 1"
                    )
                } else {
                    concat!(
                        "SELECT ",
                        $d!(minute_text "created_at"),
                        ", COUNT(*), SUM(CASE WHEN ",
                        $d!(json_text "letter_type"),
                        " = 'motivation' THEN 1 ELSE 0 END), SUM(CASE WHEN ",
                        $d!(json_text "letter_type"),
                        " = 'anti_motivation' THEN 1 ELSE 0 END) \
                         FROM analytics_events WHERE event_type = 'letter_generate' \
                         AND deleted_at IS NULL AND created_at >= CAST($1 AS ",
                        $d!(time),
                        ") AND created_at < CAST($2 AS ",
                        $d!(time),
                        ") GROUP BY 1"
                    )
                };
                let rows: Vec<(String, i64, i64, i64)> = sqlx::query_as(sql)
                    .bind($crate::store::time_to_sql(from))
                    .bind($crate::store::time_to_sql(to))
                    .fetch_all(&self.pool)
                    .await?;
                Ok($crate::store::letters_by_day(rows, tz)?)
            }

            async fn agg_letters(
                &self,
                from: chrono::DateTime<chrono::Utc>,
                to: chrono::DateTime<chrono::Utc>,
            ) -> Result<$crate::store::Letters, $crate::store::StoreError> {
                use $crate::store::aggregates::{day_of_number, split_days};
                use $crate::store::count;
                let tz = self.agg.tz;
                let split = split_days(tz, from, to);
                if split.first >= split.end {
                    return self.raw_letters(from, to, tz).await;
                }
                let mut days: std::collections::BTreeMap<chrono::NaiveDate, u64> =
                    Default::default();
                let mut letters = $crate::store::Letters::default();
                for (a, b) in [(from, split.head_end), (split.tail_start, to)] {
                    if a < b {
                        let edge = self.raw_letters(a, b, tz).await?;
                        letters.motivation += edge.motivation;
                        letters.anti_motivation += edge.anti_motivation;
                        for (d, n) in edge.per_day {
                            *days.entry(d).or_default() += n;
                        }
                    }
                }
                let rows: Vec<(i64, i64, i64, i64)> = sqlx::query_as(
                    "SELECT day, letters, motivation, anti_motivation FROM agg_day \
                     WHERE day >= $1 AND day < $2 AND letters > 0",
                )
                .bind(split.first)
                .bind(split.end)
                .fetch_all(&self.pool)
                .await?;
                for (day, n, m, a) in rows {
                    *days.entry(day_of_number(day)).or_default() += count(n);
                    letters.motivation += count(m);
                    letters.anti_motivation += count(a);
                }
                letters.per_day = days.into_iter().collect();
                Ok(letters)
            }
        }
    };
}
pub(crate) use maicivy_reads_impl;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heat_cells_round_half_to_even_and_merge() {
        let raw = |x: &str, y: &str, n| (Some(x.to_owned()), Some(y.to_owned()), n);
        let cells = heat_cells(vec![
            raw("450", "200", 2),
            raw("450.4", "199.6", 1),
            raw("2.5", "0.5", 1),
            raw("3.5", "-0.4", 1),
            raw("1e400", "1", 9),
            raw("not a number", "1", 9),
            (None, Some("1".into()), 9),
        ]);
        let got: Vec<(f64, f64, u64)> = cells.iter().map(|c| (c.x, c.y, c.count)).collect();
        assert_eq!(got, vec![(450.0, 200.0, 3), (2.0, 0.0, 1), (4.0, 0.0, 1)]);
        assert!(cells.iter().all(|c| c.y.is_sign_positive()), "-0 is 0");
    }

    #[test]
    fn letters_are_counted_per_local_day_even_at_half_hour_offsets() {
        // 18:29 UTC is 23:59 in India (UTC+5:30), 18:31 is 00:01 the next day.
        let rows = vec![
            ("2025-12-08 18:29".to_owned(), 2, 1, 1),
            ("2025-12-08 18:31".to_owned(), 3, 2, 0),
            ("2025-12-09 03:00".to_owned(), 1, 0, 1),
        ];
        let india = letters_by_day(rows.clone(), chrono_tz::Asia::Kolkata).unwrap();
        let day = |d| NaiveDate::from_ymd_opt(2025, 12, d).unwrap();
        assert_eq!(
            india,
            Letters {
                motivation: 3,
                anti_motivation: 2,
                per_day: vec![(day(8), 2), (day(9), 4)],
            }
        );
        let utc = letters_by_day(rows, chrono_tz::UTC).unwrap();
        assert_eq!(utc.per_day, vec![(day(8), 5), (day(9), 1)]);
    }
}
