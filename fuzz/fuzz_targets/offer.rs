//! The numbers and the name an `Offer` and a `UdpStart` bring from the network, as the receiver checks them: the
//! file name (`validate_file_name`), the chunk plan (`ChunkPlan::new` from file and chunk size) and the DCSP
//! block layout (`BlockGeometry::new` from those and the shard size and count). A name that passes is safe to
//! join to the output dir; a plan or layout that is accepted tiles the file exactly, and every block number the
//! network can name either lies inside the file or is refused (`span` is `None`).
#![no_main]

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use trackshift_dcsp::BlockGeometry;
use trackshift_proto::plan::{MAX_CHUNKS, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE};
use trackshift_proto::ChunkPlan;
use trackshift_storage::{validate_file_name, MAX_NAME_BYTES, RESERVED_PREFIX};

#[derive(Arbitrary, Debug)]
struct Input {
    name: String,
    file_size: u64,
    chunk_size: u64,
    /// Chunk sizes in the accepted range more often than not.
    chunk_in_range: Option<u32>,
    shard_size: u32,
    data_shards: u8,
    blocks: Vec<u32>,
    chunks: Vec<u32>,
}

fuzz_target!(|input: Input| {
    if let Ok(name) = validate_file_name(&input.name) {
        assert_eq!(name, input.name);
        assert!(!name.is_empty() && name != "." && name != "..");
        assert!(!name.contains(['/', '\\', '\0']));
        assert!(!name.chars().any(char::is_control));
        assert!(name.len() <= MAX_NAME_BYTES && !name.starts_with(RESERVED_PREFIX));
    }

    let chunk_size = match input.chunk_in_range {
        Some(c) => MIN_CHUNK_SIZE + u64::from(c) % (MAX_CHUNK_SIZE - MIN_CHUNK_SIZE + 1),
        None => input.chunk_size,
    };
    let plan = ChunkPlan::new(input.file_size, chunk_size);
    let in_range = (MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size);
    let Ok(plan) = plan else {
        assert!(!in_range || input.file_size.div_ceil(chunk_size) > MAX_CHUNKS);
        return;
    };
    assert!(in_range && u64::from(plan.chunk_count()) <= MAX_CHUNKS);
    let n = plan.chunk_count();
    assert_eq!(u64::from(n), input.file_size.div_ceil(chunk_size));
    for &c in input.chunks.iter().take(64) {
        for i in [c, c % n.max(1), n.saturating_sub(1), n] {
            assert_eq!(plan.contains(i), i < n);
            if i < n {
                let (off, len) = (plan.offset(i), plan.len(i));
                assert!(len >= 1 && len <= chunk_size && off + len <= input.file_size);
                assert_eq!(off + len == input.file_size, i == n - 1);
            }
        }
    }

    let Ok(g) = BlockGeometry::new(
        input.file_size,
        chunk_size,
        input.shard_size,
        input.data_shards,
    ) else {
        return;
    };
    assert!(
        input.shard_size >= 2
            && input.shard_size % 2 == 0
            && (1..=128).contains(&input.data_shards)
    );
    assert_eq!(g.chunk_count(), n);
    assert!(g.span(g.block_limit()).is_none());
    let blocks = input
        .blocks
        .iter()
        .take(64)
        .flat_map(|&b| [b, b % g.block_limit().max(1)]);
    for b in blocks.chain(input.chunks.iter().take(16).flat_map(|&c| {
        let r = g.blocks_of_chunk(c % n.max(1));
        [r.start, r.end.saturating_sub(1), r.end]
    })) {
        let Some(s) = g.span(b) else { continue };
        assert!(b < g.block_limit());
        assert!(s.chunk < n && g.blocks_of_chunk(s.chunk).contains(&b));
        assert!(s.len >= 1 && u64::from(s.len) <= g.block_bytes());
        assert!(s.offset >= plan.offset(s.chunk));
        assert!(s.offset + u64::from(s.len) <= plan.offset(s.chunk) + plan.len(s.chunk));
        assert_eq!(u32::from(s.data_shards), s.len.div_ceil(g.shard_size()));
        assert!(s.data_shards >= 1 && s.data_shards <= g.data_shards());
    }
    // A chunk's blocks tile it exactly (checked for chunks of at most 4096 blocks).
    for &c in input.chunks.iter().take(4) {
        let c = c % n.max(1);
        let r = g.blocks_of_chunk(c);
        if n == 0 || r.len() > 4096 {
            continue;
        }
        let mut at = plan.offset(c);
        for b in r {
            let s = g.span(b).expect("a block of the chunk");
            assert_eq!(s.offset, at);
            at += u64::from(s.len);
        }
        assert_eq!(at, plan.offset(c) + plan.len(c));
    }
});
