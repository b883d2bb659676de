//! Reed-Solomon parity for blocks (reed-solomon-simd), the parity policy, and the receiver's per-block
//! assembly.
//!
//! A block of `k` original shards travels with `m` recovery shards; any `k` of the `k + m` rebuild it. `m` is
//! fixed per block when the sender first queues it: `--parity K+M` fixes both, `--parity auto` uses
//! [`AUTO_DATA_SHARDS`] and picks `m` from the loss the receiver reports (see [`auto_parity`]). Whatever FEC
//! cannot rebuild, NACKs repair by re-sending the original shards the receiver lacks.

use reed_solomon_simd::{ReedSolomonDecoder, ReedSolomonEncoder};

/// Original shards per block under `--parity auto`: large blocks keep the parity needed for a given loss
/// rate close to that rate.
pub const AUTO_DATA_SHARDS: u8 = 64;
/// Most original shards per block. A block is held whole on both ends until it completes, so this, times the
/// shard size, bounds a block's memory (2 MiB with the 16 KiB shards the CLI uses at most).
pub const MAX_DATA_SHARDS: u8 = 128;
/// Most recovery shards a block may carry.
pub const MAX_PARITY: u8 = 64;
/// Loss below which `--parity auto` adds no parity at all (0.05%): a clean link carries none, and the rare loss
/// there costs one NACK round trip.
const MIN_PARITY_LOSS: f64 = 0.0005;
/// Loss that `--parity auto` plans for at most (50%): there a block already gets (nearly) the most parity it
/// may, and the binomial sums stay well within range.
const MAX_PLANNED_LOSS: f64 = 0.5;
/// Share of blocks that `--parity auto` aims to rebuild without a round trip: a majority, but not much more,
/// because every extra parity shard travels whether needed or not (bytes on the wire stay near 1 + loss).
pub const AUTO_TARGET: f64 = 0.6;

/// How much redundancy blocks carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParityMode {
    /// `k` original and `m` recovery shards per block, whatever the loss.
    Fixed { data: u8, parity: u8 },
    /// [`AUTO_DATA_SHARDS`] per block, recovery shards from the measured loss.
    Auto,
}

impl ParityMode {
    /// Parses `auto` or `K+M` (e.g. `10+3`).
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.eq_ignore_ascii_case("auto") {
            return Ok(Self::Auto);
        }
        let bad = || {
            format!("--parity `{s}`: use auto or K+M with 1 <= K <= {MAX_DATA_SHARDS} and M <= {MAX_PARITY} (e.g. 10+3)")
        };
        let (k, m) = s.split_once('+').ok_or_else(bad)?;
        let data: u8 = k.trim().parse().map_err(|_| bad())?;
        let parity: u8 = m.trim().parse().map_err(|_| bad())?;
        if data == 0 || data > MAX_DATA_SHARDS || parity > MAX_PARITY {
            return Err(bad());
        }
        Ok(Self::Fixed { data, parity })
    }

    /// Original shards per full block.
    pub fn data_shards(&self) -> u8 {
        match self {
            Self::Fixed { data, .. } => *data,
            Self::Auto => AUTO_DATA_SHARDS,
        }
    }

    /// Recovery shards for a block of `k` original shards, given the loss estimate (a fraction).
    pub fn parity_for(&self, k: u8, loss: f64) -> u8 {
        match self {
            // A short last block keeps the configured ratio, at least one shard when any was asked for.
            Self::Fixed { data, parity } => {
                if *parity == 0 {
                    0
                } else {
                    ((u32::from(*parity) * u32::from(k)).div_ceil(u32::from(*data))) as u8
                }
            }
            Self::Auto => auto_parity(k, loss),
        }
    }
}

impl std::fmt::Display for ParityMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Fixed { data, parity } => write!(f, "{data}+{parity}"),
            Self::Auto => f.write_str("auto"),
        }
    }
}

/// The fewest recovery shards `m` such that a block of `k + m` shards, each lost with probability `loss`,
/// still has `k` of them with probability at least [`AUTO_TARGET`]. Zero below 0.05% loss, so a clean link
/// carries no parity at all.
pub fn auto_parity(k: u8, loss: f64) -> u8 {
    if loss.is_nan() || loss < MIN_PARITY_LOSS {
        return 0;
    }
    let p = loss.min(MAX_PLANNED_LOSS);
    for m in 0..=MAX_PARITY.min(k) {
        let n = u32::from(k) + u32::from(m);
        if binomial_cdf(n, p, u32::from(m)) >= AUTO_TARGET {
            return m;
        }
    }
    MAX_PARITY.min(k)
}

/// P(X <= x) for X ~ Binomial(n, p).
fn binomial_cdf(n: u32, p: f64, x: u32) -> f64 {
    let q = 1.0 - p;
    let mut term = q.powi(n as i32); // P(X = 0)
    let mut sum = term;
    for i in 0..x.min(n) {
        term *= f64::from(n - i) / f64::from(i + 1) * p / q;
        sum += term;
    }
    sum.min(1.0)
}

