//! Content-defined chunks of a checkpoint's large files, shared between versions.
//!
//! A job's memory changes a little between two checkpoints; CRIU writes all of it every time
//! (no soft-dirty tracking on every kernel, so no pre-dump). Stored as one blob per file, every
//! version would be a full copy, locally and in the registry. So a large file is cut into
//! chunks whose boundaries depend on the content around them, not on offsets; a chunk the store
//! (or the registry) already has is not written (or sent) again.
//!
//! The boundaries are **page-granular**: CRIU's `pages-*.img` is a sequence of 4 KiB pages in
//! address order, and memory mapped or unmapped before a region shifts everything after it by
//! whole pages. A chunk ends after a page whose boundary hash ([`page_mark`], a few words of the
//! page mixed together: cheap, and a change elsewhere in the page does not move the boundary)
//! has its low bits zero, between a minimum and a maximum size. So a shift moves the boundaries
//! with the content, and a change touches the chunk around it only.
//!
//! In a manifest, each chunk is a layer ([`MEDIA_TYPE`], or [`MEDIA_TYPE_ZSTD`] compressed) with
//! the file's path as its title (`org.opencontainers.image.title`, the same for every chunk of
//! one file); the file is its chunks in manifest order.

/// Media type of a layer that is one chunk of a file of the checkpoint tree.
pub const MEDIA_TYPE: &str = "application/vnd.lazarus.checkpoint.chunk.v1";
/// Media type of a layer that is one chunk, zstd-compressed.
pub const MEDIA_TYPE_ZSTD: &str = "application/vnd.lazarus.checkpoint.chunk.v1+zstd";
/// The descriptor annotation with a compressed chunk's own size.
pub const CHUNK_SIZE: &str = "lazarus.dev/chunk-size";

/// The page size boundaries are cut at.
pub const PAGE: usize = 4096;
/// The smallest average chunk size.
const MIN_AVERAGE: u64 = 2 << 20;
/// A file is cut into about this many chunks at most; larger files get larger chunks (a power
/// of two, so that a file growing a little keeps its boundaries).
const TARGET_CHUNKS: u64 = 2048;

/// Where one file's chunks end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunker {
    /// Pages a boundary hash's low bits are compared against: a boundary on one page in `1 << bits`.
    bits: u32,
    /// Fewest pages in a chunk (but the last).
    min_pages: usize,
    /// Most pages in a chunk.
    max_pages: usize,
}

impl Chunker {
    /// The chunker for a file of `size` bytes: chunks of 2 MiB on average (1 in 512 pages is a
    /// boundary), at least a quarter and at most four times that; files of more than 4 GiB get
    /// the smallest power-of-two average that keeps them at about [`TARGET_CHUNKS`] chunks.
    pub fn for_size(size: u64) -> Chunker {
        let average = size.div_ceil(TARGET_CHUNKS).max(MIN_AVERAGE).next_power_of_two();
        Chunker::with_average(average)
    }

    /// A chunker with chunks of `average` bytes on average (a power of two, at least 4 pages).
    pub fn with_average(average: u64) -> Chunker {
        let pages = (average / PAGE as u64).max(4);
        let bits = pages.ilog2();
        let pages = 1usize << bits;
        Chunker { bits, min_pages: pages / 4, max_pages: pages * 4 }
    }

    /// The largest chunk, in bytes: how much of the file must be at hand to cut the next one.
    pub fn max_len(&self) -> usize {
        self.max_pages * PAGE
    }

    /// The length of the chunk starting at `data[0]`. `data` holds at least [`Chunker::max_len`]
    /// bytes, or all that is left of the file.
    pub fn next_len(&self, data: &[u8]) -> usize {
        let mask = (1u64 << self.bits) - 1;
        let limit = data.len().min(self.max_len());
        let mut end = self.min_pages * PAGE;
        while end + PAGE <= limit {
            let page = &data[end..end + PAGE];
            end += PAGE;
            if page_mark(page) & mask == 0 {
                return end;
            }
        }
        limit
    }
}

/// A page's boundary hash: eight of its 64-bit words, spread over it, mixed.
pub fn page_mark(page: &[u8]) -> u64 {
    let mut hash: u64 = 0x243F_6A88_85A3_08D3;
    for i in 0..8 {
        let at = i * (PAGE / 8);
        let mut word = [0u8; 8];
        word.copy_from_slice(&page[at..at + 8]);
        hash = (hash ^ u64::from_le_bytes(word)).wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(29);
    }
    hash ^ (hash >> 31)
}

