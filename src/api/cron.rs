//! Cron schedules for CronJobs: parse `spec.schedule` the way Kubernetes does
//! (robfig/cron v3 `ParseStandard`) and find the next activation in a zone.
//!
//! robfig's rules are kept, quirks included, so that a schedule means what it
//! means on Kubernetes: five fields or a descriptor (`@daily`, `@every 1h30m`);
//! day-of-week 7 is rejected; a day must match both day fields when either has
//! robfig's "star bit" (an item that is a bare `*`/`?`, or `*/1`), else either
//! one. A step over 1 drops the star: `0 0 */2 * 1` is odd days *or* Mondays.
//!
//! Deliberate differences: schedules run on wall-clock time, so a time skipped
//! by a DST jump does not fire and a repeated one fires once, at its first
//! occurrence (robfig can fire twice in the fall-back hour); `*-5` (robfig: `*`)
//! and zero or negative `@every` durations (robfig: 1s) are rejected.
//!
//! Errors are strings: CronJob validation puts them verbatim into a field
//! error. Missed runs, deadlines and concurrency policy are the controller's.

use jiff::civil::{Date, DateTime, Time};
use jiff::tz::{AmbiguousOffset, TimeZone};
use jiff::{Timestamp, ToSpan, Zoned};

/// A parsed cron schedule; see the module docs for its semantics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule(Kind);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Fields(Fields),
    /// `@every`: a fixed delay in whole seconds (at least 1).
    Every(i64),
}

/// The five calendar fields; bit `n` of a mask is set when value `n` matches.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fields {
    minute: u64,
    hour: u64,
    dom: u64,
    month: u64,
    dow: u64,
    /// robfig's star bit on either day field: a day must match both.
    both_days: bool,
}

