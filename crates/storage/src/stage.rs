//! [`WriteStage`]: turns a stream of in-order writes of any size and alignment into large aligned writes, so
//! they go around the page cache (see [`PartialFile::write_at`]).

use crate::partial::{PartialFile, DIRECT_IO_ALIGN};
use crate::StorageError;

/// Bytes gathered before the aligned part is written out: a direct write this large costs little per byte, and
/// the buffer stays small beside the blocks the writer holds (up to 32 MiB).
pub const STAGE_BYTES: usize = 4 << 20;

/// Gathers consecutive writes in a page-aligned buffer and writes them to a [`PartialFile`] in large aligned
/// pieces. The buffer mirrors the file's alignment (byte `i` of the buffer is byte `base + i` of the file, with
/// `base` a multiple of [`DIRECT_IO_ALIGN`]), so whatever part of it is page-aligned in the file is also
/// page-aligned in memory. Only an unaligned head (after a jump) and the final tail go through the page cache.
///
/// Staged bytes are not on disk until [`WriteStage::flush`]: call it before counting them as durable.
#[derive(Debug)]
pub struct WriteStage {
    buf: Vec<u8>,
    /// Index in `buf` of the file's byte `base`.
    pad: usize,
    /// File offset of `buf[pad]` (a multiple of [`DIRECT_IO_ALIGN`]).
    base: u64,
    /// Valid bytes are `buf[pad + from .. pad + to]`.
    from: usize,
    to: usize,
}

impl Default for WriteStage {
    fn default() -> Self {
        Self::new()
    }
}

impl WriteStage {
    pub fn new() -> Self {
        let mut buf = vec![0u8; STAGE_BYTES + 2 * DIRECT_IO_ALIGN];
        let pad = buf
            .as_ptr()
            .align_offset(DIRECT_IO_ALIGN)
            .min(DIRECT_IO_ALIGN);
        buf.truncate(pad + STAGE_BYTES + DIRECT_IO_ALIGN);
        Self {
            buf,
            pad,
            base: 0,
            from: 0,
            to: 0,
        }
    }

    /// File offset just past the staged bytes (where the next consecutive write goes).
    fn end(&self) -> u64 {
        self.base + self.to as u64
    }

    /// Stages `data` for `offset`. A write that does not continue the staged bytes flushes them first.
    pub fn write(
        &mut self,
        part: &PartialFile,
        offset: u64,
        mut data: &[u8],
    ) -> Result<(), StorageError> {
        if self.from != self.to && offset != self.end() {
            self.flush(part)?;
        }
        if self.from == self.to {
            let a = DIRECT_IO_ALIGN as u64;
            self.base = offset - offset % a;
            self.from = (offset - self.base) as usize;
            self.to = self.from;
        }
        while !data.is_empty() {
            let room = STAGE_BYTES - self.to;
            let n = room.min(data.len());
            self.buf[self.pad + self.to..self.pad + self.to + n].copy_from_slice(&data[..n]);
            self.to += n;
            data = &data[n..];
            if self.to == STAGE_BYTES {
                self.write_aligned(part)?;
            }
        }
        Ok(())
    }

    /// Writes the staged bytes up to the last page boundary; the rest moves to the front of the buffer.
    fn write_aligned(&mut self, part: &PartialFile) -> Result<(), StorageError> {
        let a = DIRECT_IO_ALIGN;
        let cut = self.to - self.to % a;
        if cut <= self.from {
            return Ok(());
        }
        let mut start = self.from;
        if !start.is_multiple_of(a) {
            // The head up to the first page boundary: through the page cache.
            let head_end = start - start % a + a;
            part.write_at(
                self.base + start as u64,
                &self.buf[self.pad + start..self.pad + head_end],
            )?;
            start = head_end;
        }
        if cut > start {
            part.write_at(
                self.base + start as u64,
                &self.buf[self.pad + start..self.pad + cut],
            )?;
        }
        let tail = self.to - cut;
        self.buf
            .copy_within(self.pad + cut..self.pad + self.to, self.pad);
        self.base += cut as u64;
        self.from = 0;
        self.to = tail;
        Ok(())
    }

    /// Writes everything staged.
    pub fn flush(&mut self, part: &PartialFile) -> Result<(), StorageError> {
        self.write_aligned(part)?;
        if self.to > self.from {
            part.write_at(
                self.base + self.from as u64,
                &self.buf[self.pad + self.from..self.pad + self.to],
            )?;
        }
        self.from = 0;
        self.to = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trackshift_proto::SessionId;

    #[test]
    fn writes_of_any_alignment_land_where_they_belong() {
        let tmp = tempfile::tempdir().unwrap();
        let size = 3 * STAGE_BYTES as u64 + 12_345;
        let part = PartialFile::open(tmp.path(), &SessionId([7; 16]), size).unwrap();
        let want: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let mut stage = WriteStage::new();
        // In order in odd pieces, with one jump backwards and one gap filled later.
        let pieces = [91_648usize, 1432, 4096, 777, 3 * STAGE_BYTES / 2, 100_000];
        let mut at = 0usize;
        let mut skipped = None;
        for (i, &n) in pieces.iter().cycle().enumerate() {
            if at >= size as usize {
                break;
            }
            let n = n.min(size as usize - at);
            if i == 3 {
                skipped = Some((at, n));
            } else {
                stage.write(&part, at as u64, &want[at..at + n]).unwrap();
            }
            at += n;
        }
        let (gap, n) = skipped.unwrap();
        stage.write(&part, gap as u64, &want[gap..gap + n]).unwrap();
        stage.flush(&part).unwrap();
        let mut got = vec![0u8; size as usize];
        part.read_at(0, &mut got).unwrap();
        assert!(got == want, "bytes differ");
    }
}
