//! Content-defined chunking: where files are cut, and how big chunks are.
//!
//! Files are cut with FastCDC (the 2020 variant, normalisation level 1) so an
//! insert near the start of a file changes one or two chunks, not every chunk
//! after it (as fixed-size blocks would). Each chunk is named by its BLAKE3.
//!
//! ## Sizes, and why
//!
//! The average chunk size grows with the file, so the chunk list of a 100 GiB
//! file stays about 25,600 entries (~1 MiB of index) while a small file still
//! gets fine-grained deltas:
//!
//! | file size | average | min | max |
//! |---|---|---|---|
//! | < 768 MiB | 64 KiB | 16 KiB | 256 KiB |
//! | < 1.5 GiB | 128 KiB | 32 KiB | 512 KiB |
//! | … doubling … | | | |
//! | ≥ 24 GiB | 4 MiB | 1 MiB | 16 MiB |
//!
//! `min = avg / 4` and `max = avg * 4` (FastCDC's recommended spread). A file
//! smaller than `min` is one chunk. The tiers change at 1.5 × a power of two,
//! not at the power itself, because files of exactly 2^k bytes are common and
//! one more byte must not re-cut the whole file. A file that already has
//! chunks keeps its previous average while that stays within a factor of two
//! of the ideal one (hysteresis: [`ChunkParams::for_file`]), so a file that
//! grows across a tier still shares its old chunks.
//!
//! This module is pure: the store feeds it bytes ([`Chunker::next_cut`]).

use fastcdc::v2020::{self, Normalization};

use crate::entry::{ChunkRef, Content};
use crate::ids::Hash;

/// The smallest average chunk size used.
pub const MIN_AVG: u32 = 64 * 1024;
/// The largest average chunk size used (FastCDC's limit).
pub const MAX_AVG: u32 = 4 * 1024 * 1024;
/// Chunks per file below which the average stops growing (1.5 × 8192).
const TARGET_CHUNKS: u64 = 12 * 1024;

/// The parameters a file is cut with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkParams {
    /// Average chunk size (a power of two).
    pub avg: u32,
}

impl ChunkParams {
    /// The ideal parameters for a file of `size` bytes.
    pub fn ideal(size: u64) -> Self {
        let want = (size / TARGET_CHUNKS).max(1).next_power_of_two();
        let avg = want.clamp(u64::from(MIN_AVG), u64::from(MAX_AVG)) as u32;
        ChunkParams { avg }
    }

    /// The parameters for a file of `size` bytes whose previous version was
    /// cut with average `previous` (if any): the previous one is kept while it
    /// is within a factor of two of the ideal.
    pub fn for_file(size: u64, previous: Option<u32>) -> Self {
        let ideal = Self::ideal(size);
        match previous {
            Some(p)
                if p.is_power_of_two()
                    && (MIN_AVG..=MAX_AVG).contains(&p)
                    && p >= ideal.avg / 2
                    && p <= ideal.avg.saturating_mul(2) =>
            {
                ChunkParams { avg: p }
            }
            _ => ideal,
        }
    }

    /// Smallest chunk (except a file's last one).
    pub fn min(&self) -> u32 {
        self.avg / 4
    }

    /// Largest chunk.
    pub fn max(&self) -> u32 {
        self.avg * 4
    }
}

/// Finds cut points in a stream of bytes, one chunk at a time.
#[derive(Debug, Clone)]
pub struct Chunker {
    params: ChunkParams,
    mask_s: u64,
    mask_l: u64,
}

impl Chunker {
    /// A cutter for `params`.
    pub fn new(params: ChunkParams) -> Self {
        let (mask_s, mask_l) = v2020::select_masks(params.avg as usize, Normalization::Level1);
        Chunker {
            params,
            mask_s,
            mask_l,
        }
    }

    /// The parameters in use.
    pub fn params(&self) -> ChunkParams {
        self.params
    }

    /// The length of the next chunk at the start of `buf`, or `None` when
    /// more bytes are needed to decide (fewer than `max` are buffered and the
    /// stream has not ended). At the end of the stream the rest is one chunk.
    pub fn next_cut(&self, buf: &[u8], at_end: bool) -> Option<usize> {
        if buf.is_empty() {
            return None;
        }
        if buf.len() < self.params.max() as usize && !at_end {
            return None;
        }
        let (_, len) = v2020::cut(
            buf,
            self.params.min() as usize,
            self.params.avg as usize,
            self.params.max() as usize,
            self.mask_s,
            self.mask_l,
            self.mask_s << 1,
            self.mask_l << 1,
        );
        Some(len)
    }
}

