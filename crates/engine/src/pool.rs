//! Reusable 1 MiB buffers shared between threads without copying: a buffer goes back to its pool when the last
//! `Arc` to it is dropped, so steady-state transfers allocate nothing and memory stays bounded by the queues.

use std::ops::Deref;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};

/// A buffer that returns to its pool when dropped.
#[derive(Debug)]
pub struct PooledBuf {
    data: Vec<u8>,
    home: Home,
}

/// Where a buffer goes when its last share drops.
#[derive(Debug)]
enum Home {
    Pool(Sender<Vec<u8>>),
    Spare(SpareBufs),
}

/// Buffers handed back to the thread that made them (bounded at [`SpareBufs::MAX`]; more are freed).
#[derive(Debug, Clone, Default)]
pub struct SpareBufs(Arc<Mutex<Vec<Vec<u8>>>>);

impl SpareBufs {
    const MAX: usize = 16;

    fn put(&self, buf: Vec<u8>) {
        if let Ok(mut spare) = self.0.lock() {
            if spare.len() < Self::MAX {
                spare.push(buf);
            }
        }
    }

    /// A spare buffer, if one is there and nobody holds the lock right now.
    pub fn take(&self) -> Option<Vec<u8>> {
        self.0.try_lock().ok()?.pop()
    }
}

impl PooledBuf {
    pub fn data_mut(&mut self) -> &mut Vec<u8> {
        &mut self.data
    }
}

impl Deref for PooledBuf {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.data
    }
}

/// What a DCSP sender holds of a block it shares rather than copies (`trackshift_dcsp::SharedBlock`).
impl AsRef<[u8]> for PooledBuf {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

impl Drop for PooledBuf {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.data);
        match &self.home {
            Home::Pool(pool) => {
                let _ = pool.send(buf);
            }
            Home::Spare(spare) => spare.put(buf),
        }
    }
}

/// Where buffers come from and go back to. Cheap to create; one per transfer.
#[derive(Debug)]
pub struct BufPool {
    home: Sender<Vec<u8>>,
    free: Receiver<Vec<u8>>,
    capacity: usize,
}

impl BufPool {
    pub fn new(capacity: usize) -> Self {
        let (home, free) = channel();
        Self {
            home,
            free,
            capacity,
        }
    }

    /// An empty buffer with at least the pool's capacity reserved.
    pub fn get(&self) -> PooledBuf {
        let mut data = self.free.try_recv().unwrap_or_default();
        data.clear();
        data.reserve(self.capacity);
        PooledBuf {
            data,
            home: Home::Pool(self.home.clone()),
        }
    }
}

impl BufPool {
    /// A buffer of exactly `len` bytes for the caller to overwrite whole (a read fills it): its bytes are what
    /// its last user left there (zeros where it grew), so a buffer reused at the same length costs no memset.
    pub fn get_len(&self, len: usize) -> PooledBuf {
        let mut data = self.free.try_recv().unwrap_or_default();
        data.reserve(self.capacity.max(len).saturating_sub(data.len()));
        data.resize(len, 0);
        PooledBuf {
            data,
            home: Home::Pool(self.home.clone()),
        }
    }

    /// Shares `data` without copying; it goes to `spare` when the last share drops.
    pub fn adopt(data: Vec<u8>, spare: &SpareBufs) -> SharedBytes {
        let home = Home::Spare(spare.clone());
        SharedBytes::new(Arc::new(PooledBuf { data, home }), 0)
    }

    /// A copy of `data` whose first byte sits at an address that is a multiple of `align` (a power of two), as
    /// direct I/O wants. The pool's capacity must be at least `data.len() + align`.
    pub fn aligned_copy(&self, data: &[u8], align: usize) -> SharedBytes {
        let mut buf = self.get();
        let v = buf.data_mut();
        v.reserve(data.len() + align);
        // Capacity is reserved, so the allocation (and this padding) stays put while we fill it.
        let pad = v.as_ptr().align_offset(align).min(align);
        v.resize(pad, 0);
        v.extend_from_slice(data);
        SharedBytes::new(Arc::new(buf), pad)
    }
}

/// A shared, read-only view of part of a pooled buffer.
#[derive(Debug, Clone)]
pub struct SharedBytes {
    buf: Arc<PooledBuf>,
    start: usize,
}

impl SharedBytes {
    pub fn new(buf: Arc<PooledBuf>, start: usize) -> Self {
        Self { buf, start }
    }
}

impl Deref for SharedBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_when_the_last_share_drops() {
        let pool = BufPool::new(16);
        let mut b = pool.get();
        b.data_mut().extend_from_slice(b"hello");
        let ptr = b.as_ptr();
        let shared = Arc::new(b);
        let view = SharedBytes::new(shared.clone(), 1);
        assert_eq!(&*view, b"ello");
        drop(shared);
        drop(view);
        let again = pool.get();
        assert_eq!(again.as_ptr(), ptr);
        assert!(again.is_empty());
    }

    #[test]
    fn a_buffer_of_a_length_is_reused_whole_and_sized_exactly() {
        let pool = BufPool::new(64);
        let mut b = pool.get_len(10);
        assert_eq!(&*b, &[0; 10]);
        b.data_mut().fill(7);
        let ptr = b.as_ptr();
        drop(b);
        let again = pool.get_len(12);
        assert_eq!(again.as_ptr(), ptr, "the same allocation");
        assert_eq!(again.len(), 12);
        assert_eq!(&again[10..], &[0, 0], "grown bytes are zero");
        drop(again);
        assert_eq!(pool.get_len(4).len(), 4);
    }

    #[test]
    fn aligned_copies_are_aligned_and_equal() {
        let pool = BufPool::new(8192 + 4096);
        let data: Vec<u8> = (0..8192u32).map(|i| i as u8).collect();
        for _ in 0..3 {
            let c = pool.aligned_copy(&data[1..], 4096);
            assert_eq!(c.as_ptr() as usize % 4096, 0);
            assert_eq!(&*c, &data[1..]);
        }
    }
}
