//! HTTP dates, read as RFC 9110 section 5.6.7 asks (all three formats) and more leniently, as
//! caches in the field do: any case, a weekday that is wrong or without its comma, dashes,
//! runs of spaces, a two-digit year, a one-digit hour. A zone other than GMT (or UTC) is not
//! guessed at: such a date cannot be read.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// The time `value` names, if it can be read.
pub(crate) fn parse(value: &str) -> Option<SystemTime> {
    if let Ok(t) = httpdate::parse_http_date(value) {
        return Some(t);
    }
    lenient(value)
}

fn lenient(value: &str) -> Option<SystemTime> {
    let (mut month, mut time, mut numbers) = (None, None, Vec::new());
    let tokens = value
        .split(|c: char| c.is_ascii_whitespace() || c == ',' || c == '-')
        .filter(|t| !t.is_empty());
    for token in tokens {
        let lower = token.to_ascii_lowercase();
        if token.bytes().all(|b| b.is_ascii_digit()) {
            numbers.push(token);
        } else if token.contains(':') || token.contains('.') {
            time = Some(clock(token)?);
        } else if let Some(m) = MONTHS.iter().position(|m| lower.starts_with(m)) {
            month = Some(m as u32 + 1);
        } else if DAYS.iter().any(|d| lower.starts_with(d)) {
            // The weekday says nothing the date does not.
        } else if !matches!(lower.as_str(), "gmt" | "utc" | "z") {
            return None;
        }
    }
    let (month, (hour, minute, second)) = (month?, time?);
    let [first, second_number] = numbers[..] else {
        return None;
    };
    // The four-digit number is the year; with a two-digit year (RFC 850), the day comes first.
    let (day, year) = if second_number.len() == 4 {
        (first, second_number)
    } else if first.len() == 4 {
        (second_number, first)
    } else {
        (first, second_number)
    };
    let day: u32 = day.parse().ok().filter(|d| (1..=31).contains(d))?;
    let year: i64 = match year.len() {
        4 => year.parse().ok()?,
        2 => two_digit_year(year.parse().ok()?),
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + i64::from(hour * 3600 + minute * 60 + second);
    let secs = u64::try_from(secs).ok()?;
    Some(UNIX_EPOCH + Duration::from_secs(secs))
}

/// `h:mm:ss` (or with periods), one- or two-digit hour.
fn clock(token: &str) -> Option<(u32, u32, u32)> {
    let mut parts = token.split([':', '.']);
    let mut next = |max: u32| -> Option<u32> {
        let p = parts.next()?;
        if p.is_empty() || p.len() > 2 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        p.parse().ok().filter(|v| *v <= max)
    };
    let time = (next(23)?, next(59)?, next(60)?);
    parts.next().is_none().then_some(time)
}

/// RFC 9110 section 5.6.7: a two-digit year more than 50 years in the future is the most
/// recent past year with those digits.
fn two_digit_year(yy: i64) -> i64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let this_year = 1970 + now / 31_556_952;
    let year = this_year - this_year % 100 + yy;
    if year > this_year + 50 {
        year - 100
    } else {
        year
    }
}

/// Days from 1970-01-01 to a date of the proleptic Gregorian calendar.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year - era * 400;
    let mp = (i64::from(month) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn the_three_formats_and_their_lenient_kin_name_one_time() {
        let want = parse("Thu, 18 Aug 2050 02:01:18 GMT").unwrap();
        for v in [
            "Thursday, 18-Aug-50 02:01:18 GMT",
            "Thu Aug 18 02:01:18 2050",
            "THU, 18 AUG 2050 02:01:18 gmt",
            "Mon, 18 Aug 2050 02:01:18 UTC",
            "Thu 18 Aug 2050 02:01:18 GMT",
            "Thu, 18  Aug  2050 2:01:18 GMT",
            "Thu, 18-Aug-2050 02.01.18 GMT",
        ] {
            assert_eq!(parse(v), Some(want), "{v}");
        }
        for v in [
            "Thu, 18 Aug 2050 02:01:18 AEST",
            "0",
            "Thu, 32 Aug 2050 02:01:18 GMT",
            "Thu, 18 Aug 2050 24:01:18 GMT",
            "Thu, 18 Aug 2050",
            "",
        ] {
            assert_eq!(parse(v), None, "{v}");
        }
        assert_eq!(
            parse("Thu, 01 Jan 1970 00:00:01 GMT"),
            Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1))
        );
    }
}