/// A reusable Reed-Solomon encoder (its working space is kept between blocks), with room for a block's
/// zero-padded last shard.
#[derive(Default)]
pub struct ParityEncoder {
    rs: Option<ReedSolomonEncoder>,
    padded: Vec<u8>,
}

/// A reusable Reed-Solomon decoder.
#[derive(Default)]
pub struct ParityDecoder(Option<ReedSolomonDecoder>);

impl std::fmt::Debug for ParityEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ParityEncoder")
    }
}

impl std::fmt::Debug for ParityDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ParityDecoder")
    }
}

/// Computes `m` recovery shards of `shard_size` bytes for `data`, a block of `k` original shards, into `out`,
/// appended one after another. `data` may stop short of `k × shard_size` bytes (a short last block): the
/// missing bytes count as zeros, as on the wire.
pub fn encode_parity(
    encoder: &mut ParityEncoder,
    data: &[u8],
    k: u8,
    m: u8,
    shard_size: usize,
    out: &mut Vec<u8>,
) {
    out.clear();
    if m == 0 {
        return;
    }
    let (k, m) = (usize::from(k), usize::from(m));
    let ParityEncoder { rs, padded } = encoder;
    // Reusing the working space only fails for shapes `new` refuses too.
    let reused = rs
        .as_mut()
        .is_some_and(|e| e.reset(k, m, shard_size).is_ok());
    if !reused {
        match ReedSolomonEncoder::new(k, m, shard_size) {
            Ok(e) => *rs = Some(e),
            Err(_) => return,
        }
    }
    let Some(enc) = rs.as_mut() else {
        return;
    };
    for i in 0..k {
        let shard = padded_shard(data, i, shard_size, padded);
        if enc.add_original_shard(shard).is_err() {
            return;
        }
    }
    if let Ok(result) = enc.encode() {
        for shard in result.recovery_iter() {
            out.extend_from_slice(shard);
        }
    }
}

/// Original shard `i` of `block` (`shard_size` bytes from `i × shard_size`): borrowed where the block holds it
/// whole, else its bytes zero-padded in `scratch`.
fn padded_shard<'a>(
    block: &'a [u8],
    i: usize,
    shard_size: usize,
    scratch: &'a mut Vec<u8>,
) -> &'a [u8] {
    let from = (i * shard_size).min(block.len());
    let bytes = &block[from..block.len().min(from + shard_size)];
    if bytes.len() == shard_size {
        return bytes;
    }
    scratch.clear();
    scratch.extend_from_slice(bytes);
    scratch.resize(shard_size, 0);
    scratch
}

/// The receiver's view of one incomplete block: original shards in place, recovery shards aside.
#[derive(Debug)]
pub struct BlockAssembly {
    k: u8,
    shard_size: usize,
    /// `k × shard_size` bytes; original shard `i` at `i × shard_size` once it arrived.
    data: Vec<u8>,
    have: Vec<bool>,
    have_count: u8,
    parity: Vec<(u8, Vec<u8>)>,
    parity_count: Option<u8>,
}

/// A shard that does not fit its block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardReject {
    /// Already have it.
    Duplicate,
    /// Index, size or parity count inconsistent with the block.
    Malformed,
}

impl BlockAssembly {
    pub fn new(k: u8, shard_size: usize) -> Self {
        Self::with_buffer(k, shard_size, Vec::new())
    }

    /// Like [`Self::new`], in a recycled buffer. Its old bytes need no clearing: every one is overwritten by a
    /// shard or by decoding before [`Self::finish`] returns the block.
    pub fn with_buffer(k: u8, shard_size: usize, mut data: Vec<u8>) -> Self {
        let len = usize::from(k) * shard_size;
        if data.len() != len {
            data.clear();
            data.resize(len, 0);
        }
        Self {
            k,
            shard_size,
            data,
            have: vec![false; usize::from(k)],
            have_count: 0,
            parity: Vec::new(),
            parity_count: None,
        }
    }

    /// Shards still needed before the block can be rebuilt.
    pub fn needed(&self) -> u8 {
        self.k
            .saturating_sub(self.have_count)
            .saturating_sub(self.parity.len() as u8)
    }

    /// Which original shards arrived (bit `i % 8` of byte `i / 8`).
    pub fn have_bitmap(&self, out: &mut Vec<u8>) {
        const BYTE_BITS: usize = u8::BITS as usize;
        let start = out.len();
        out.resize(start + usize::from(self.k).div_ceil(BYTE_BITS), 0);
        for (i, _) in self.have.iter().enumerate().filter(|(_, h)| **h) {
            out[start + i / BYTE_BITS] |= 1 << (i % BYTE_BITS);
        }
    }

    pub fn add_data(&mut self, index: u8, shard: &[u8]) -> Result<(), ShardReject> {
        let i = usize::from(index);
        if i >= self.have.len() || shard.len() != self.shard_size {
            return Err(ShardReject::Malformed);
        }
        if self.have[i] {
            return Err(ShardReject::Duplicate);
        }
        self.data[i * self.shard_size..(i + 1) * self.shard_size].copy_from_slice(shard);
        self.have[i] = true;
        self.have_count += 1;
        Ok(())
    }