/// Cuts everything `read` yields into chunks and hands each, in order, to `each` (its index,
/// its bytes). Holds at most twice [`Chunker::max_len`] of the file in memory, besides the
/// chunks handed out.
pub fn cut(
    chunker: Chunker,
    mut read: impl std::io::Read,
    mut each: impl FnMut(usize, Vec<u8>) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let window = chunker.max_len();
    let mut buf = vec![0u8; 2 * window];
    let (mut start, mut end, mut at_end, mut index) = (0, 0, false, 0);
    loop {
        while !at_end && end - start < window {
            if buf.len() - end < window {
                buf.copy_within(start..end, 0);
                end -= start;
                start = 0;
            }
            match read.read(&mut buf[end..]) {
                Ok(0) => at_end = true,
                Ok(n) => end += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if start == end {
            return Ok(());
        }
        let len = chunker.next_len(&buf[start..end]);
        each(index, buf[start..start + len].to_vec())?;
        start += len;
        index += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(pages: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..pages * PAGE / 8)
            .flat_map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x.to_le_bytes()
            })
            .collect()
    }

    fn chunks_of(chunker: Chunker, data: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        cut(chunker, data, |i, chunk| {
            assert_eq!(i, out.len());
            out.push(chunk);
            Ok(())
        })
        .expect("cut");
        out
    }

    #[test]
    fn chunks_are_page_aligned_bounded_and_add_up_to_the_file() {
        let chunker = Chunker::with_average(64 * 1024);
        let mut data = noise(4096, 7);
        data.extend_from_slice(&[5u8; 100]); // a partial last page
        let chunks = chunks_of(chunker, &data);
        assert!(chunks.len() > 20, "{} chunks", chunks.len());
        assert_eq!(chunks.concat(), data);
        let (first, last) = chunks.split_at(chunks.len() - 1);
        for chunk in first {
            assert_eq!(chunk.len() % PAGE, 0);
            assert!(chunk.len() >= 4 * PAGE && chunk.len() <= chunker.max_len(), "{}", chunk.len());
        }
        assert_eq!(last[0].len() % PAGE, 100);
        assert!(chunks_of(chunker, &[]).is_empty());
        assert_eq!(chunks_of(chunker, b"tiny"), [b"tiny".to_vec()]);
    }

    #[test]
    fn pages_inserted_in_front_move_the_boundaries_with_the_content() {
        let chunker = Chunker::with_average(64 * 1024);
        let before = noise(4096, 11);
        let mut after = noise(37, 99);
        after.extend_from_slice(&before);
        let old: std::collections::HashSet<Vec<u8>> = chunks_of(chunker, &before).into_iter().collect();
        let new = chunks_of(chunker, &after);
        let shared = new.iter().filter(|c| old.contains(*c)).count();
        assert!(shared + 4 >= new.len(), "{shared} of {} chunks shared", new.len());
    }

    #[test]
    fn a_changed_region_changes_the_chunks_around_it_only() {
        let chunker = Chunker::with_average(64 * 1024);
        let before = noise(4096, 3);
        let mut after = before.clone();
        after[1000 * PAGE..1020 * PAGE].copy_from_slice(&noise(20, 5));
        let old: std::collections::HashSet<Vec<u8>> = chunks_of(chunker, &before).into_iter().collect();
        let new = chunks_of(chunker, &after);
        let fresh: usize = new.iter().filter(|c| !old.contains(*c)).map(Vec::len).sum();
        assert!(fresh <= 2 * chunker.max_len() + 20 * PAGE, "{fresh} new bytes");
        assert!(fresh >= 20 * PAGE, "{fresh}");
    }

    #[test]
    fn zero_pages_are_cut_at_the_maximum_and_sizes_pick_powers_of_two() {
        let chunker = Chunker::with_average(64 * 1024);
        let zeros = vec![0u8; 10 * chunker.max_len()];
        let chunks = chunks_of(chunker, &zeros);
        // One boundary hash for every zero page: either every page past the minimum is a
        // boundary, or none is.
        assert!(chunks.iter().all(|c| c.len() == chunker.max_len() || c.len() == 5 * PAGE), "{}", chunks[0].len());
        assert_eq!(Chunker::for_size(1 << 20), Chunker::with_average(2 << 20));
        assert_eq!(Chunker::for_size(4 << 30), Chunker::with_average(2 << 20));
        assert_eq!(Chunker::for_size((4 << 30) + 1), Chunker::with_average(4 << 20));
        assert_eq!(Chunker::for_size(64 << 30), Chunker::with_average(32 << 20));
        assert_eq!(Chunker::with_average(2 << 20).max_len(), 8 << 20);
    }
}
