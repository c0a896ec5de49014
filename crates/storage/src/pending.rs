//! `PendingBuf`: a T2 log's appended-but-unwritten batches, laid out so that a direct
//! (`O_DIRECT`) write can go out of the buffer itself instead of a staging copy.
//!
//! The batches go at a file position `pos` that is usually not on a block boundary: a direct
//! write starts at the block holding `pos`, with that block's earlier bytes (`pos % ALIGN` of
//! them, kept by the log) in front of the batches. So the buffer puts its content at an address
//! with the same offset within a block as `pos`, after room for those bytes: filling them in
//! and zeroing up to the next block boundary then gives an aligned buffer to write as it is.
//! Growth keeps that layout (one copy, as a `Vec`'s own reallocation would make).

use crate::vfs::DIRECT_ALIGN;

/// Pending batches for file position `pos` (see the module docs). `Deref`s to the batches.
#[derive(Debug, Default)]
pub(crate) struct PendingBuf {
    v: Vec<u8>,
    /// Where the content starts in `v`.
    off: usize,
    /// `pos % DIRECT_ALIGN`: the content's wanted offset within a block.
    phase: usize,
}

impl PendingBuf {
    /// Starts an empty buffer for batches that go at file position `pos`, in `spare`'s
    /// allocation or its own, whichever is larger; returns the other one (for the next time).
    pub(crate) fn start(&mut self, pos: u64, mut spare: Vec<u8>) -> Vec<u8> {
        if spare.capacity() > self.v.capacity() {
            std::mem::swap(&mut self.v, &mut spare);
        }
        self.v.clear();
        self.phase = (pos % DIRECT_ALIGN as u64) as usize;
        self.off = Self::offset_in(&self.v, self.phase);
        if self.off > self.v.capacity() {
            self.v = Vec::with_capacity(2 * DIRECT_ALIGN);
            self.off = Self::offset_in(&self.v, self.phase);
        }
        self.v.resize(self.off, 0);
        spare
    }

    /// The index in `v` of the first address at or after its start that sits `phase` bytes
    /// past a block boundary, with at least `phase` bytes before it in `v` (the room for
    /// the block's earlier bytes).
    fn offset_in(v: &[u8], phase: usize) -> usize {
        let aligned = v.as_ptr().align_offset(DIRECT_ALIGN);
        // align_offset may give up (usize::MAX) by its contract: place the content at the
        // start then (the write falls back to a staging copy).
        if aligned == usize::MAX {
            return 0;
        }
        aligned + phase
    }