/// How to read one field: its name in messages, its bounds, and the names of
/// `min`, `min + 1`, … (matched case-insensitively).
struct Field(&'static str, u32, u32, &'static [&'static str]);

const MONTH_NAMES: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const DAY_NAMES: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];
const MINUTE: Field = Field("minute", 0, 59, &[]);
const HOUR: Field = Field("hour", 0, 23, &[]);
const DOM: Field = Field("day-of-month", 1, 31, &[]);
const MONTH: Field = Field("month", 1, 12, &MONTH_NAMES);
const DOW: Field = Field("day-of-week", 0, 6, &DAY_NAMES);

const FIELD_NAMES: &str = "minute hour day-of-month month day-of-week";
const DESCRIPTOR_HINT: &str =
    "use @yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly or @every";
const INVALID_DURATION: &str = "is not a valid duration; use Go syntax such as 90s, 5m or 1h30m";
/// Go's duration units, in seconds.
#[rustfmt::skip]
const UNITS: [(&str, f64); 8] = [
    ("ns", 1e-9), ("us", 1e-6), ("µs", 1e-6), ("μs", 1e-6),
    ("ms", 1e-3), ("s", 1.0), ("m", 60.0), ("h", 3600.0),
];

impl Schedule {
    /// Parses a CronJob `spec.schedule`.
    ///
    /// # Errors
    ///
    /// A message naming the bad piece, e.g. `minute field: 61 is out of range
    /// 0-59`, for anything `ParseStandard` rejects, and for a `TZ=` or
    /// `CRON_TZ=` prefix, which Kubernetes rejects in favour of `spec.timeZone`.
    pub fn parse(expr: &str) -> Result<Schedule, String> {
        let expr = expr.trim();
        if expr.is_empty() {
            return Err("empty schedule".into());
        }
        if expr.starts_with("TZ=") || expr.starts_with("CRON_TZ=") {
            return Err("a TZ= or CRON_TZ= prefix is not allowed in spec.schedule; \
                        set spec.timeZone instead"
                .into());
        }
        if let Some(duration) = expr.strip_prefix("@every ") {
            return every(duration.trim());
        }
        let expr = match expr {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            _ if expr.starts_with('@') => {
                return Err(format!("unknown descriptor {expr:?}; {DESCRIPTOR_HINT}"));
            }
            _ => expr,
        };
        let fields: Vec<&str> = expr.split_whitespace().collect();
        let [minute, hour, dom, month, dow] = fields[..] else {
            let n = fields.len();
            return Err(format!("expected 5 fields ({FIELD_NAMES}), found {n}"));
        };
        let (minute, hour) = (parse_field(&MINUTE, minute)?.0, parse_field(&HOUR, hour)?.0);
        let (dom, dom_star) = parse_field(&DOM, dom)?;
        let (month, (dow, dow_star)) = (parse_field(&MONTH, month)?.0, parse_field(&DOW, dow)?);
        let both_days = dom_star || dow_star;
        Ok(Schedule(Kind::Fields(Fields {
            minute,
            hour,
            dom,
            month,
            dow,
            both_days,
        })))
    }

    /// The first activation strictly after `after`, in `after`'s time zone;
    /// `None` if there is none within about five years (e.g. `0 0 30 2 *`).
    pub fn next_after(&self, after: &Zoned) -> Option<Zoned> {
        match &self.0 {
            Kind::Fields(fields) => fields.next_after(after),
            Kind::Every(secs) => {
                // Like robfig: drop the fraction of a second, add the delay.
                let second = after.timestamp().as_second().checked_add(*secs)?;
                let next = Timestamp::from_second(second).ok()?;
                Some(next.to_zoned(after.time_zone().clone()))
            }
        }
    }
}

/// Resolves a CronJob `spec.timeZone`: `None` is the server's local zone.
///
/// # Errors
///
/// An unknown IANA name, or `""`/`"Local"`, which Kubernetes rejects so that a
/// CronJob never depends on the server's zone by accident.
pub fn time_zone(name: Option<&str>) -> Result<TimeZone, String> {
    let Some(name) = name else {
        return Ok(TimeZone::system());
    };
    if name.is_empty() || name.eq_ignore_ascii_case("local") {
        return Err(format!("{name:?} is not an IANA zone name"));
    }
    TimeZone::get(name).map_err(|err| format!("unknown time zone {name:?}: {err}"))
}

/// `@every <duration>` in Go's `time.ParseDuration` syntax (`1h30m`, `1.5h`,
/// `90s`). Like robfig, sub-second parts are dropped and less rounds up to 1s.
fn every(text: &str) -> Result<Schedule, String> {
    let invalid = || format!("@every: {text:?} {INVALID_DURATION}");
    let negative = text.starts_with('-');
    let mut rest = text.strip_prefix(['+', '-']).unwrap_or(text);
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut seconds = 0.0;
    // Go allows a bare "0"; every other term is a decimal number and a unit.
    while !rest.is_empty() && rest != "0" {
        let is_number = |c: char| c.is_ascii_digit() || c == '.';
        let (number, tail) = rest.split_at(rest.find(|c| !is_number(c)).ok_or_else(invalid)?);
        let (unit, tail) = tail.split_at(tail.find(is_number).unwrap_or(tail.len()));
        let scale = UNITS.iter().find(|u| u.0 == unit).ok_or_else(invalid)?.1;
        seconds += number.parse::<f64>().map_err(|_| invalid())? * scale;
        rest = tail;
    }
    // Go's limit: an i64 of nanoseconds, about 292 years.
    if seconds > i64::MAX as f64 / 1e9 {
        return Err(invalid());
    }
    if negative || seconds == 0.0 {
        return Err(format!("@every: duration {text:?} must be positive"));
    }
    // Round to Go's nanoseconds first, so `2.3h` is 8280s despite binary floats.
    let whole = ((seconds * 1e9).round() / 1e9).floor() as i64;
    Ok(Schedule(Kind::Every(whole.max(1))))
}

/// Parses a comma list for `field`; returns the mask and robfig's star bit.
fn parse_field(field: &Field, text: &str) -> Result<(u64, bool), String> {
    let (mut mask, mut star) = (0, false);
    for item in text.split(',') {
        let error = |err| format!("{} field: {err}", field.0);
        if item.is_empty() {
            return Err(error(format!("empty item in {text:?}")));
        }
        let (bits, item_star) = parse_item(field, item).map_err(error)?;
        mask |= bits;
        star |= item_star;
    }
    Ok((mask, star))
}

/// One list item: `*`, `?`, `a`, `a-b`, each optionally followed by `/step`.
fn parse_item(field: &Field, item: &str) -> Result<(u64, bool), String> {
    let (range, step) = match item.split_once('/') {
        Some((_, s)) if s.contains('/') => return Err(format!("too many slashes in {item:?}")),
        Some((range, step)) => {
            let bad_step = |_| format!("step {step:?} in {item:?} is not a number");
            (range, Some(step.parse::<u32>().map_err(bad_step)?))
        }
        None => (item, None),
    };
    let (start, end, star) = match range.split_once('-') {
        _ if range == "*" || range == "?" => (field.1, field.2, true),
        Some((_, end)) if end.contains('-') => return Err(format!("too many hyphens in {item:?}")),
        Some((start, end)) => (field.value(start)?, field.value(end)?, false),
        // robfig reads `a/n` as `a-max/n`.
        None if step.is_some() => (field.value(range)?, field.2, false),
        None => (field.value(range)?, field.value(range)?, false),
    };
    if start > end {
        return Err(format!("range {range:?} starts after it ends"));
    }
    let step = step.unwrap_or(1);
    if step == 0 {
        return Err(format!("step in {item:?} must be at least 1"));
    }
    let values = (start..=end).step_by(step as usize);
    // robfig drops the star bit when a step over 1 is given.
    Ok((values.fold(0, |mask, v| mask | 1 << v), star && step == 1))
}

impl Field {
    /// A number or name, checked against the field's bounds.
    fn value(&self, text: &str) -> Result<u32, String> {
        let Field(_, min, max, names) = *self;
        let value = if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
            // Too many digits for a u32 is out of range as well.
            text.parse().unwrap_or(u32::MAX)
        } else if let Some(index) = names.iter().position(|n| n.eq_ignore_ascii_case(text)) {
            min + index as u32
        } else if let (Some(first), Some(last)) = (names.first(), names.last()) {
            return Err(format!("{text:?} is not a number or one of {first}-{last}"));
        } else {
            return Err(format!("{text:?} is not a number"));
        };
        if value < min || value > max {
            let hint = (names == DAY_NAMES && value == 7).then_some(" (use 0 for Sunday)");
            let hint = hint.unwrap_or_default();
            return Err(format!("{text} is out of range {min}-{max}{hint}"));
        }
        Ok(value)
    }
}

