//! Per-packet protection: AES-256-GCM under per-direction keys, nonces from the packet number, and a sliding
//! replay window.
//!
//! Keys come from the control channel: both sides export 32 bytes from their TLS 1.3 session (label
//! `EXPORTER-trackshift-dcsp-v1`), then HKDF-SHA256 expands them, with the DCSP connection id in the info,
//! into a key and a 12-byte IV per direction. The nonce of a packet is the IV XOR its 48-bit packet number, so a key never sees
//! the same nonce twice as long as packet numbers do not repeat (they never do: a connection that would run
//! out of them gets new keys through a new control connection).

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::hkdf;

use crate::packet::TAG_LEN;

/// The TLS exporter label both sides use for DCSP keys.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-trackshift-dcsp-v1";
/// Bytes taken from the exporter: 256 bits, the strength of the AES-256 keys derived from them.
pub const EXPORTER_LEN: usize = 32;
const HKDF_SALT: &[u8] = b"trackshift dcsp v1";

/// Which end of a DCSP connection this is (it picks which derived key seals and which opens).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Sender,
    Receiver,
}

/// One direction's AEAD key and IV.
pub struct PacketKey {
    key: LessSafeKey,
    iv: [u8; NONCE_LEN],
}

impl std::fmt::Debug for PacketKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PacketKey(..)")
    }
}

/// Authentication failed: the packet was forged, corrupted, truncated or sealed under another key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("packet failed authentication")]
pub struct NotAuthentic;

struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

impl PacketKey {
    fn derive(prk: &hkdf::Prk, label: &'static [u8], conn_id: u64) -> Self {
        let id = conn_id.to_be_bytes();
        let info_key = [label, b" key", &id];
        let info_iv = [label, b" iv", &id];
        // Expanding 32 or 12 bytes from SHA-256 never fails (the limit is 255 * 32 bytes).
        let okm = prk
            .expand(&info_key, &AES_256_GCM)
            .unwrap_or_else(|_| unreachable!("32-byte HKDF expand"));
        let key = LessSafeKey::new(UnboundKey::from(okm));
        let mut iv = [0u8; NONCE_LEN];
        prk.expand(&info_iv, Len(NONCE_LEN))
            .and_then(|okm| okm.fill(&mut iv))
            .unwrap_or_else(|_| unreachable!("12-byte HKDF expand"));
        Self { key, iv }
    }

    fn nonce(&self, packet_number: u64) -> Nonce {
        let mut n = self.iv;
        // The packet number, as a big-endian u64, goes into the IV's last bytes.
        for (b, p) in n[NONCE_LEN - size_of::<u64>()..]
            .iter_mut()
            .zip(packet_number.to_be_bytes())
        {
            *b ^= p;
        }
        Nonce::assume_unique_for_key(n)
    }

    /// Encrypts `datagram[header_len..]` in place and appends the tag; the header is the associated data.
    pub fn seal(&self, packet_number: u64, header_len: usize, datagram: &mut Vec<u8>) {
        self.seal_at(packet_number, 0, header_len, datagram);
    }

    /// Like [`Self::seal`], for the datagram that starts at `buf[start]` and runs to the end of `buf`: the
    /// newest of a batch built back to back, sealed in place in the buffer the batch is sent from.
    pub fn seal_at(&self, packet_number: u64, start: usize, header_len: usize, buf: &mut Vec<u8>) {
        let (header, payload) = buf[start..].split_at_mut(header_len);
        // Sealing only fails for payloads beyond GCM's limit (64 GiB), far above a datagram.
        let tag = self
            .key
            .seal_in_place_separate_tag(self.nonce(packet_number), Aad::from(&*header), payload)
            .unwrap_or_else(|_| unreachable!("AES-GCM seal of a datagram"));
        buf.extend_from_slice(tag.as_ref());
    }

    /// Checks and decrypts `datagram[header_len..]` in place; returns the plaintext's length (it starts at
    /// `header_len`).
    pub fn open(
        &self,
        packet_number: u64,
        header_len: usize,
        datagram: &mut [u8],
    ) -> Result<usize, NotAuthentic> {
        if datagram.len() < header_len + TAG_LEN {
            return Err(NotAuthentic);
        }
        let (header, payload) = datagram.split_at_mut(header_len);
        let plain = self
            .key
            .open_in_place(self.nonce(packet_number), Aad::from(&*header), payload)
            .map_err(|_| NotAuthentic)?;
        Ok(plain.len())
    }
}

/// The two keys of one end: the one it seals with and the one it opens with.
#[derive(Debug)]
pub struct DirectionKeys {
    pub seal: PacketKey,
    pub open: PacketKey,
}

impl DirectionKeys {
    /// Derives both directions of DCSP connection `conn_id` from the TLS exporter value; `role` picks which
    /// one this end seals with.
    pub fn derive(exporter_secret: &[u8], conn_id: u64, role: Role) -> Self {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, HKDF_SALT).extract(exporter_secret);
        let s2r = PacketKey::derive(&prk, b"sender to receiver", conn_id);
        let r2s = PacketKey::derive(&prk, b"receiver to sender", conn_id);
        match role {
            Role::Sender => Self {
                seal: s2r,
                open: r2s,
            },
            Role::Receiver => Self {
                seal: r2s,
                open: s2r,
            },
        }
    }
}

