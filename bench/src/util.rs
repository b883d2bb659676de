//! Small helpers: sizes and durations as the CLI contract spells them, the random payload, hashing, dates.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use rand::{RngCore, SeedableRng};
use sha2::{Digest, Sha256};

/// Set by the Ctrl+C / SIGTERM handler; every polling loop checks it so guards unwind and clean up.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

pub fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// Sleep in short steps so an interruption is noticed quickly.
pub fn sleep_checked(d: Duration) -> Result<()> {
    let end = std::time::Instant::now() + d;
    loop {
        check_interrupted()?;
        let now = std::time::Instant::now();
        if now >= end {
            return Ok(());
        }
        std::thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}

/// Parses `256MiB`, `2GiB`, `52428800`, `1.5GiB` (same units as the CLI contract).
pub fn parse_size(s: &str) -> Result<u64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let num: f64 = num.parse().with_context(|| format!("bad size `{s}`"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        "GiB" | "G" => 1 << 30,
        "TiB" | "T" => 1 << 40,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => bail!("bad size unit `{other}` in `{s}` (use B, KiB, MiB, GiB, TiB)"),
    };
    Ok((num * mult as f64) as u64)
}

/// Parses `500ms`, `10s`, `2m`, `1h`, or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let num: f64 = num.parse().with_context(|| format!("bad duration `{s}`"))?;
    let secs = match unit {
        "ms" => num / 1000.0,
        "" | "s" => num,
        "m" => num * 60.0,
        "h" => num * 3600.0,
        other => bail!("bad duration unit `{other}` in `{s}` (use ms, s, m, h)"),
    };
    Ok(Duration::from_secs_f64(secs))
}

pub fn fmt_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if v.fract() == 0.0 {
        format!("{v:.0}{}", UNITS[i])
    } else {
        format!("{v:.1}{}", UNITS[i])
    }
}

/// Block size for generating and hashing files: large enough for full disk speed, small next to any RSS budget.
const IO_BLOCK: usize = 4 << 20;

/// Writes `size` random bytes to `path` and returns their SHA-256 (hex), computed while writing.
pub fn make_random_file(path: &Path, size: u64, seed: u64) -> Result<String> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut f = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut buf = vec![0u8; IO_BLOCK];
    let mut hasher = Sha256::new();
    let mut left = size;
    while left > 0 {
        check_interrupted()?;
        let n = left.min(IO_BLOCK as u64) as usize;
        rng.fill_bytes(&mut buf[..n]);
        hasher.update(&buf[..n]);
        f.write_all(&buf[..n])
            .with_context(|| format!("writing {}", path.display()))?;
        left -= n as u64;
    }
    f.sync_all()?;
    Ok(hex::encode(hasher.finalize()))
}

/// MB/s of one core hashing a warm in-memory buffer with SHA-256 (sha2, the crate TrackShift hashes with):
/// on a machine where the programs under test share few cores, this bounds what a verified transfer can do.
pub fn sha256_core_mbs() -> f64 {
    let buf = vec![0x5a_u8; 64 << 20];
    let _ = Sha256::digest(&buf); // warm: pages faulted in, clocks up
    let rounds = 4;
    let t = std::time::Instant::now();
    for _ in 0..rounds {
        std::hint::black_box(Sha256::digest(std::hint::black_box(&buf)));
    }
    (rounds * buf.len()) as f64 / t.elapsed().as_secs_f64() / crate::report::MB
}

/// SHA-256 passes over the file that a TrackShift transfer makes (protocol version 3): the chunk and whole-file
/// hashes at the sender, the chunk hashes at the receiver (which checks the whole file by its chunk list).
pub const TRANSFER_SHA256_PASSES: usize = 3;

pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut buf = vec![0u8; IO_BLOCK];
    let mut hasher = Sha256::new();
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Bytes that landed on disk under `dirs` (recursively): the allocated part of each file, so a sparse or
/// preallocated partial file counts what was written rather than its final length.
pub fn bytes_on_disk(dirs: &[&Path]) -> u64 {
    fn walk(p: &Path, total: &mut u64) {
        let Ok(rd) = std::fs::read_dir(p) else { return };
        for e in rd.flatten() {
            let Ok(md) = e.path().symlink_metadata() else {
                continue;
            };
            if md.is_dir() {
                walk(&e.path(), total);
            } else if md.is_file() {
                *total += md.len().min(md.blocks() * 512);
            }
        }
    }
    let mut total = 0;
    for d in dirs {
        walk(d, &mut total);
    }
    total
}

/// UTC date and time as `YYYY-MM-DD-HHMM`, for result folder names.
pub fn utc_stamp() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}-{:02}{:02}",
        rem / 3600,
        (rem % 3600) / 60
    )
}

/// Howard Hinnant's days-to-civil conversion (proleptic Gregorian calendar).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown-host".into())
}

/// Keeps only characters that are safe in a folder name.
pub fn slug(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if c.is_ascii_alphanumeric() || c == '_' || c == '.' {
            out.push(c);
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_end_matches('-').to_string()
}

/// Last `n` lines of a log file, for error messages.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("256MiB").unwrap(), 256 << 20);
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_size("1000").unwrap(), 1000);
        assert!(parse_size("5 parsecs").is_err());
        assert_eq!(fmt_size(256 << 20), "256MiB");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("240s").unwrap(), Duration::from_secs(240));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
    }

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_416), (2025, 11, 24));
    }
}
