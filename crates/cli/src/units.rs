//! Sizes, rates and durations as the command-line contract writes them.

use std::time::Duration;

/// `50MiB`, `1GiB`, `52428800`, `512KiB`, `2TiB`, `100B` (binary units only, as the contract says).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        other => {
            return Err(format!(
                "unknown size unit `{other}` in `{s}`: use B, KiB, MiB, GiB or TiB"
            ))
        }
    };
    let value = scaled(num, mult)
        .ok_or_else(|| format!("`{s}` is not a size (e.g. 50MiB, 1GiB, 52428800)"))?;
    Ok(value as u64)
}

/// Bits per second with SI units (`100Mbit`, `1Gbit`, `250kbit`, `100Mbps`) or bytes per second (`50MB/s`);
/// returns bytes per second.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bits_per_unit: f64 = match unit.trim() {
        "bit" | "bps" => 1.0,
        "kbit" | "Kbit" | "kbps" | "Kbps" => 1e3,
        "Mbit" | "Mbps" => 1e6,
        "Gbit" | "Gbps" => 1e9,
        "B/s" => 8.0,
        "kB/s" | "KB/s" => 8e3,
        "MB/s" => 8e6,
        "GB/s" => 8e9,
        other => {
            return Err(format!(
                "unknown rate unit `{other}` in `{s}`: use e.g. 100Mbit, 1Gbit, 250kbit or 50MB/s"
            ))
        }
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a rate (e.g. 100Mbit, 50MB/s)"))?;
    let bytes = v * bits_per_unit / 8.0;
    if !(bytes.is_finite() && bytes >= 1.0) {
        return Err(format!("rate `{s}` is too small: at least 8bit"));
    }
    Ok(bytes as u64)
}

/// `500ms`, `10s`, `2m`, `1h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let secs_per_unit = match unit {
        "ms" => 1e-3,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => {
            return Err(format!(
                "`{s}` is not a duration: use e.g. 500ms, 10s, 2m or 1h"
            ))
        }
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration: use e.g. 500ms, 10s, 2m or 1h"))?;
    Duration::try_from_secs_f64(v * secs_per_unit)
        .map_err(|_| format!("duration `{s}` is out of range"))
}

fn scaled(num: &str, mult: u64) -> Option<f64> {
    let v: f64 = num.parse().ok()?;
    let r = v * mult as f64;
    (r.is_finite() && r >= 0.0 && r < u64::MAX as f64 && (num.contains('.') || r.fract() == 0.0))
        .then_some(r.floor())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("50MiB").unwrap(), 50 << 20);
        // `--chunk-size` defaults to the string "50MiB": it must stay the protocol's default.
        assert_eq!(
            parse_size("50MiB").unwrap(),
            trackshift_engine::DEFAULT_CHUNK_SIZE
        );
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("52428800").unwrap(), 52_428_800);
        assert_eq!(parse_size("100B").unwrap(), 100);
        assert_eq!(parse_size("1.5KiB").unwrap(), 1536);
        assert!(parse_size("50MB").is_err());
        assert!(parse_size("abc").is_err());
        assert!(parse_size("").is_err());
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("100Mbit").unwrap(), 12_500_000);
        assert_eq!(parse_rate("1Gbit").unwrap(), 125_000_000);
        assert_eq!(parse_rate("250kbit").unwrap(), 31_250);
        assert_eq!(parse_rate("100Mbps").unwrap(), 12_500_000);
        assert_eq!(parse_rate("50MB/s").unwrap(), 50_000_000);
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("0Mbit").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert!(parse_duration("10").is_err());
    }
}
