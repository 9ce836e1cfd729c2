//! Log lines on stderr, as text or JSON, with a UTC timestamp; the level can change at runtime.
//! It formats and writes lines; it never decides what is worth logging, and never logs secrets.

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use log::{Level, LevelFilter, Log, Metadata, Record};

use crate::config::LogFormat;

struct StderrLogger {
    format: LogFormat,
    /// stderr is the systemd journal: prefix lines with their syslog priority (`<3>`), which
    /// journald turns into the entry's priority and strips.
    journal: bool,
}

/// Installs the logger. Later calls only change the level (the format is fixed at start).
pub fn init(level: LevelFilter, format: LogFormat) {
    let journal = std::env::var_os("JOURNAL_STREAM").is_some();
    let _ = log::set_boxed_logger(Box::new(StderrLogger { format, journal }));
    set_level(level);
}

pub fn set_level(level: LevelFilter) {
    log::set_max_level(level);
}

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        // Libraries' debug chatter (tungstenite logs every close frame) is not ours to show.
        metadata.level() <= log::max_level()
            && (metadata.target().starts_with("roomcast") || metadata.level() <= Level::Warn)
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let mut line = format_line(self.format, &timestamp(SystemTime::now()), record);
        if self.journal {
            line.insert_str(0, syslog_priority(record.level()));
        }
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

fn syslog_priority(level: Level) -> &'static str {
    match level {
        Level::Error => "<3>",
        Level::Warn => "<4>",
        Level::Info => "<6>",
        Level::Debug | Level::Trace => "<7>",
    }
}

fn format_line(format: LogFormat, ts: &str, record: &Record) -> String {
    match format {
        LogFormat::Text => format!("{ts} {:<5} {}\n", record.level(), record.args()),
        LogFormat::Json => {
            let line = serde_json::json!({
                "ts": ts,
                "level": record.level().as_str().to_ascii_lowercase(),
                "target": record.target(),
                "msg": record.args().to_string(),
            });
            format!("{line}\n")
        }
    }
}

/// RFC 3339 UTC with milliseconds.
fn timestamp(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_795_308_679_123);
        assert_eq!(timestamp(t), "2026-11-22T00:51:19.123Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(&timestamp(leap)[..10], "2000-02-29");
    }

    #[test]
    fn json_lines_are_json() {
        let record =
            Record::builder().args(format_args!("hello \"x\"")).level(Level::Info).target("roomcast::t").build();
        let line = format_line(LogFormat::Json, "T", &record);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["msg"], "hello \"x\"");
        assert_eq!(v["level"], "info");
        let text = format_line(LogFormat::Text, "T", &record);
        assert_eq!(text, "T INFO  hello \"x\"\n");
    }
}
