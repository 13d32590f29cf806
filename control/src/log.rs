//! Log output in frp's shape, so scripts that grep frp's logs keep working:
//! `2026-11-24 04:30:00.123 [I] [frps] message` (date, time with milliseconds, a one-letter
//! level, where it came from, the message), to the console or to a file (`log.to`).
//!
//! A log file rotates daily as frp's (fatedier/golib `RotateFileWriter`, daily mode) does:
//! - at the first write of a new local day the file is renamed to
//!   `<stem>.<YYYYMMDD-HHMMSS><ext>` — `frps.log` → `frps.20261125-000000.log`, `frps` →
//!   `frps.20261125-000000` — stamped with the start of the new day (frp stamps the moment
//!   its midnight timer fires, which is the same second), and a new file is started;
//! - then rotated files older than `log.maxDays` days (by the time in their names) are
//!   deleted; `maxDays <= 0` keeps them all;
//! - an existing log file is appended to at startup (it is not rotated then).
//!
//! Unlike frp, rotation happens at the first line written after midnight rather than on
//! a timer, so a day without log lines leaves no empty file behind.

use std::fmt;

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use chrono::{NaiveDate, NaiveDateTime, TimeDelta};
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
        // frp's console colours, applied to the whole line.
        let (letter, color) = match *ev.metadata().level() {
            Level::ERROR => ('E', Some("1;31")),
            Level::WARN => ('W', Some("1;33")),
            Level::INFO => ('I', Some("1;34")),
            Level::DEBUG => ('D', Some("1;36")),
            Level::TRACE => ('T', None),
        };
        let color = color.filter(|_| self.color);
        let target = ev.metadata().target();
        let target = target.rsplit("::").next().unwrap_or(target);
        if let Some(c) = color {
            write!(w, "\x1b[{c}m")?;
        }
        write!(
            w,
            "{} [{letter}] [{target}] ",
            now.format("%Y-%m-%d %H:%M:%S%.3f")
        )?;
        ctx.field_format().format_fields(w.by_ref(), ev)?;
        if color.is_some() {
            write!(w, "\x1b[0m")?;
        }
        writeln!(w)
    }
}

/// Parses frp's `log.level` (trace, debug, info, warn, error).
/// An error and its causes as one line, `outer: cause: …`, leaving out a cause whose text
/// the line already ends with (an error that prints its source, as many do, would otherwise
/// read `…: Address already in use (os error 98): Address already in use (os error 98)`).
pub fn error_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

pub fn parse_level(s: &str) -> Level {
    match s.to_ascii_lowercase().as_str() {
        "trace" => Level::TRACE,
        "debug" => Level::DEBUG,
        "warn" | "warning" => Level::WARN,
        "error" => Level::ERROR,
        _ => Level::INFO,
    }
}

/// Drops the `log` records of crates whose debug output is not for frp's log: `fast_socks5`
/// logs every step of a SOCKS5 handshake, the password bytes included.
struct Quiet;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Quiet {
    fn event_enabled(
        &self,
        ev: &tracing::Event<'_>,
        _: tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        use tracing_log::NormalizeEvent;
        ev.normalized_metadata()
            .is_none_or(|m| !m.target().starts_with("fast_socks5"))
    }
}

/// Installs the global logger with frp's default `log.maxDays` (3). `to` is frp's
/// `log.to`: "console" or a file path.
pub fn init(to: &str, level: &str, disable_color: bool) -> io::Result<()> {
    init_logger(to, level, 3, disable_color)
}

/// Installs the global logger, as frp's `log.InitLogger(to, level, maxDays, disableColor)`:
/// "console" (or "") logs to stdout, in colour on a terminal unless `disable_color`; any
/// other `to` is a file rotated daily, keeping `max_days` days of rotated files.
pub fn init_logger(to: &str, level: &str, max_days: i64, disable_color: bool) -> io::Result<()> {
    let level = parse_level(level);
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_ansi(false);
    let result = if to.is_empty() || to == "console" {
        let color = !disable_color && std::io::IsTerminal::is_terminal(&std::io::stdout());
        builder
            .event_format(FrpFormat { color })
            .with_writer(std::io::stdout)
            .finish()
            .with(Quiet)
            .try_init()
    } else {
        let sink = RotatingFile::new(to, max_days, Arc::new(SystemClock));
        // Open (or create) it now, so that a bad path is an error at startup.
        sink.open()?;
        let sink: &'static RotatingFile = Box::leak(Box::new(sink));
        builder
            .event_format(FrpFormat { color: false })
            .with_writer(move || sink)
            .finish()
            .with(Quiet)
            .try_init()
    };
    // A second init (tests) keeps the first logger.
    let _ = result;
    Ok(())
}

