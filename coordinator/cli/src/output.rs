//! Output for operators: tables for people, `-o json` for scripts. Times are shown relative
//! ("12s ago") in tables and as Unix milliseconds in JSON.

use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use serde::Serialize;

pub use pitcrew_proto::text::clean;

/// Writes to standard output; every line `pitcrew` prints goes through here.
///
/// When the reader has gone (`pitcrew events | head -1`: a closed pipe) the process ends at once,
/// quietly and with status 0, as `head` meant: nothing is left to say to anyone. Rust ignores
/// SIGPIPE, so without this the write would fail and `println!` panic. Any other write error
/// (a full disk under a redirection) ends the process with status 1, saying so on stderr.
pub fn print(args: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    if let Err(error) = out.write_fmt(args).and_then(|()| out.flush()) {
        if error.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprint(format_args!(
            "pitcrew: cannot write to standard output: {error}\n"
        ));
        std::process::exit(1);
    }
}

/// Writes to standard error, ignoring a closed or missing stderr (nothing else could be told).
pub fn eprint(args: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let mut err = std::io::stderr().lock();
    let _ = err.write_fmt(args).and_then(|()| err.flush());
}

/// `println!` for what people read: the text goes through [`clean`] and [`print`].
#[macro_export]
macro_rules! say {
    () => { $crate::output::print(format_args!("\n")) };
    ($($arg:tt)*) => {
        $crate::output::print(format_args!("{}\n", $crate::output::clean(&format!($($arg)*))))
    };
}

/// `print!` through [`clean`] and [`print`].
#[macro_export]
macro_rules! say_raw {
    ($($arg:tt)*) => {
        $crate::output::print(format_args!("{}", $crate::output::clean(&format!($($arg)*))))
    };
}

/// `eprintln!` through [`clean`] and [`eprint`].
#[macro_export]
macro_rules! say_err {
    ($($arg:tt)*) => {
        $crate::output::eprint(format_args!("{}\n", $crate::output::clean(&format!($($arg)*))))
    };
}

/// One line of JSON (`-o json` streams: one object per line). JSON escapes control characters
/// itself, so this needs no [`clean`].
pub fn json_line<T: Serialize>(value: &T) -> anyhow::Result<()> {
    print(format_args!("{}\n", serde_json::to_string(value)?));
    Ok(())
}

/// The output format chosen with `-o`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    /// Only `pitcrew report`: rows for spreadsheets.
    Csv,
}

/// Prints a value as pretty JSON.
pub fn json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    print(format_args!("{}\n", serde_json::to_string_pretty(value)?));
    Ok(())
}

/// A table with a header row.
pub fn table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table.load_preset(UTF8_BORDERS_ONLY);
    table.set_header(header.iter().map(|h| h.to_uppercase()));
    table
}

/// "3s ago", "5m ago", "never".
pub fn ago(at_ms: i64) -> String {
    if at_ms <= 0 {
        return "never".to_owned();
    }
    let seconds = (pitcrew_proto::now_ms() - at_ms).max(0) / 1000;
    match seconds {
        0..=59 => format!("{seconds}s ago"),
        60..=3599 => format!("{}m ago", seconds / 60),
        3600..=86399 => format!("{}h ago", seconds / 3600),
        _ => format!("{}d ago", seconds / 86400),
    }
}

/// A wall-clock time for event logs (UTC, to the second).
pub fn clock(at_ms: i64) -> String {
    let seconds = at_ms.div_euclid(1000);
    time::OffsetDateTime::from_unix_timestamp(seconds)
        .map(|t| {
            format!(
                "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            )
        })
        .unwrap_or_else(|_| at_ms.to_string())
}

/// Bytes in binary units.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_ages_read_naturally() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 * 1024 * 1024 * 1024), "3.0 GiB");
        assert_eq!(ago(0), "never");
        assert_eq!(ago(pitcrew_proto::now_ms() - 90_000), "1m ago");
        assert_eq!(clock(0), "1970-01-01 00:00:00");
    }
}