/// Remembers which recent packet numbers were seen, to drop replays and duplicates. Packet numbers more than
/// `WINDOW` below the highest seen are refused as stale.
#[derive(Debug, Clone)]
pub struct ReplayWindow {
    highest: Option<u64>,
    bits: Vec<u64>,
}

/// How far below the highest packet number a packet may arrive and still be accepted: 65,536 packets, like the
/// sender's send-time ring; real paths do not reorder that deeply, and older packets are refused as stale.
pub const REPLAY_WINDOW: u64 = 1 << 16;

/// Why the replay window refused a packet number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replay {
    /// Seen before (a duplicate or a replay).
    Duplicate,
    /// Too old to tell.
    Stale,
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl ReplayWindow {
    pub fn new() -> Self {
        Self {
            highest: None,
            bits: vec![0; (REPLAY_WINDOW / u64::from(u64::BITS)) as usize],
        }
    }

    fn slot(pn: u64) -> (usize, u64) {
        let i = pn % REPLAY_WINDOW;
        let word_bits = u64::from(u64::BITS);
        ((i / word_bits) as usize, 1u64 << (i % word_bits))
    }

    /// Would `pn` be accepted? (Call [`ReplayWindow::insert`] only after the packet authenticated.)
    pub fn check(&self, pn: u64) -> Result<(), Replay> {
        let Some(h) = self.highest else { return Ok(()) };
        if pn > h {
            return Ok(());
        }
        if h - pn >= REPLAY_WINDOW {
            return Err(Replay::Stale);
        }
        let (w, b) = Self::slot(pn);
        if self.bits[w] & b != 0 {
            Err(Replay::Duplicate)
        } else {
            Ok(())
        }
    }

    /// Records an authenticated packet number. Returns whether it is the highest so far.
    pub fn insert(&mut self, pn: u64) -> bool {
        match self.highest {
            Some(h) if pn <= h => {
                let (w, b) = Self::slot(pn);
                self.bits[w] |= b;
                false
            }
            h => {
                // Clear the slots the window slides over.
                let from = h.map_or(0, |h| h + 1);
                if pn - from >= REPLAY_WINDOW {
                    self.bits.iter_mut().for_each(|w| *w = 0);
                } else {
                    for p in from..pn {
                        let (w, b) = Self::slot(p);
                        self.bits[w] &= !b;
                    }
                }
                let (w, b) = Self::slot(pn);
                self.bits[w] |= b;
                self.highest = Some(pn);
                true
            }
        }
    }
}

/// Keys from a fixed, public secret: for tests, the simulator and fuzzing only.
#[doc(hidden)]
pub fn test_keys(role: Role) -> DirectionKeys {
    DirectionKeys::derive(&[7u8; EXPORTER_LEN], 0, role)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_tamper() {
        let s = test_keys(Role::Sender);
        let r = test_keys(Role::Receiver);
        let mut d = b"headerpayload bytes".to_vec();
        s.seal.seal(5, 6, &mut d);
        let mut ok = d.clone();
        let n = r.open.open(5, 6, &mut ok).unwrap();
        assert_eq!(&ok[6..6 + n], b"payload bytes");
        // Wrong packet number, flipped header bit, flipped payload bit, truncation, wrong direction.
        assert!(r.open.open(6, 6, &mut d.clone()).is_err());
        let mut h = d.clone();
        h[0] ^= 1;
        assert!(r.open.open(5, 6, &mut h).is_err());
        let mut p = d.clone();
        p[8] ^= 0x40;
        assert!(r.open.open(5, 6, &mut p).is_err());
        assert!(r.open.open(5, 6, &mut d[..d.len() - 1].to_vec()).is_err());
        assert!(s.open.open(5, 6, &mut d.clone()).is_err());
    }

    #[test]
    fn sealing_behind_other_bytes_seals_the_same_datagram() {
        let s = test_keys(Role::Sender);
        let mut alone = b"headerpayload bytes".to_vec();
        s.seal.seal(9, 6, &mut alone);
        let mut batch = b"earlier datagram".to_vec();
        let start = batch.len();
        batch.extend_from_slice(b"headerpayload bytes");
        s.seal.seal_at(9, start, 6, &mut batch);
        assert_eq!(&batch[..start], b"earlier datagram");
        assert_eq!(&batch[start..], &alone[..]);
    }

    #[test]
    fn replay_window_refuses_duplicates_and_stale() {
        let mut w = ReplayWindow::new();
        assert!(w.check(10).is_ok());
        w.insert(10);
        assert_eq!(w.check(10), Err(Replay::Duplicate));
        assert!(w.check(9).is_ok());
        w.insert(9);
        assert_eq!(w.check(9), Err(Replay::Duplicate));
        w.insert(10 + REPLAY_WINDOW);
        assert_eq!(w.check(10), Err(Replay::Stale));
        assert!(w.check(11 + REPLAY_WINDOW / 2).is_ok());
        w.insert(5 * REPLAY_WINDOW);
        assert_eq!(w.check(5 * REPLAY_WINDOW), Err(Replay::Duplicate));
        assert!(w.check(5 * REPLAY_WINDOW - 1).is_ok());
    }
}