/// A budget for log lines a remote peer can trigger at will (a refused connection, a failed
/// handshake): a burst of `burst` lines, then one a second, so that a flood of bad peers
/// cannot flood the log (or the disk). Lines over the budget are counted and the count goes
/// out with the next line logged. Use it through [`warn_limited!`](crate::warn_limited).
pub struct LineBudget {
    burst: u32,
    state: Mutex<BudgetState>,
}

struct BudgetState {
    tokens: u32,
    /// When the last token was added (`None` before the first line).
    refilled: Option<std::time::Instant>,
    suppressed: u64,
}

impl LineBudget {
    pub const fn new(burst: u32) -> LineBudget {
        LineBudget {
            burst,
            state: Mutex::new(BudgetState {
                tokens: burst,
                refilled: None,
                suppressed: 0,
            }),
        }
    }

    /// Whether a line may be logged now: `Some(lines suppressed since the last one)`, or
    /// `None` (counted as suppressed).
    pub fn take(&self) -> Option<u64> {
        self.take_at(std::time::Instant::now())
    }

    pub(crate) fn take_at(&self, now: std::time::Instant) -> Option<u64> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let last = *st.refilled.get_or_insert(now);
        let secs = now.saturating_duration_since(last).as_secs();
        if secs > 0 {
            st.tokens = (st.tokens as u64 + secs).min(self.burst as u64) as u32;
            st.refilled = Some(last + std::time::Duration::from_secs(secs));
        }
        if st.tokens == 0 {
            st.suppressed += 1;
            return None;
        }
        st.tokens -= 1;
        Some(std::mem::take(&mut st.suppressed))
    }
}

/// The budget shared by frps' warnings about connections refused before login (bad first
/// bytes, failed TLS or QUIC handshakes, silent sessions): 20 lines at once, then 1 a second.
pub static PEER_REFUSALS: LineBudget = LineBudget::new(20);

/// `warn!` within a [`LineBudget`]: `warn_limited!(budget, "format", args…)`. A line that
/// follows suppressed ones ends with "(N similar lines suppressed)".
#[macro_export]
macro_rules! warn_limited {
    ($budget:expr, $($arg:tt)+) => {
        match $budget.take() {
            Some(0) => ::tracing::warn!($($arg)+),
            Some(n) => ::tracing::warn!("{} ({n} similar lines suppressed)", format_args!($($arg)+)),
            None => {}
        }
    };
}

/// Local wall-clock time, injectable for tests.
pub trait Clock: Send + Sync {
    fn now(&self) -> NaiveDateTime;
}

/// The system's local time.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> NaiveDateTime {
        chrono::Local::now().naive_local()
    }
}

/// frp's `backupTimeFormat` ("20060102-150405").
const BACKUP_TIME_FORMAT: &str = "%Y%m%d-%H%M%S";

/// A log file rotated daily, as frp's (see the module docs).
pub struct RotatingFile {
    path: PathBuf,
    max_days: i64,
    clock: Arc<dyn Clock>,
    state: Mutex<FileState>,
}

struct FileState {
    file: Option<File>,
    /// The local day the current file is for.
    day: NaiveDate,
}

