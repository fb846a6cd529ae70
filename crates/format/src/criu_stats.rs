//! CRIU's `stats-dump` image: how long the dump froze the container.
//!
//! Layout (CRIU `criu/include/magic.h`, `images/stats.proto`): two 32-bit
//! magics (service image + stats), then one length-prefixed `StatsEntry`.

use prost::Message;

/// `dump_stats_entry` (times in microseconds).
#[derive(Clone, PartialEq, Message)]
pub struct DumpStats {
    /// Time to freeze the process tree.
    #[prost(uint32, tag = "1")]
    pub freezing_time: u32,
    /// Time the tree stayed frozen.
    #[prost(uint32, tag = "2")]
    pub frozen_time: u32,
    /// Time spent dumping memory.
    #[prost(uint32, tag = "3")]
    pub memdump_time: u32,
    /// Time spent writing memory.
    #[prost(uint32, tag = "4")]
    pub memwrite_time: u32,
    /// Pages scanned.
    #[prost(uint64, tag = "5")]
    pub pages_scanned: u64,
    /// Pages skipped because a parent checkpoint had them.
    #[prost(uint64, tag = "6")]
    pub pages_skipped_parent: u64,
    /// Pages written.
    #[prost(uint64, tag = "7")]
    pub pages_written: u64,
}

/// `stats_entry`.
#[derive(Clone, PartialEq, Message)]
pub struct StatsEntry {
    /// Dump statistics.
    #[prost(message, optional, tag = "1")]
    pub dump: Option<DumpStats>,
}

/// Parses a `stats-dump` file's bytes.
pub fn parse(bytes: &[u8]) -> Option<DumpStats> {
    // Service images carry two magics; be lenient about one.
    [8usize, 4].iter().find_map(|&offset| {
        let header = bytes.get(offset..offset + 4)?;
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let body = bytes.get(offset + 4..offset + 4 + len)?;
        StatsEntry::decode(body).ok()?.dump
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_stats_image() {
        let entry = StatsEntry {
            dump: Some(DumpStats { freezing_time: 120, frozen_time: 90_000, pages_written: 42, ..Default::default() }),
        };
        let body = entry.encode_to_vec();
        let mut file = vec![0x40, 0x59, 0x10, 0x55, 0x06, 0x33, 0x09, 0x57];
        file.extend_from_slice(&(body.len() as u32).to_le_bytes());
        file.extend_from_slice(&body);
        let stats = parse(&file).expect("parsed");
        assert_eq!(stats.frozen_time, 90_000);
        assert_eq!(stats.pages_written, 42);
        assert_eq!(parse(b"short"), None);
    }
}
