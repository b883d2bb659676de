//! Named profiles, value parsers (rates, durations, percentages) and command-line overrides.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::model::{GilbertElliott, LinkConfig, Outage};

/// Mean burst length (packets in the bad state) used when only a mean burst loss is given.
pub const DEFAULT_BURST_LEN: f64 = 5.0;

/// A named profile: the same [`LinkConfig`] in both directions (delay is one-way).
#[derive(Debug, Clone, Copy)]
pub struct Profile {
    pub name: &'static str,
    pub summary: &'static str,
}

/// All profiles, in display order.
pub const PROFILES: &[Profile] = &[
    Profile {
        name: "clean",
        summary: "no rate limit, delay or loss: the emulator's own ceiling",
    },
    Profile {
        name: "clean-1g",
        summary: "1 Gbit/s, no delay, no loss: a clean gigabit link",
    },
    Profile {
        name: "fast",
        summary: "1 Gbit/s, 30 ms one-way, 0.5% random loss",
    },
    Profile {
        name: "wan",
        summary: "200 Mbit/s, 50 ms one-way, 1% random loss",
    },
    Profile {
        name: "lossy",
        summary: "100 Mbit/s, 100 ms one-way, 5% random loss, 10 ms jitter",
    },
    Profile {
        name: "sat",
        summary: "50 Mbit/s, 300 ms one-way, 2% random loss",
    },
    Profile {
        name: "burst",
        summary:
            "100 Mbit/s, 40 ms one-way, Gilbert-Elliott loss averaging 3% in bursts of 5 packets",
    },
    Profile {
        name: "flaky",
        summary: "100 Mbit/s, 20 ms one-way, 1% loss, a 3 s outage every 20 s",
    },
];

const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The link of a named profile (`None` if unknown).
pub fn profile(name: &str) -> Option<LinkConfig> {
    let base = LinkConfig::default();
    let mbit = |n: u64| Some(n * 1_000_000);
    Some(match name {
        "clean" => base,
        "clean-1g" => LinkConfig {
            rate_bps: mbit(1000),
            ..base
        },
        "fast" => LinkConfig {
            rate_bps: mbit(1000),
            delay: ms(30),
            loss: 0.005,
            ..base
        },
        "wan" => LinkConfig {
            rate_bps: mbit(200),
            delay: ms(50),
            loss: 0.01,
            ..base
        },
        "lossy" => LinkConfig {
            rate_bps: mbit(100),
            delay: ms(100),
            loss: 0.05,
            jitter: ms(10),
            ..base
        },
        "sat" => LinkConfig {
            rate_bps: mbit(50),
            delay: ms(300),
            loss: 0.02,
            ..base
        },
        "burst" => LinkConfig {
            rate_bps: mbit(100),
            delay: ms(40),
            burst: GilbertElliott::from_mean(0.03, DEFAULT_BURST_LEN, 1.0).ok(),
            ..base
        },
        "flaky" => LinkConfig {
            rate_bps: mbit(100),
            delay: ms(20),
            loss: 0.01,
            outage: Some(Outage {
                down: Duration::from_secs(3),
                every: Duration::from_secs(20),
            }),
            ..base
        },
        _ => return None,
    })
}

/// A one-line human description of a link.
pub fn describe(c: &LinkConfig) -> String {
    let mut parts = vec![match c.rate_bps {
        Some(r) => format!("rate {}", fmt_rate(r)),
        None => "no rate limit".to_string(),
    }];
    if c.rate_bps.is_some() {
        parts.push(format!(
            "queue {} ms ({} KiB)",
            c.queue.as_millis(),
            c.queue_bytes().unwrap_or(0) / 1024
        ));
    }
    parts.push(format!("delay {} ms", c.delay.as_secs_f64() * 1e3));
    if !c.jitter.is_zero() {
        parts.push(format!(
            "jitter ±{} ms{}",
            c.jitter.as_secs_f64() * 1e3,
            if c.jitter_reorders {
                " (may reorder)"
            } else {
                ""
            }
        ));
    }
    if c.loss > 0.0 {
        parts.push(format!("loss {}%", c.loss * 100.0));
    }
    if let Some(ge) = &c.burst {
        parts.push(format!(
            "GE burst loss {:.2}% (p {:.5}, r {:.3}, bad-state loss {}%)",
            ge.mean_loss() * 100.0,
            ge.p,
            ge.r,
            ge.loss_bad * 100.0
        ));
    }
    if c.reorder > 0.0 {
        parts.push(format!(
            "reorder {}% by +{} ms",
            c.reorder * 100.0,
            c.reorder_delay.as_secs_f64() * 1e3
        ));
    }
    if c.duplicate > 0.0 {
        parts.push(format!("duplicate {}%", c.duplicate * 100.0));
    }
    if c.corrupt > 0.0 {
        parts.push(format!(
            "corrupt {}%{}",
            c.corrupt * 100.0,
            if c.fix_checksum {
                " (checksum fixed)"
            } else {
                ""
            }
        ));
    }
    if let Some(o) = &c.outage {
        parts.push(format!(
            "outage {} s every {} s",
            o.down.as_secs_f64(),
            o.every.as_secs_f64()
        ));
    }
    parts.join(", ")
}

