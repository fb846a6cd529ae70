//! sha256 over streams, the one copy: blobs written into the store, layers
//! packaged, archives unpacked and registry downloads are all hashed here.

use std::io::{self, Read, Write};

use sha2::{Digest as _, Sha256};

/// A running sha256 with the number of bytes it has seen.
#[derive(Debug, Clone, Default)]
pub struct Digester {
    hasher: Sha256,
    size: u64,
}

impl Digester {
    /// A new, empty digest.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `bytes`.
    pub fn update(&mut self, bytes: &[u8]) {
        self.hasher.update(bytes);
        self.size += bytes.len() as u64;
    }

    /// Bytes seen so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The digest as lower-case hex (no `sha256:` prefix).
    pub fn hex(self) -> String {
        format!("{:x}", self.hasher.finalize())
    }

    /// The digest as an OCI digest string, `sha256:<hex>`.
    pub fn oci(self) -> String {
        format!("sha256:{}", self.hex())
    }
}

/// sha256 (hex) of a byte slice.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let mut digester = Digester::new();
    digester.update(bytes);
    digester.hex()
}

/// A reader that hashes what passes through it.
#[derive(Debug)]
pub struct HashingReader<R> {
    inner: R,
    digester: Digester,
}

impl<R> HashingReader<R> {
    /// Hashes what is read from `inner`.
    pub fn new(inner: R) -> Self {
        Self { inner, digester: Digester::new() }
    }

    /// The digest of what was read so far.
    pub fn into_digester(self) -> Digester {
        self.digester
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.digester.update(&buf[..n]);
        Ok(n)
    }
}

/// A writer that hashes what passes through it.
#[derive(Debug)]
pub struct HashingWriter<W> {
    inner: W,
    digester: Digester,
}

impl<W> HashingWriter<W> {
    /// Hashes what is written to `inner`.
    pub fn new(inner: W) -> Self {
        Self { inner, digester: Digester::new() }
    }

    /// The digest of what was written, and the inner writer.
    pub fn finish(self) -> (Digester, W) {
        (self.digester, self.inner)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.digester.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // sha256("abc"), FIPS 180-2 appendix B.1.
    const ABC: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    #[test]
    fn every_path_gives_the_same_known_digest() {
        assert_eq!(sha256_hex(b"abc"), ABC);
        let mut reader = HashingReader::new(&b"abc"[..]);
        let mut sink = Vec::new();
        std::io::copy(&mut reader, &mut sink).expect("copy");
        assert_eq!(reader.into_digester().oci(), format!("sha256:{ABC}"));
        let mut writer = HashingWriter::new(Vec::new());
        writer.write_all(b"ab").expect("write");
        writer.write_all(b"c").expect("write");
        let (digester, inner) = writer.finish();
        assert_eq!(digester.size(), 3);
        assert_eq!(digester.hex(), ABC);
        assert_eq!(inner, b"abc");
    }
}
