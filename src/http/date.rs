//! HTTP dates, read as RFC 9110 section 5.6.7 asks: its three formats (IMF-fixdate, RFC 850,
//! asctime), the names of days, months and `GMT` in any case. Anything else cannot be read
//! (as `Expires`, RFC 9111 section 5.3 takes it as already expired): a zone other than `GMT`,
//! a two-digit year outside RFC 850, a missing comma, runs of spaces, dashes, a one-digit hour.

use std::time::SystemTime;

const NAMES: [&str; 27] = [
    "Mon",
    "Tue",
    "Wed",
    "Thu",
    "Fri",
    "Sat",
    "Sun",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
    "Jan",
    "Feb",
    "Mar",
    "Apr",
    "May",
    "Jun",
    "Jul",
    "Aug",
    "Sep",
    "Oct",
    "Nov",
    "Dec",
    "GMT",
];

/// The time `value` names, if it is a date in one of the three formats.
pub(crate) fn parse(value: &str) -> Option<SystemTime> {
    if let Ok(t) = httpdate::parse_http_date(value) {
        return Some(t);
    }
    let canonical = canonical_case(value);
    if let Ok(t) = httpdate::parse_http_date(&canonical) {
        return Some(t);
    }
    // The weekday says nothing the date does not: one that does not match is not a reason to
    // refuse the date (`Thu Aug  8 02:01:18 2050` is a Monday).
    let (day, rest) = canonical.split_at(canonical.find(|c: char| !c.is_ascii_alphabetic())?);
    let names = if day.len() == 3 {
        &NAMES[..7]
    } else {
        &NAMES[7..14]
    };
    if !names.contains(&day) {
        return None;
    }
    names
        .iter()
        .find_map(|name| httpdate::parse_http_date(&format!("{name}{rest}")).ok())
}

/// `value` with each name of a day, a month or `GMT` written as the formats write it.
fn canonical_case(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while !rest.is_empty() {
        let end = rest
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(rest.len());
        let (word, tail) = rest.split_at(end.max(1));
        match NAMES.iter().find(|n| n.eq_ignore_ascii_case(word)) {
            Some(name) => out.push_str(name),
            None => out.push_str(word),
        }
        rest = tail;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn the_three_formats_in_any_case_name_one_time_and_nothing_else_is_read() {
        let want = parse("Thu, 18 Aug 2050 02:01:18 GMT").unwrap();
        for v in [
            "Thursday, 18-Aug-50 02:01:18 GMT",
            "Thu Aug 18 02:01:18 2050",
            "THU, 18 AUG 2050 02:01:18 gmt",
            "thursday, 18-aug-50 02:01:18 Gmt",
            "Mon, 18 Aug 2050 02:01:18 GMT",
        ] {
            assert_eq!(parse(v), Some(want), "{v}");
        }
        for v in [
            "Thu, 18 Aug 2050 02:01:18 UTC",
            "Thu, 18 Aug 2050 02:01:18 AEST",
            "Thu, 18 Aug 50 02:01:18 GMT",
            "Thu 18 Aug 2050 02:01:18 GMT",
            "Thu, 18  Aug  2050 02:01:18 GMT",
            "Thu, 18-Aug-2050 02:01:18 GMT",
            "Thu, 18 Aug 2050 02.01.18 GMT",
            "Thu, 18 Aug 2050 2:01:18 GMT",
            "0",
            "Thu, 32 Aug 2050 02:01:18 GMT",
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