fn fmt_rate(bps: u64) -> String {
    if bps.is_multiple_of(1_000_000_000) {
        format!("{} Gbit/s", bps / 1_000_000_000)
    } else if bps.is_multiple_of(1_000_000) {
        format!("{} Mbit/s", bps / 1_000_000)
    } else if bps.is_multiple_of(1000) {
        format!("{} kbit/s", bps / 1000)
    } else {
        format!("{bps} bit/s")
    }
}

fn split_num(s: &str) -> Result<(f64, String), String> {
    let s = s.trim();
    let idx = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(idx);
    let v: f64 = num
        .parse()
        .map_err(|_| format!("`{s}`: expected a number"))?;
    if !v.is_finite() || v < 0.0 {
        return Err(format!("`{s}`: must be a non-negative number"));
    }
    Ok((v, unit.trim().to_string()))
}

/// Durations: `500ms`, `10s`, `2m`, `1h`, `250us`; a plain number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (v, unit) = split_num(s)?;
    let secs = match unit.as_str() {
        "" | "s" | "sec" => v,
        "ms" => v / 1e3,
        "us" | "µs" => v / 1e6,
        "ns" => v / 1e9,
        "m" | "min" => v * 60.0,
        "h" => v * 3600.0,
        _ => {
            return Err(format!(
                "`{s}`: unknown duration unit `{unit}` (use ms, s, m, h)"
            ))
        }
    };
    Ok(Duration::from_secs_f64(secs))
}

/// Rates in bits per second: `100Mbit`, `1Gbit`, `250kbit`, `100Mbps`, bytes with `MB/s`; a plain number
/// is bit/s. `0`, `none` and `unlimited` mean no limit (`None`).
pub fn parse_rate(s: &str) -> Result<Option<u64>, String> {
    let t = s.trim();
    if matches!(t, "none" | "unlimited" | "off") {
        return Ok(None);
    }
    let (v, unit) = split_num(t)?;
    let mult = match unit.as_str() {
        "" | "bit" | "bps" | "bit/s" => 1.0,
        "k" | "kbit" | "kbps" | "Kbit" | "kbit/s" => 1e3,
        "M" | "Mbit" | "Mbps" | "mbit" | "Mbit/s" => 1e6,
        "G" | "Gbit" | "Gbps" | "gbit" | "Gbit/s" => 1e9,
        "B/s" => 8.0,
        "kB/s" | "KB/s" => 8e3,
        "MB/s" => 8e6,
        "GB/s" => 8e9,
        _ => {
            return Err(format!(
                "`{s}`: unknown rate unit `{unit}` (use kbit, Mbit, Gbit, Mbps, MB/s)"
            ))
        }
    };
    let bps = (v * mult).round() as u64;
    Ok((bps > 0).then_some(bps))
}

/// Percentages: `5%` or `5` mean 5% (returned as the fraction 0.05).
pub fn parse_percent(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let (v, unit) = split_num(t.trim_end_matches('%'))?;
    if !unit.is_empty() {
        return Err(format!("`{s}`: expected a percentage like 5%"));
    }
    if v > 100.0 {
        return Err(format!("`{s}`: more than 100%"));
    }
    Ok(v / 100.0)
}

/// Outage `DOWN/EVERY`, e.g. `3s/20s`; `none` disables.
pub fn parse_outage(s: &str) -> Result<Option<Outage>, String> {
    if s.trim() == "none" {
        return Ok(None);
    }
    let (d, e) = s
        .split_once('/')
        .ok_or_else(|| format!("`{s}`: expected DOWN/EVERY, e.g. 3s/20s"))?;
    let o = Outage {
        down: parse_duration(d)?,
        every: parse_duration(e)?,
    };
    if o.down >= o.every {
        return Err(format!("`{s}`: the outage must be shorter than its period"));
    }
    Ok(Some(o))
}