impl Fields {
    /// Searches wall-clock times, then maps each candidate onto `after`'s zone:
    /// a candidate in a DST gap does not exist and is skipped; one in a fold
    /// means its earlier instant, so it fires once. A search starting in the
    /// fold's second pass skips candidates whose instant is already behind.
    fn next_after(&self, after: &Zoned) -> Option<Zoned> {
        let now = after.datetime();
        let year_limit = now.year().saturating_add(5);
        let minute = now.date().at(now.hour(), now.minute(), 0, 0);
        let mut from = minute.checked_add(1.minute()).ok()?;
        loop {
            let candidate = self.next_civil(from, year_limit)?;
            let zoned = after.time_zone().to_ambiguous_zoned(candidate);
            if !matches!(zoned.offset(), AmbiguousOffset::Gap { .. }) {
                let zoned = zoned.earlier().ok()?;
                if zoned > *after {
                    return Some(zoned);
                }
            }
            from = candidate.checked_add(1.minute()).ok()?;
        }
    }

    /// The first matching wall-clock minute at or after `from`, jumping by
    /// month, day, hour and minute like robfig's `Next`.
    fn next_civil(&self, from: DateTime, year_limit: i16) -> Option<DateTime> {
        let (mut date, mut hour, mut minute) = (from.date(), from.hour(), from.minute());
        while date.year() <= year_limit {
            if self.month & 1 << date.month() == 0 {
                date = date.first_of_month().checked_add(1.month()).ok()?;
            } else if self.day_matches(date)
                && let Some((hour, minute)) = self.first_time(hour, minute)
            {
                return Some(date.to_datetime(Time::new(hour, minute, 0, 0).ok()?));
            } else {
                date = date.tomorrow().ok()?;
            }
            (hour, minute) = (0, 0);
        }
        None
    }

