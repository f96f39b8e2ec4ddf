//! lbd's duration syntax: `10ms`, `1s`, `1.5s`, `1m30s`, `2h`.

use std::time::Duration;

/// Why a duration did not parse; the text is the message shown after the
/// key's name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("empty duration")]
    Empty,
    #[error("invalid duration {0:?}: expected a number")]
    NoNumber(String),
    #[error("invalid duration {0:?}")]
    BadNumber(String),
    #[error("invalid duration {0:?}: a unit is needed (ms, s, m, h)")]
    NoUnit(String),
    #[error("invalid duration {text:?}: unknown unit {unit:?}")]
    UnknownUnit { text: String, unit: String },
    #[error("duration {0:?} is too long")]
    TooLong(String),
}

/// `d` as lbd.yaml writes it, in the largest unit that is exact: `30s`,
/// `1m30s` is `90s`, `1500ms`, `2h`.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        "0s".into()
    } else if ms % 3_600_000 == 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms % 60_000 == 0 {
        format!("{}m", ms / 60_000)
    } else if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// Parses a sequence of number + unit (`h`, `m`, `s`, `ms`, `us`); a bare
/// `0` is zero, any other number needs a unit.
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let s = s.trim();
    if s.is_empty() {
        return Err(DurationError::Empty);
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return Err(DurationError::NoNumber(s.into()));
        }
        let num: f64 = rest[..num_len]
            .parse()
            .map_err(|_| DurationError::BadNumber(s.into()))?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let scale = match unit {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "" => return Err(DurationError::NoUnit(s.into())),
            _ => {
                return Err(DurationError::UnknownUnit {
                    text: s.into(),
                    unit: unit.into(),
                })
            }
        };
        total += num * scale;
    }
    if !total.is_finite() || total > 1e9 {
        return Err(DurationError::TooLong(s.into()));
    }
    Ok(Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The messages are part of `lbd check`'s output.
    #[test]
    fn each_error_says_what_is_wrong() {
        for (text, want) in [
            ("", "empty duration"),
            ("s", "invalid duration \"s\": expected a number"),
            ("1.2.3s", "invalid duration \"1.2.3s\""),
            (
                "10",
                "invalid duration \"10\": a unit is needed (ms, s, m, h)",
            ),
            ("1x", "invalid duration \"1x\": unknown unit \"x\""),
            ("5 s", "invalid duration \"5 s\": unknown unit \" s\""),
            ("9999999999h", "duration \"9999999999h\" is too long"),
        ] {
            assert_eq!(
                parse_duration(text).unwrap_err().to_string(),
                want,
                "{text:?}"
            );
        }
    }

    #[test]
    fn units_add_up() {
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("1h1m1s"), Ok(Duration::from_secs(3661)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration(" 1.5s "), Ok(Duration::from_millis(1500)));
    }
}