/// Values that override (or extend) a profile. Every field left `None` keeps the profile's value.
/// Strings use the command-line syntax, so the same struct drives the binary and [`crate::Lab`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LinkOverrides {
    pub rate: Option<String>,
    pub queue: Option<String>,
    pub delay: Option<String>,
    pub jitter: Option<String>,
    pub jitter_reorders: bool,
    pub loss: Option<String>,
    pub burst_loss: Option<String>,
    pub burst_len: Option<f64>,
    pub burst_bad_loss: Option<String>,
    pub reorder: Option<String>,
    pub reorder_delay: Option<String>,
    pub duplicate: Option<String>,
    pub corrupt: Option<String>,
    pub fix_checksum: bool,
    pub outage: Option<String>,
}

impl LinkOverrides {
    /// Applies the overrides to `base` (a profile, or `LinkConfig::default()`), then validates.
    pub fn apply(&self, base: LinkConfig) -> Result<LinkConfig, String> {
        let mut c = base;
        if let Some(v) = &self.rate {
            c.rate_bps = parse_rate(v)?;
        }
        if let Some(v) = &self.queue {
            c.queue = parse_duration(v)?;
        }
        if let Some(v) = &self.delay {
            c.delay = parse_duration(v)?;
        }
        if let Some(v) = &self.jitter {
            c.jitter = parse_duration(v)?;
        }
        c.jitter_reorders |= self.jitter_reorders;
        if let Some(v) = &self.loss {
            c.loss = parse_percent(v)?;
        }
        if self.burst_loss.is_some() || self.burst_len.is_some() || self.burst_bad_loss.is_some() {
            let mean = match (&self.burst_loss, &c.burst) {
                (Some(v), _) => parse_percent(v)?,
                (None, Some(ge)) => ge.mean_loss(),
                (None, None) => return Err("--burst-len/--burst-bad-loss need --burst-loss".into()),
            };
            let len = match (self.burst_len, &c.burst) {
                (Some(l), _) => l,
                (None, Some(ge)) if ge.r > 0.0 => 1.0 / ge.r,
                _ => DEFAULT_BURST_LEN,
            };
            let bad = match (&self.burst_bad_loss, &c.burst) {
                (Some(v), _) => parse_percent(v)?,
                (None, Some(ge)) => ge.loss_bad,
                (None, None) => 1.0,
            };
            c.burst = if mean == 0.0 {
                None
            } else {
                Some(GilbertElliott::from_mean(mean, len, bad)?)
            };
        }
        if let Some(v) = &self.reorder {
            c.reorder = parse_percent(v)?;
        }
        if let Some(v) = &self.reorder_delay {
            c.reorder_delay = parse_duration(v)?;
        }
        if let Some(v) = &self.duplicate {
            c.duplicate = parse_percent(v)?;
        }
        if let Some(v) = &self.corrupt {
            c.corrupt = parse_percent(v)?;
        }
        c.fix_checksum |= self.fix_checksum;
        if let Some(v) = &self.outage {
            c.outage = parse_outage(v)?;
        }
        c.validate()?;
        Ok(c)
    }

    /// The same overrides as `trackshift-netlab up` flags.
    pub fn to_args(&self) -> Vec<String> {
        let mut a = Vec::new();
        let mut opt = |flag: &str, v: &Option<String>| {
            if let Some(v) = v {
                a.push(format!("--{flag}"));
                a.push(v.clone());
            }
        };
        opt("rate", &self.rate);
        opt("queue", &self.queue);
        opt("delay", &self.delay);
        opt("jitter", &self.jitter);
        opt("loss", &self.loss);
        opt("burst-loss", &self.burst_loss);
        opt("burst-bad-loss", &self.burst_bad_loss);
        opt("reorder", &self.reorder);
        opt("reorder-delay", &self.reorder_delay);
        opt("duplicate", &self.duplicate);
        opt("corrupt", &self.corrupt);
        opt("outage", &self.outage);
        if let Some(l) = self.burst_len {
            a.push("--burst-len".into());
            a.push(l.to_string());
        }
        if self.jitter_reorders {
            a.push("--jitter-reorders".into());
        }
        if self.fix_checksum {
            a.push("--fix-checksum".into());
        }
        a
    }
}

