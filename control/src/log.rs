//! Log output in frp's shape, so scripts that grep frp's logs keep working:
//! `2026-11-24 04:30:00.123 [I] [frps] message` (date, time with milliseconds, a one-letter
//! level, where it came from, the message), to the console or to a file (`log.to`).

use std::fmt;
use std::io::Write;
use std::sync::Mutex;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// frp's log line layout.
struct FrpFormat {
    color: bool,
}

impl<S, N> FormatEvent<S, N> for FrpFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        ev: &Event<'_>,
    ) -> fmt::Result {
        let now = chrono::Local::now();
        let (letter, color) = match *ev.metadata().level() {
            Level::ERROR => ('E', "\x1b[31m"),
            Level::WARN => ('W', "\x1b[33m"),
            Level::INFO => ('I', "\x1b[34m"),
            Level::DEBUG => ('D', "\x1b[36m"),
            Level::TRACE => ('T', "\x1b[37m"),
        };
        let target = ev.metadata().target();
        let target = target.rsplit("::").next().unwrap_or(target);
        if self.color {
            write!(
                w,
                "{} {color}[{letter}]\x1b[0m [{target}] ",
                now.format("%Y-%m-%d %H:%M:%S%.3f")
            )?;
        } else {
            write!(
                w,
                "{} [{letter}] [{target}] ",
                now.format("%Y-%m-%d %H:%M:%S%.3f")
            )?;
        }
        ctx.field_format().format_fields(w.by_ref(), ev)?;
        writeln!(w)
    }
}

/// Parses frp's `log.level` (trace, debug, info, warn, error).
pub fn parse_level(s: &str) -> Level {
    match s.to_ascii_lowercase().as_str() {
        "trace" => Level::TRACE,
        "debug" => Level::DEBUG,
        "warn" | "warning" => Level::WARN,
        "error" => Level::ERROR,
        _ => Level::INFO,
    }
}

/// A file opened for appending, shared by all threads.
struct FileSink(Mutex<std::fs::File>);

impl Write for &FileSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).flush()
    }
}

/// Installs the global logger. `to` is frp's `log.to`: "console" or a file path.
pub fn init(to: &str, level: &str, disable_color: bool) -> std::io::Result<()> {
    let level = parse_level(level);
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_ansi(false);
    let result = if to.is_empty() || to == "console" {
        let color = !disable_color && std::io::IsTerminal::is_terminal(&std::io::stdout());
        builder
            .event_format(FrpFormat { color })
            .with_writer(std::io::stdout)
            .try_init()
    } else {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(to)?;
        let sink: &'static FileSink = Box::leak(Box::new(FileSink(Mutex::new(f))));
        builder
            .event_format(FrpFormat { color: false })
            .with_writer(move || sink)
            .try_init()
    };
    // A second init (tests) keeps the first logger.
    let _ = result;
    Ok(())
}
