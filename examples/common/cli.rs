//! `value_parser` functions the examples' clap command lines share: each takes the text of one
//! value and gives the value or, for clap's error, why not.
// Each example uses some of them.
#![allow(dead_code)]

use std::time::Duration;

/// A number of seconds above 0 and at most `max`.
pub fn secs_up_to(s: &str, max: f64) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v <= max => Ok(v),
        _ => Err(format!("not a number of seconds above 0 and at most {max}")),
    }
}

/// A number of seconds above 0 (at most 10^7).
pub fn positive_secs(s: &str) -> Result<f64, String> {
    secs_up_to(s, 1e7)
}

/// A number of seconds above 0 and at most a day.
pub fn secs_within_a_day(s: &str) -> Result<f64, String> {
    secs_up_to(s, 86_400.0)
}

/// A connection timeout in whole milliseconds, at least 20.
pub fn timeout_ms(s: &str) -> Result<Duration, String> {
    match s.parse::<u64>() {
        Ok(ms) if ms >= 20 => Ok(Duration::from_millis(ms)),
        Ok(_) => Err("must be at least 20".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// Whole milliseconds.
pub fn millis(s: &str) -> Result<Duration, String> {
    s.parse::<u64>()
        .map(Duration::from_millis)
        .map_err(|e| e.to_string())
}