/// Resolves a profile name (or none) plus overrides into the link of each direction.
pub fn resolve(
    profile_name: Option<&str>,
    overrides: &LinkOverrides,
) -> Result<LinkConfig, String> {
    let base = match profile_name {
        Some(p) => profile(p).ok_or_else(|| {
            let names: Vec<_> = PROFILES.iter().map(|p| p.name).collect();
            format!("unknown profile `{p}` (known: {})", names.join(", "))
        })?,
        None => LinkConfig::default(),
    };
    overrides.apply(base)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsers() {
        assert_eq!(parse_rate("100Mbit").unwrap(), Some(100_000_000));
        assert_eq!(parse_rate("1Gbps").unwrap(), Some(1_000_000_000));
        assert_eq!(parse_rate("250kbit").unwrap(), Some(250_000));
        assert_eq!(parse_rate("12.5MB/s").unwrap(), Some(100_000_000));
        assert_eq!(parse_rate("none").unwrap(), None);
        assert!(parse_rate("fast").is_err());
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("3 parsecs").is_err());
        assert!((parse_percent("5%").unwrap() - 0.05).abs() < 1e-12);
        assert!((parse_percent("0.5").unwrap() - 0.005).abs() < 1e-12);
        assert!(parse_percent("150%").is_err());
        assert_eq!(
            parse_outage("3s/20s").unwrap(),
            Some(Outage {
                down: Duration::from_secs(3),
                every: Duration::from_secs(20)
            })
        );
        assert!(parse_outage("20s/3s").is_err());
    }

    #[test]
    fn every_profile_resolves_and_matches_the_issue() {
        for p in PROFILES {
            resolve(Some(p.name), &LinkOverrides::default()).unwrap();
        }
        let lossy = profile("lossy").unwrap();
        assert_eq!(lossy.rate_bps, Some(100_000_000));
        assert_eq!(lossy.delay, Duration::from_millis(100));
        assert_eq!(lossy.jitter, Duration::from_millis(10));
        assert!((lossy.loss - 0.05).abs() < 1e-12);
        let burst = profile("burst").unwrap();
        assert!((burst.burst.unwrap().mean_loss() - 0.03).abs() < 1e-9);
        assert!(profile("flaky").unwrap().outage.is_some());
        let fast = profile("fast").unwrap();
        assert_eq!(fast.rate_bps, Some(1_000_000_000));
        assert_eq!(fast.delay, Duration::from_millis(30));
        assert!((fast.loss - 0.005).abs() < 1e-12);
        let clean_1g = profile("clean-1g").unwrap();
        assert_eq!(clean_1g.rate_bps, Some(1_000_000_000));
        assert_eq!((clean_1g.delay, clean_1g.loss), (Duration::ZERO, 0.0));
        assert_eq!(profile("clean").unwrap(), LinkConfig::default());
        assert!(resolve(Some("moon"), &LinkOverrides::default()).is_err());
    }

    #[test]
    fn overrides_extend_a_profile() {
        let o = LinkOverrides {
            loss: Some("2%".into()),
            reorder: Some("1%".into()),
            ..Default::default()
        };
        let c = resolve(Some("wan"), &o).unwrap();
        assert!((c.loss - 0.02).abs() < 1e-12);
        assert!((c.reorder - 0.01).abs() < 1e-12);
        assert_eq!(c.rate_bps, Some(200_000_000));
        // No profile: flags only.
        let o = LinkOverrides {
            rate: Some("10Mbit".into()),
            burst_loss: Some("1%".into()),
            ..Default::default()
        };
        let c = resolve(None, &o).unwrap();
        assert_eq!(c.rate_bps, Some(10_000_000));
        assert!((c.burst.unwrap().r - 1.0 / DEFAULT_BURST_LEN).abs() < 1e-12);
        // Changing only the burst length keeps the profile's mean.
        let o = LinkOverrides {
            burst_len: Some(10.0),
            ..Default::default()
        };
        let c = resolve(Some("burst"), &o).unwrap();
        assert!((c.burst.unwrap().mean_loss() - 0.03).abs() < 1e-9);
        assert!((c.burst.unwrap().r - 0.1).abs() < 1e-12);
    }

    #[test]
    fn overrides_round_trip_as_flags() {
        let o = LinkOverrides {
            rate: Some("50Mbit".into()),
            delay: Some("20ms".into()),
            fix_checksum: true,
            burst_len: Some(3.0),
            burst_loss: Some("2%".into()),
            ..Default::default()
        };
        let a = o.to_args();
        assert!(a.windows(2).any(|w| w[0] == "--rate" && w[1] == "50Mbit"));
        assert!(a.contains(&"--fix-checksum".to_string()));
        assert!(a.windows(2).any(|w| w[0] == "--burst-len" && w[1] == "3"));
    }
}