    /// The first matching hour and minute at or after `hour:minute`.
    fn first_time(&self, hour: i8, minute: i8) -> Option<(i8, i8)> {
        let next_hour = next_bit(self.hour, hour)?;
        match next_bit(self.minute, if next_hour == hour { minute } else { 0 }) {
            Some(minute) => Some((next_hour, minute)),
            None => self.first_time(next_hour + 1, 0),
        }
    }

    /// robfig's `dayMatches`: both day fields if either has the star bit, else either.
    fn day_matches(&self, date: Date) -> bool {
        let dom = self.dom & 1 << date.day() != 0;
        let dow = self.dow & 1 << date.weekday().to_sunday_zero_offset() != 0;
        (dom && dow) || (!self.both_days && (dom || dow))
    }
}

/// The smallest value `>= from` whose bit is set in `mask`.
fn next_bit(mask: u64, from: i8) -> Option<i8> {
    let rest = mask & u64::MAX.checked_shl(u32::try_from(from).ok()?)?;
    // A mask holds values below 64, so the bit index always fits an i8.
    (rest != 0).then(|| rest.trailing_zeros() as i8)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Trimmed, non-empty rows of a `|`-separated table, split into cells.
    fn rows(table: &str) -> impl Iterator<Item = Vec<&str>> {
        let lines = table.lines().map(str::trim).filter(|line| !line.is_empty());
        lines.map(|line| line.split('|').map(str::trim).collect())
    }

    /// What `expr` parses to: each field's values (`*` when whole), or
    /// `every <n>s`, or the error.
    fn parsed(expr: &str) -> String {
        let list = |mask: u64, Field(_, min, max, _): Field| {
            let v: Vec<u32> = (min..=max).filter(|v| mask & 1 << v != 0).collect();
            let whole = v.len() == (min..=max).count();
            if whole { "*".into() } else { format!("{v:?}") }
        };
        let f = match Schedule::parse(expr) {
            Ok(Schedule(Kind::Fields(f))) => f,
            Ok(Schedule(Kind::Every(seconds))) => return format!("every {seconds}s"),
            Err(err) => return err,
        };
        let masks = [f.minute, f.hour, f.dom, f.month, f.dow];
        let lists = masks.into_iter().zip([MINUTE, HOUR, DOM, MONTH, DOW]);
        let lists: Vec<_> = lists.map(|(mask, field)| list(mask, field)).collect();
        lists.join(" ")
    }

    /// Checks rows of `expression | … | what each parses to`.
    fn check_parsed(table: &str) {
        for row in rows(table) {
            let (want, exprs) = row.split_last().expect("a non-empty row");
            for expr in exprs {
                assert_eq!(parsed(expr), *want, "{expr:?}");
            }
        }
    }

    /// Checks rows of `schedule | start | activations…`, each activation
    /// (`%FT%T%:z`, or `none`) being the next after the previous one.
    fn check_next(table: &str) {
        for row in rows(table) {
            let schedule = Schedule::parse(row[0]).unwrap();
            let mut at: Option<Zoned> = Some(row[1].parse().unwrap());
            for want in row[2].split_whitespace() {
                at = schedule.next_after(at.as_ref().expect("an earlier activation"));
                let got = at.as_ref().map(|at| at.strftime("%FT%T%:z").to_string());
                assert_eq!(got.as_deref().unwrap_or("none"), want, "{row:?}");
            }
        }
    }

    #[test]
    fn every_syntax_form_name_and_descriptor_selects_the_right_values() {
        check_parsed("
            * * * * * | ? ? ? ? ?               | * * * * *
            */15 10-12 ? jan-MAR Mon,fri        | [0, 15, 30, 45] [10, 11, 12] * [1, 2, 3] [1, 5]
            5,10-30/10,50/3 0 1 Dec/1 SUN-sat/2 | [5, 10, 20, 30, 50, 53, 56, 59] [0] [1] [12] [0, 2, 4, 6]
            1,5-6,*/30 */100 31 * 6             | [0, 1, 5, 6, 30] [0] [31] * [6]
            @yearly | @annually | 0 0 1 1 *     | [0] [0] [1] [1] *
            @monthly                            | [0] [0] [1] * *
            @weekly                             | [0] [0] * * [0]
            @daily | @midnight | 0 0 * * *     | [0] [0] * * *
            @hourly                             | [0] * * * *
            @every 1h30m                        | every 5400s
            @every 2.3h                         | every 8280s
            @every 500ms                        | every 1s
            @every +.5m1.5s                     | every 31s
        ");
        assert_eq!(Schedule::parse("@yearly"), Schedule::parse("0 0 1 1 *"));
    }

    #[test]
    fn invalid_schedules_are_rejected_with_a_message_naming_the_bad_piece() {
        assert_eq!(parsed("  "), "empty schedule");
        check_parsed(
            r#"
            * * * *         | expected 5 fields (minute hour day-of-month month day-of-week), found 4
            61 * * * *      | minute field: 61 is out of range 0-59
            0 24 * * *      | hour field: 24 is out of range 0-23
            0 0 0 * *       | day-of-month field: 0 is out of range 1-31
            0 0 * 13 *      | month field: 13 is out of range 1-12
            0 0 * * 7       | day-of-week field: 7 is out of range 0-6 (use 0 for Sunday)
            0 0 * * 99999999999 | day-of-week field: 99999999999 is out of range 0-6
            0 0 * FOO *     | month field: "FOO" is not a number or one of jan-dec
            0 0 * * funday  | day-of-week field: "funday" is not a number or one of sun-sat
            *-5 * * * *     | minute field: "*" is not a number
            30-10 * * * *   | minute field: range "30-10" starts after it ends
            */0 * * * *     | minute field: step in "*/0" must be at least 1
            0 */x * * *     | hour field: step "x" in "*/x" is not a number
            61 * * * 7      | minute field: 61 is out of range 0-59
            1-2-3 * * * *   | minute field: too many hyphens in "1-2-3"
            */2/3 * * * *   | minute field: too many slashes in "*/2/3"
            1,,2 * * * *    | minute field: empty item in "1,,2"
            TZ=UTC 0 * * * * | CRON_TZ=Europe/Berlin 0 * * * * | a TZ= or CRON_TZ= prefix is not allowed in spec.schedule; set spec.timeZone instead
            @every          | unknown descriptor "@every"; use @yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly or @every
            @every 5        | @every: "5" is not a valid duration; use Go syntax such as 90s, 5m or 1h30m
            @every 0s       | @every: duration "0s" must be positive
            @every -5m      | @every: duration "-5m" must be positive
        "#,
        );
    }

    #[test]
    fn restricted_day_fields_match_either_and_a_star_makes_both_required() {
        // Fridays are the 6th, 13th, 20th of September 2024 and the 11th of October;
        // October 13th is a Sunday. `*/10` is 1, 11, 21, 31: its step drops the star.
        check_next("
            0 0 13 * 5   | 2024-10-05T00:00[UTC] | 2024-10-11T00:00:00+00:00 2024-10-13T00:00:00+00:00 2024-10-18T00:00:00+00:00
            0 0 * * 5    | 2024-09-01T00:00[UTC] | 2024-09-06T00:00:00+00:00 2024-09-13T00:00:00+00:00
            0 0 13 * ?   | 2024-09-01T00:00[UTC] | 2024-09-13T00:00:00+00:00 2024-10-13T00:00:00+00:00
            0 0 13,* * 5 | 2024-09-01T00:00[UTC] | 2024-09-06T00:00:00+00:00 2024-09-13T00:00:00+00:00
            0 0 */1 * 5  | 2024-09-01T00:00[UTC] | 2024-09-06T00:00:00+00:00 2024-09-13T00:00:00+00:00
            0 0 */10 * 5 | 2024-09-05T00:00[UTC] | 2024-09-06T00:00:00+00:00 2024-09-11T00:00:00+00:00 2024-09-13T00:00:00+00:00
        ");
    }

    #[test]
    fn activations_follow_steps_leap_years_and_year_ends_in_the_start_zone() {
        // 2100 is not a leap year: after 2096 the next is beyond the 5-year horizon.
        check_next("
            */15 * * * *  | 2024-01-01T10:37:30[UTC] | 2024-01-01T10:45:00+00:00 2024-01-01T11:00:00+00:00 2024-01-01T11:15:00+00:00
            0 * * * *     | 2024-01-01T10:00[UTC]    | 2024-01-01T11:00:00+00:00
            0 0 29 2 *    | 2024-03-01T00:00[UTC]    | 2028-02-29T00:00:00+00:00 2032-02-29T00:00:00+00:00
            0 0 30 2 *    | 2024-01-01T00:00[UTC]    | none
            0 0 29 2 *    | 2097-01-01T00:00[UTC]    | none
            0 0 1 1 *     | 2024-12-31T23:59:59.999[UTC] | 2025-01-01T00:00:00+00:00
            30 23 31 12 * | 2024-12-31T23:30[UTC]    | 2025-12-31T23:30:00+00:00
            0 9 * * MON   | 2024-12-28T12:00[Europe/Berlin] | 2024-12-30T09:00:00+01:00 2025-01-06T09:00:00+01:00
            0 9 * * *     | 2024-01-01T10:00[Asia/Tokyo] | 2024-01-02T09:00:00+09:00
            @every 90s    | 2024-01-01T10:00:00.5[UTC] | 2024-01-01T10:01:30+00:00 2024-01-01T10:03:00+00:00
        ");
    }

    #[test]
    fn daylight_saving_skips_missing_wall_clock_times_and_fires_repeated_ones_once() {
        // New York: 02:00 EST -> 03:00 EDT on 2024-03-10, and 01:00-02:00 happens
        // twice (EDT, then EST) on 2024-11-03. Berlin: 02:00 -> 03:00 on 2024-03-31.
        check_next("
            30 2 * * *   | 2024-03-09T12:00-05:00[America/New_York] | 2024-03-11T02:30:00-04:00
            */30 * * * * | 2024-03-10T01:30-05:00[America/New_York] | 2024-03-10T03:00:00-04:00
            30 2 * * *   | 2024-03-30T12:00+01:00[Europe/Berlin]    | 2024-04-01T02:30:00+02:00
            30 1 * * *   | 2024-11-02T12:00-04:00[America/New_York] | 2024-11-03T01:30:00-04:00 2024-11-04T01:30:00-05:00
            0 * * * *    | 2024-11-03T00:30-04:00[America/New_York] | 2024-11-03T01:00:00-04:00 2024-11-03T02:00:00-05:00
            45 1 * * *   | 2024-11-03T01:30-05:00[America/New_York] | 2024-11-04T01:45:00-05:00
        ");
    }

    #[test]
    fn time_zone_resolves_iana_names_and_rejects_unknown_or_local() {
        let new_york = time_zone(Some("America/New_York")).unwrap();
        assert_eq!(new_york.iana_name(), Some("America/New_York"));
        assert_eq!(time_zone(None).unwrap(), TimeZone::system());
        let err = time_zone(Some("Mars/Olympus_Mons")).unwrap_err();
        assert!(
            err.starts_with("unknown time zone \"Mars/Olympus_Mons\""),
            "{err}"
        );
        let err = time_zone(Some("Local")).unwrap_err();
        assert_eq!(err, "\"Local\" is not an IANA zone name");
        assert!(time_zone(Some("")).is_err());
    }
}