impl RotatingFile {
    pub fn new(path: impl Into<PathBuf>, max_days: i64, clock: Arc<dyn Clock>) -> Self {
        let day = clock.now().date();
        Self {
            path: path.into(),
            max_days,
            clock,
            state: Mutex::new(FileState { file: None, day }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FileState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Opens the file (appending to an existing one) if it is not open yet.
    pub fn open(&self) -> io::Result<()> {
        let mut st = self.lock();
        if st.file.is_none() {
            st.file = Some(self.open_existing_or_new()?);
            st.day = self.clock.now().date();
        }
        Ok(())
    }

    /// Rotates now if the day has changed since the file was started, then writes `buf`.
    pub fn write_log(&self, buf: &[u8]) -> io::Result<()> {
        let mut st = self.lock();
        let now = self.clock.now();
        if st.file.is_none() {
            st.file = Some(self.open_existing_or_new()?);
            st.day = now.date();
        } else if now.date() > st.day {
            st.file = None;
            let start_of_day = now.date().and_time(chrono::NaiveTime::MIN);
            st.file = Some(self.open_new(start_of_day)?);
            st.day = now.date();
            // As frp: a failure to clean up does not stop logging.
            let _ = self.clear_files(now);
        }
        match st.file.as_mut() {
            Some(f) => f.write_all(buf),
            None => Ok(()),
        }
    }

    fn open_existing_or_new(&self) -> io::Result<File> {
        if !self.path.exists() {
            return self.open_new(self.clock.now());
        }
        match OpenOptions::new().append(true).open(&self.path) {
            Ok(f) => Ok(f),
            Err(_) => self.open_new(self.clock.now()),
        }
    }

    /// Moves an existing file aside (named for `stamp`) and starts a new one with its mode
    /// (0600 for a first file).
    fn open_new(&self, stamp: NaiveDateTime) -> io::Result<File> {
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let mut mode = 0o600;
        if let Ok(meta) = std::fs::metadata(&self.path) {
            mode = meta.permissions().mode() & 0o7777;
            std::fs::rename(&self.path, backup_name(&self.path, stamp))?;
        }
        let f = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(mode)
            .open(&self.path)?;
        // The mode exactly, whatever the umask.
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        Ok(f)
    }

    /// Rotated files of this log, oldest first, with the time in their names.
    pub fn backups(&self) -> io::Result<Vec<(NaiveDateTime, PathBuf)>> {
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let (stem, ext) = split_ext(&self.path);
        let prefix = format!("{stem}.");
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(stamp) = name
                .strip_prefix(&prefix)
                .and_then(|rest| rest.strip_suffix(&ext))
            else {
                continue;
            };
            if let Ok(t) = NaiveDateTime::parse_from_str(stamp, BACKUP_TIME_FORMAT) {
                out.push((t, entry.path()));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Deletes rotated files whose time is more than `max_days` days before `now` (frp's
    /// cutoff: `now - maxDays*24h + 5ms`).
    fn clear_files(&self, now: NaiveDateTime) -> io::Result<()> {
        if self.max_days <= 0 {
            return Ok(());
        }
        let cutoff = now - TimeDelta::days(self.max_days) + TimeDelta::milliseconds(5);
        for (t, path) in self.backups()? {
            if t < cutoff {
                let _ = std::fs::remove_file(path);
            }
        }
        Ok(())
    }
}

/// Go's `filepath.Ext` split of the file name: ("frps", ".log"), ("frps", "").
fn split_ext(path: &Path) -> (String, String) {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match name.rfind('.') {
        Some(at) => (name[..at].to_owned(), name[at..].to_owned()),
        None => (name, String::new()),
    }
}

/// frp's `backupName`: `dir/<stem>.<YYYYMMDD-HHMMSS><ext>`.
fn backup_name(path: &Path, t: NaiveDateTime) -> PathBuf {
    let (stem, ext) = split_ext(path);
    let name = format!("{stem}.{}{ext}", t.format(BACKUP_TIME_FORMAT));
    match path.parent() {
        Some(dir) => dir.join(name),
        None => PathBuf::from(name),
    }
}

impl Write for &RotatingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_log(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.lock().file.as_mut() {
            Some(f) => f.flush(),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    #[derive(Debug)]
    struct Outer(std::io::Error);
    impl std::fmt::Display for Outer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "listen on x: {}", self.0)
        }
    }
    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn error_text_names_each_cause_once() {
        let e = Outer(std::io::Error::from_raw_os_error(98));
        assert_eq!(
            super::error_text(&e),
            "listen on x: Address already in use (os error 98)"
        );
        let e = std::io::Error::other(Outer(std::io::Error::other("inner")));
        assert_eq!(super::error_text(&e), "listen on x: inner");
    }

    use super::*;

    #[test]
    fn line_budget_allows_a_burst_then_one_a_second_and_counts_the_rest() {
        use std::time::{Duration, Instant};
        let b = LineBudget::new(3);
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        for _ in 0..3 {
            assert_eq!(b.take_at(at(0)), Some(0));
        }
        for ms in [0, 10, 500, 999] {
            assert_eq!(b.take_at(at(ms)), None);
        }
        // One token a second; the line says how many were dropped before it.
        assert_eq!(b.take_at(at(1000)), Some(4));
        assert_eq!(b.take_at(at(1500)), None);
        assert_eq!(b.take_at(at(2000)), Some(1));
        assert_eq!(b.take_at(at(2001)), None);
        // A flood of 10 000 over 10 s gets through about 10 lines.
        let through = (0..10_000u64)
            .filter(|i| b.take_at(at(3000 + i)).is_some())
            .count();
        assert!((9..=11).contains(&through), "{through}");
        // Quiet refills up to the burst, not beyond.
        for _ in 0..3 {
            assert!(b.take_at(at(60_000)).is_some());
        }
        assert_eq!(b.take_at(at(60_000)), None);
    }

    struct FakeClock(Mutex<NaiveDateTime>);

    impl FakeClock {
        fn at(s: &str) -> Arc<Self> {
            Arc::new(Self(Mutex::new(t(s))))
        }
        fn set(&self, s: &str) {
            *self.0.lock().unwrap() = t(s);
        }
    }

    impl Clock for FakeClock {
        fn now(&self) -> NaiveDateTime {
            *self.0.lock().unwrap()
        }
    }

    fn t(s: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.3f").unwrap()
    }

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("frp-uring-log-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn names(w: &RotatingFile) -> Vec<String> {
        w.backups()
            .unwrap()
            .into_iter()
            .map(|(_, p)| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect()
    }

    fn read(p: impl AsRef<Path>) -> String {
        std::fs::read_to_string(p).unwrap()
    }

    #[test]
    fn rotates_at_day_change_with_frp_names() {
        let d = dir("rotate");
        let path = d.join("logs").join("frps.log");
        let clock = FakeClock::at("2026-11-24 10:00:00.000");
        let w = RotatingFile::new(&path, 3, clock.clone());
        w.write_log(b"one\n").unwrap();
        clock.set("2026-11-24 23:59:59.999");
        w.write_log(b"two\n").unwrap();
        assert!(names(&w).is_empty(), "same day: no rotation");
        clock.set("2026-11-25 00:00:00.001");
        w.write_log(b"three\n").unwrap();
        assert_eq!(names(&w), ["frps.20261125-000000.log"]);
        assert_eq!(read(d.join("logs/frps.20261125-000000.log")), "one\ntwo\n");
        assert_eq!(read(&path), "three\n");

        // Without an extension the stamp goes last.
        let bare = d.join("frpc");
        let w = RotatingFile::new(&bare, 3, clock.clone());
        w.write_log(b"a\n").unwrap();
        clock.set("2026-11-26 08:30:00.000");
        w.write_log(b"b\n").unwrap();
        assert_eq!(names(&w), ["frpc.20261126-000000"]);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn max_days_removes_old_rotated_files() {
        // golib's TestRotateFileWriter_RotateDaily, MaxDays = 2.
        let d = dir("maxdays");
        let path = d.join("test.log");
        let clock = FakeClock::at("2026-03-10 12:00:00.000");
        let w = RotatingFile::new(&path, 2, clock.clone());
        std::fs::write(d.join("test.log.bak"), "x").unwrap();
        std::fs::write(d.join("other.20260101-000000.log"), "x").unwrap();
        std::fs::write(d.join("test.2026-01-01.log"), "x").unwrap();
        w.write_log(b"day0\n").unwrap();
        clock.set("2026-03-11 00:00:00.001");
        w.write_log(b"day1\n").unwrap();
        assert_eq!(names(&w), ["test.20260311-000000.log"]);
        clock.set("2026-03-12 00:00:00.001");
        w.write_log(b"day2\n").unwrap();
        assert_eq!(
            names(&w),
            ["test.20260311-000000.log", "test.20260312-000000.log"]
        );
        clock.set("2026-03-13 00:00:00.001");
        w.write_log(b"day3\n").unwrap();
        assert_eq!(
            names(&w),
            ["test.20260312-000000.log", "test.20260313-000000.log"]
        );
        // Files that are not this log's backups are left alone.
        for other in [
            "test.log.bak",
            "other.20260101-000000.log",
            "test.2026-01-01.log",
        ] {
            assert!(d.join(other).exists(), "{other}");
        }
        assert_eq!(read(&path), "day3\n");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn max_days_zero_keeps_everything_and_restart_appends() {
        let d = dir("keep");
        let path = d.join("frpc.log");
        std::fs::write(&path, "before restart\n").unwrap();
        let clock = FakeClock::at("2026-01-01 09:00:00.000");
        let w = RotatingFile::new(&path, 0, clock.clone());
        w.open().unwrap();
        w.write_log(b"after\n").unwrap();
        assert_eq!(read(&path), "before restart\nafter\n");
        for day in 2..=6 {
            clock.set(&format!("2026-01-{day:02} 00:00:01.000"));
            w.write_log(b"x\n").unwrap();
        }
        assert_eq!(names(&w).len(), 5);
        // A clock that goes back does not rotate (nor overwrite a backup).
        clock.set("2026-01-03 12:00:00.000");
        w.write_log(b"y\n").unwrap();
        assert_eq!(names(&w).len(), 5);
        assert_eq!(read(&path), "x\ny\n");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn rotation_keeps_the_file_mode() {
        let d = dir("mode");
        let path = d.join("frps.log");
        let clock = FakeClock::at("2026-01-01 09:00:00.000");
        let w = RotatingFile::new(&path, 3, clock.clone());
        w.write_log(b"a\n").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        clock.set("2026-01-02 00:00:00.000");
        w.write_log(b"b\n").unwrap();
        assert_eq!(mode(&path), 0o644);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn levels_parse_like_frp() {
        assert_eq!(parse_level("TRACE"), Level::TRACE);
        assert_eq!(parse_level("warn"), Level::WARN);
        assert_eq!(parse_level("bogus"), Level::INFO);
    }
}