    pub(crate) fn len(&self) -> usize {
        self.v.len() - self.off
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn capacity(&self) -> usize {
        self.v.capacity()
    }

    /// Empties the buffer, keeping its allocation and layout.
    pub(crate) fn clear(&mut self) {
        self.v.truncate(self.off);
    }

    /// Makes room for `n` more bytes of content and a block of padding after them, keeping the
    /// layout; then [`PendingBuf::vec`] can take them without reallocating.
    pub(crate) fn reserve(&mut self, n: usize) {
        let need = self.v.len() + n + DIRECT_ALIGN;
        if need <= self.v.capacity() {
            return;
        }
        let cap = (2 * self.v.capacity()).max(need + 2 * DIRECT_ALIGN);
        let mut v = Vec::with_capacity(cap);
        let off = Self::offset_in(&v, self.phase);
        v.resize(off, 0);
        v.extend_from_slice(&self.v[self.off..]);
        self.v = v;
        self.off = off;
    }

    /// The underlying vector, for appending content at its end (after [`PendingBuf::reserve`]).
    /// Its first `off` bytes are not content: callers only append and index from where they
    /// started appending.
    pub(crate) fn vec(&mut self) -> &mut Vec<u8> {
        &mut self.v
    }

    /// The buffer to write directly at the block boundary before `pos`: `head` (the block's
    /// bytes before `pos`) is put in front of the content and zeros after it, `total` bytes
    /// in all (a multiple of [`DIRECT_ALIGN`] at least the content's padded length). `None`
    /// when the layout does not allow it in place (the caller copies instead): `head` is not
    /// the content's phase, or `total` does not fit the allocation. [`PendingBuf::restore`]
    /// takes the zeros off again.
    pub(crate) fn in_place(&mut self, head: &[u8], total: usize) -> Option<&[u8]> {
        let h = head.len();
        if h != self.phase || self.off < h {
            return None;
        }
        let start = self.off - h;
        if !(self.v.as_ptr() as usize + start).is_multiple_of(DIRECT_ALIGN)
            || start + total > self.v.capacity()
            || start + total < self.v.len()
        {
            return None;
        }
        self.v[start..self.off].copy_from_slice(head);
        self.v.resize(start + total, 0);
        Some(&self.v[start..])
    }

    /// Drops what [`PendingBuf::in_place`] added after the content (`len`: the content's
    /// length then).
    pub(crate) fn restore(&mut self, len: usize) {
        self.v.truncate(self.off + len);
    }

    /// The allocation, for reuse by the next [`PendingBuf::start`].
    pub(crate) fn into_vec(self) -> Vec<u8> {
        self.v
    }
}

impl std::ops::Deref for PendingBuf {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.v[self.off..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filled(pos: u64, content: &[u8]) -> PendingBuf {
        let mut p = PendingBuf::default();
        let _ = p.start(pos, Vec::new());
        for chunk in content.chunks(1000) {
            p.reserve(chunk.len());
            let cap = p.capacity();
            p.vec().extend_from_slice(chunk);
            assert_eq!(p.capacity(), cap, "reserve made room");
        }
        p
    }

    #[test]
    fn content_keeps_its_phase_through_growth() {
        let content: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
        for pos in [0u64, 1, 4095, 4096, 12_345] {
            let p = filled(pos, &content);
            assert_eq!(&p[..], &content[..]);
            assert_eq!(p.len(), content.len());
            let addr = p.as_ptr() as usize;
            assert_eq!(addr % DIRECT_ALIGN, (pos % DIRECT_ALIGN as u64) as usize);
        }
    }

    #[test]
    fn in_place_puts_the_head_before_and_zeros_after() {
        let content = vec![7u8; 5000];
        let pos = 4096 * 3 + 100;
        let mut p = filled(pos, &content);
        let head = vec![1u8; 100];
        let total = (100 + 5000usize).next_multiple_of(DIRECT_ALIGN);
        let buf = p.in_place(&head, total).expect("in place");
        assert_eq!(buf.as_ptr() as usize % DIRECT_ALIGN, 0, "aligned");
        assert_eq!(buf.len(), total);
        assert_eq!(&buf[..100], &head[..]);
        assert_eq!(&buf[100..5100], &content[..]);
        assert!(buf[5100..].iter().all(|&b| b == 0));
        p.restore(content.len());
        assert_eq!(&p[..], &content[..]);
        // A head of another length, or more than the allocation holds: not in place.
        assert!(p.in_place(&head[..99], total).is_none());
        assert!(p.in_place(&head, 1 << 30).is_none());
        assert_eq!(&p[..], &content[..], "untouched");
    }

    #[test]
    fn start_reuses_the_larger_allocation_and_clear_keeps_the_layout() {
        let mut p = filled(10, &[3u8; 20_000]);
        let cap = p.capacity();
        p.clear();
        assert!(p.is_empty());
        let other = p.start(4096 + 5, Vec::with_capacity(16));
        assert_eq!(p.capacity(), cap, "its own allocation was larger");
        assert_eq!(other.capacity(), 16, "the other one comes back");
        assert_eq!(p.as_ptr() as usize % DIRECT_ALIGN, 5);
        let big = Vec::with_capacity(cap * 4);
        let other = p.start(0, big);
        assert!(p.capacity() >= cap * 4);
        assert_eq!(other.capacity(), cap, "its own comes back");
        assert_eq!(p.as_ptr() as usize % DIRECT_ALIGN, 0);
        assert!(p.is_empty());
        let v = p.into_vec();
        assert!(v.capacity() >= cap * 4);
    }
}
