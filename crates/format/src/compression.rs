//! Compression of checkpoint layers and diffs, recognised by its magic bytes.

use std::io::{self, BufRead, Read};

/// zstd's frame magic.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
/// gzip's magic.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// What a stream's first bytes say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Detected {
    /// zstd frames.
    Zstd,
    /// gzip members.
    Gzip,
    /// Neither: taken as plain data.
    Plain,
}

/// Recognises zstd or gzip from the first bytes of a stream.
fn sniff(magic: &[u8]) -> Detected {
    if magic.starts_with(&ZSTD_MAGIC) {
        Detected::Zstd
    } else if magic.starts_with(&GZIP_MAGIC) {
        Detected::Gzip
    } else {
        Detected::Plain
    }
}

/// A reader of `input`'s content, decompressed if it is zstd or gzip
/// (multi-member gzip included), as it is if not.
pub fn decompressing<'a>(mut input: impl BufRead + 'a) -> io::Result<Box<dyn Read + 'a>> {
    let detected = sniff(input.fill_buf()?);
    Ok(match detected {
        Detected::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(input)?),
        Detected::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(input)),
        Detected::Plain => Box::new(input),
    })
}

/// Whether the file at `path` starts with zstd's or gzip's magic.
pub fn is_compressed_file(path: &std::path::Path) -> io::Result<bool> {
    let mut magic = [0u8; 4];
    let mut file = std::fs::File::open(path)?;
    let mut filled = 0;
    while filled < magic.len() {
        match file.read(&mut magic[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(sniff(&magic[..filled]) != Detected::Plain)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn each_form_is_recognised_and_read_back() {
        let data = b"checkpoint tree bytes".repeat(100);
        let zstd = zstd::encode_all(&data[..], 3).expect("zstd");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&data).expect("gzip");
        let gzip = gz.finish().expect("gzip");
        assert_eq!(sniff(&zstd), Detected::Zstd);
        assert_eq!(sniff(&gzip), Detected::Gzip);
        assert_eq!(sniff(&data), Detected::Plain);
        assert_eq!(sniff(&[]), Detected::Plain);
        for input in [&zstd[..], &gzip[..], &data[..]] {
            let mut out = Vec::new();
            decompressing(input).expect("reader").read_to_end(&mut out).expect("read");
            assert_eq!(out, data);
        }
    }

    #[test]
    fn files_are_sniffed_by_their_first_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let plain = dir.path().join("plain");
        let packed = dir.path().join("packed");
        let short = dir.path().join("short");
        std::fs::write(&plain, b"ustar....").expect("write");
        std::fs::write(&packed, zstd::encode_all(&b"x"[..], 1).expect("zstd")).expect("write");
        std::fs::write(&short, [0x1f]).expect("write");
        assert!(!is_compressed_file(&plain).expect("plain"));
        assert!(is_compressed_file(&packed).expect("packed"));
        assert!(!is_compressed_file(&short).expect("short"));
        assert!(is_compressed_file(&dir.path().join("missing")).is_err());
    }
}
