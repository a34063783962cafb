//! One read pass over a file: cut it into chunks, hash every chunk and the
//! whole file, and hand each chunk's bytes to a caller (the copier writes
//! them; the scanner drops them).
//!
//! Files that fit in the read buffer are read at once; a file of one chunk
//! is hashed once (its chunk hash is its file hash). Larger files stream
//! through a buffer of at least twice the largest chunk.

use std::fs::File;
use std::io::{self, Read};

use meshsync_core::chunking::{ChunkParams, Chunker};
use meshsync_core::entry::{ChunkRef, Content};
use meshsync_core::ids::Hash;

/// The smallest read buffer (whole files up to this size are read at once).
pub const MIN_BUFFER: usize = 1 << 20;

/// Reads `file` to its end, calling `each_chunk(bytes, hash)` for every chunk
/// in order, and returns the file's content record. `size_hint` (the stat
/// size) only sizes the buffer; the bytes read are what counts.
pub fn read_chunks(
    file: &mut File,
    size_hint: u64,
    params: ChunkParams,
    mut each_chunk: impl FnMut(&[u8], Hash) -> io::Result<()>,
) -> io::Result<Content> {
    let chunker = Chunker::new(params);
    let cap = MIN_BUFFER.max(2 * params.max() as usize);
    let small = size_hint < cap as u64;
    let mut buf = vec![0u8; if small { size_hint as usize + 1 } else { cap }];
    let mut whole = blake3::Hasher::new();
    let mut chunks = Vec::new();
    let (mut start, mut end) = (0usize, 0usize);
    let mut at_end = false;
    let mut total = 0u64;
    loop {
        // Fill the buffer unless the stream has ended.
        while !at_end && end < buf.len() {
            match file.read(&mut buf[end..]) {
                Ok(0) => at_end = true,
                Ok(n) => end += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
            if small && end == buf.len() {
                // Larger than stat said: grow and keep streaming.
                buf.resize(buf.len() * 2, 0);
            }
        }
        while let Some(len) = chunker.next_cut(&buf[start..end], at_end) {
            let bytes = &buf[start..start + len];
            let hash = Hash::of(bytes);
            if !small {
                whole.update(bytes);
            }
            each_chunk(bytes, hash)?;
            chunks.push(ChunkRef {
                hash,
                len: len as u32,
            });
            total += len as u64;
            start += len;
        }
        if at_end {
            break;
        }
        buf.copy_within(start..end, 0);
        end -= start;
        start = 0;
    }
    let hash = if small {
        match chunks.as_slice() {
            [one] => one.hash,
            _ => Hash::of(&buf[..end]),
        }
    } else {
        whole.finalize().into()
    };
    if chunks.is_empty() {
        debug_assert_eq!(total, 0);
    }
    Ok(Content {
        hash,
        chunk_avg: params.avg,
        chunks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshsync_core::chunking::content_of;
    use std::io::{Seek, Write};

    fn data(len: usize) -> Vec<u8> {
        let mut x = 0x1234_5678u32;
        (0..len)
            .map(|_| {
                x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (x >> 24) as u8
            })
            .collect()
    }

    #[test]
    fn matches_in_memory_chunking_for_all_sizes() {
        for len in [0, 1, 5000, 100_000, 3 << 20, (9 << 20) + 17] {
            let d = data(len);
            let mut f = tempfile::tempfile().unwrap();
            f.write_all(&d).unwrap();
            f.rewind().unwrap();
            let p = ChunkParams::ideal(len as u64);
            let mut seen = Vec::new();
            let c = read_chunks(&mut f, len as u64, p, |b, _| {
                seen.extend_from_slice(b);
                Ok(())
            })
            .unwrap();
            assert_eq!(c, content_of(&d, p), "len {len}");
            assert_eq!(seen, d);
        }
    }

    #[test]
    fn a_wrong_size_hint_still_reads_everything() {
        let d = data(300_000);
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&d).unwrap();
        f.rewind().unwrap();
        let p = ChunkParams::ideal(0);
        let c = read_chunks(&mut f, 10, p, |_, _| Ok(())).unwrap();
        assert_eq!(c, content_of(&d, p));
    }
}