/// Cuts and hashes an in-memory file (for tests, simulation and small files).
pub fn content_of(data: &[u8], params: ChunkParams) -> Content {
    let chunker = Chunker::new(params);
    let mut chunks = Vec::new();
    let mut pos = 0;
    while let Some(len) = chunker.next_cut(&data[pos..], true) {
        chunks.push(ChunkRef {
            hash: Hash::of(&data[pos..pos + len]),
            len: len as u32,
        });
        pos += len;
    }
    Content {
        hash: Hash::of(data),
        chunk_avg: params.avg,
        chunks,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn tiers_grow_with_size_and_avoid_powers_of_two() {
        assert_eq!(ChunkParams::ideal(0).avg, MIN_AVG);
        assert_eq!(ChunkParams::ideal(512 << 20).avg, MIN_AVG);
        assert_eq!(ChunkParams::ideal((512 << 20) + 100).avg, MIN_AVG);
        assert_eq!(ChunkParams::ideal(1 << 30).avg, 128 * 1024);
        assert_eq!(ChunkParams::ideal(100 << 30).avg, MAX_AVG);
        let chunks_100g = (100u64 << 30) / u64::from(MAX_AVG);
        assert!(chunks_100g <= 32 * 1024);
    }

    #[test]
    fn previous_average_is_kept_within_a_factor_of_two() {
        assert_eq!(ChunkParams::for_file(1 << 30, Some(MIN_AVG)).avg, MIN_AVG);
        assert_eq!(
            ChunkParams::for_file(4 << 30, Some(MIN_AVG)).avg,
            512 * 1024
        );
        assert_eq!(ChunkParams::for_file(10, Some(12345)).avg, MIN_AVG);
    }

    #[test]
    fn chunks_cover_the_file_within_bounds() {
        let data = pseudo_random(3 << 20, 1);
        let p = ChunkParams::ideal(data.len() as u64);
        let c = content_of(&data, p);
        let total: u64 = c.chunks.iter().map(|c| u64::from(c.len)).sum();
        assert_eq!(total, data.len() as u64);
        for ch in &c.chunks[..c.chunks.len() - 1] {
            assert!(ch.len >= p.min() && ch.len <= p.max());
        }
        assert_eq!(c.hash, Hash::of(&data));
    }

    #[test]
    fn an_insert_changes_few_chunks() {
        let data = pseudo_random(4 << 20, 2);
        let mut edited = data[..5000].to_vec();
        edited.extend_from_slice(&[42u8; 100]);
        edited.extend_from_slice(&data[5000..]);
        let p = ChunkParams::ideal(data.len() as u64);
        let before: std::collections::HashSet<_> =
            content_of(&data, p).chunks.iter().map(|c| c.hash).collect();
        let after = content_of(&edited, p);
        let new_bytes: u64 = after
            .chunks
            .iter()
            .filter(|c| !before.contains(&c.hash))
            .map(|c| u64::from(c.len))
            .sum();
        assert!(new_bytes <= 2 * u64::from(p.max()), "{new_bytes} new bytes");
    }

    #[test]
    fn streaming_cuts_equal_in_memory_cuts() {
        let data = pseudo_random(2 << 20, 3);
        let p = ChunkParams::ideal(data.len() as u64);
        let whole = content_of(&data, p);
        // Feed the chunker through a small window, as the store does.
        let chunker = Chunker::new(p);
        let mut lens = Vec::new();
        let mut window: Vec<u8> = Vec::new();
        let mut fed = 0;
        loop {
            let at_end = fed == data.len();
            match chunker.next_cut(&window, at_end) {
                Some(n) => {
                    lens.push(n as u32);
                    window.drain(..n);
                }
                None if at_end => break,
                None => {
                    let take = (data.len() - fed).min(100_000);
                    window.extend_from_slice(&data[fed..fed + take]);
                    fed += take;
                }
            }
        }
        let expected: Vec<u32> = whole.chunks.iter().map(|c| c.len).collect();
        assert_eq!(lens, expected);
    }
}