    pub fn add_parity(
        &mut self,
        index: u8,
        parity_count: u8,
        shard: &[u8],
    ) -> Result<(), ShardReject> {
        if index >= parity_count
            || parity_count > MAX_PARITY
            || shard.len() != self.shard_size
            || self.parity_count.is_some_and(|m| m != parity_count)
        {
            return Err(ShardReject::Malformed);
        }
        if self.parity.iter().any(|(i, _)| *i == index) {
            return Err(ShardReject::Duplicate);
        }
        if self.needed() == 0 {
            // Enough already; keep nothing more.
            return Err(ShardReject::Duplicate);
        }
        self.parity_count = Some(parity_count);
        self.parity.push((index, shard.to_vec()));
        Ok(())
    }

    /// Rebuilds the block once enough shards arrived: its `k × shard_size` bytes and whether parity was
    /// needed. `None` while shards are missing (or if the recovery shards were inconsistent; the driver then
    /// learns it from the chunk hash and asks for the chunk again).
    pub fn finish(&mut self, decoder: &mut ParityDecoder) -> Option<(Vec<u8>, bool)> {
        if self.needed() > 0 {
            return None;
        }
        if self.have_count == self.k {
            return Some((std::mem::take(&mut self.data), false));
        }
        let (k, m) = (usize::from(self.k), usize::from(self.parity_count?));
        let reused = decoder
            .0
            .as_mut()
            .is_some_and(|d| d.reset(k, m, self.shard_size).is_ok());
        if !reused {
            decoder.0 = Some(ReedSolomonDecoder::new(k, m, self.shard_size).ok()?);
        }
        let dec = decoder.0.as_mut()?;
        for (i, _) in self.have.iter().enumerate().filter(|(_, h)| **h) {
            dec.add_original_shard(
                i,
                &self.data[i * self.shard_size..(i + 1) * self.shard_size],
            )
            .ok()?;
        }
        for (i, shard) in &self.parity {
            dec.add_recovery_shard(usize::from(*i), shard).ok()?;
        }
        let result = dec.decode().ok()?;
        for (i, shard) in result.restored_original_iter() {
            self.data[i * self.shard_size..(i + 1) * self.shard_size].copy_from_slice(shard);
        }
        Some((std::mem::take(&mut self.data), true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_modes() {
        assert_eq!(ParityMode::parse("auto"), Ok(ParityMode::Auto));
        assert_eq!(
            ParityMode::parse("10+3"),
            Ok(ParityMode::Fixed {
                data: 10,
                parity: 3
            })
        );
        assert!(ParityMode::parse("0+3").is_err());
        assert!(ParityMode::parse("10+300").is_err());
        assert!(ParityMode::parse("ten").is_err());
    }

    #[test]
    fn auto_parity_grows_with_loss_and_is_zero_when_clean() {
        assert_eq!(auto_parity(64, 0.0), 0);
        let a = auto_parity(64, 0.01);
        let b = auto_parity(64, 0.05);
        assert!(a >= 1 && b > a, "{a} {b}");
        // Parity stays near the loss rate: 5% loss costs well under 15% redundancy.
        assert!(f64::from(b) / 64.0 < 0.15, "{b}");
    }

    #[test]
    fn a_short_block_has_the_parity_of_its_zero_padded_bytes() {
        let (k, m, s) = (4u8, 2u8, 64usize);
        let short: Vec<u8> = (0..3 * s + 10).map(|i| (i * 13 + 1) as u8).collect();
        let mut padded = short.clone();
        padded.resize(usize::from(k) * s, 0);
        let mut enc = ParityEncoder::default();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        encode_parity(&mut enc, &short, k, m, s, &mut a);
        encode_parity(&mut enc, &padded, k, m, s, &mut b);
        assert_eq!(a.len(), usize::from(m) * s);
        assert_eq!(a, b);
    }

    #[test]
    fn any_k_of_k_plus_m_rebuild_the_block() {
        let (k, m, s) = (10u8, 3u8, 64usize);
        let data: Vec<u8> = (0..usize::from(k) * s).map(|i| (i * 7 + 3) as u8).collect();
        let mut enc = ParityEncoder::default();
        let mut parity = Vec::new();
        encode_parity(&mut enc, &data, k, m, s, &mut parity);
        assert_eq!(parity.len(), usize::from(m) * s);
        let mut dec = ParityDecoder::default();
        // Lose original shards 1, 4, 9; rebuild from the rest plus all parity.
        // In a recycled buffer full of stale bytes: all of them must be overwritten.
        let mut a = BlockAssembly::with_buffer(k, s, vec![0xEE; usize::from(k) * s]);
        for i in (0..k).filter(|i| ![1, 4, 9].contains(i)) {
            a.add_data(i, &data[usize::from(i) * s..][..s]).unwrap();
        }
        assert!(a.finish(&mut dec).is_none());
        for j in 0..m {
            a.add_parity(j, m, &parity[usize::from(j) * s..][..s])
                .unwrap();
        }
        let (out, recovered) = a.finish(&mut dec).unwrap();
        assert!(recovered);
        assert_eq!(out, data);
    }
}
