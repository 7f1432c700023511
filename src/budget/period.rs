//! Calendar periods in UTC: days, weeks starting on Monday, and months.

use chrono::{DateTime, Datelike, Days, Months, NaiveDate, TimeZone, Utc};

use crate::store::PeriodKind;

/// The half-open interval `[start, end)` of the period containing `at`.
pub fn bounds(kind: PeriodKind, at: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
    let day = at.date_naive();
    let (start, end) = match kind {
        PeriodKind::Day => (day, day + Days::new(1)),
        PeriodKind::Week => {
            let monday = day - Days::new(u64::from(day.weekday().num_days_from_monday()));
            (monday, monday + Days::new(7))
        }
        PeriodKind::Month => {
            let first = day.with_day(1).unwrap_or(day);
            (first, first + Months::new(1))
        }
    };
    (midnight(start), midnight(end))
}

fn midnight(date: NaiveDate) -> DateTime<Utc> {
    Utc.from_utc_datetime(&date.and_time(chrono::NaiveTime::MIN))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn periods_roll_over_at_utc_boundaries() {
        // (kind, instant, expected start, expected end)
        let cases = [
            (PeriodKind::Day, "2026-11-25T23:59:59Z", "2026-11-25T00:00:00Z", "2026-11-26T00:00:00Z"),
            (PeriodKind::Day, "2026-11-26T00:00:00Z", "2026-11-26T00:00:00Z", "2026-11-27T00:00:00Z"),
            // 2026-11-25 is a Wednesday; its week starts Monday the 23rd.
            (PeriodKind::Week, "2026-11-25T12:00:00Z", "2026-11-23T00:00:00Z", "2026-11-30T00:00:00Z"),
            (PeriodKind::Week, "2026-11-29T23:59:59Z", "2026-11-23T00:00:00Z", "2026-11-30T00:00:00Z"),
            (PeriodKind::Week, "2026-11-30T00:00:00Z", "2026-11-30T00:00:00Z", "2026-12-07T00:00:00Z"),
            // A week spanning two months: Mon 2026-11-30 to Sun 2026-12-06.
            (PeriodKind::Week, "2026-12-03T08:00:00Z", "2026-11-30T00:00:00Z", "2026-12-07T00:00:00Z"),
            (PeriodKind::Month, "2026-11-30T23:59:59Z", "2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z"),
            (PeriodKind::Month, "2026-12-01T00:00:00Z", "2026-12-01T00:00:00Z", "2027-01-01T00:00:00Z"),
            (PeriodKind::Month, "2028-02-29T10:00:00Z", "2028-02-01T00:00:00Z", "2028-03-01T00:00:00Z"),
            (PeriodKind::Day, "2026-12-31T23:00:00Z", "2026-12-31T00:00:00Z", "2027-01-01T00:00:00Z"),
        ];
        for (kind, now, start, end) in cases {
            assert_eq!(bounds(kind, at(now)), (at(start), at(end)), "{kind:?} at {now}");
        }
    }
}
