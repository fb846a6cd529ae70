//! Large files of a checkpoint tree stored as they are.
//!
//! A checkpoint's memory is CRIU's `pages-*.img`: gigabytes CRIU has just written. Archiving and
//! compressing them into one layer writes them a second time (and reads them a third time to
//! restore), at a fraction of the disk's speed. So in the node-local store, every regular file of
//! the tree of at least [`MIN_SIZE`] bytes is a blob of its own, **the file CRIU wrote, moved into
//! the store** (`lazarus_store::Store::adopt_file`), and a restore hard-links it into the restore
//! tree instead of unpacking a copy. The rest of the tree (CRIU's small images, `config.dump`,
//! `spec.dump`, …) stays one compressed tar layer, the first of the manifest.
//!
//! In the manifest, such a file is a layer with media type [`MEDIA_TYPE`] whose
//! `org.opencontainers.image.title` ([`TITLE`]) is its path in the tree (`checkpoint/pages-1.img`).
//! That is lazarus's own layout: containerd, CRI-O and checkpointctl read one tar of the whole
//! tree, so what leaves the node (a registry push, `lazarus checkpoints export`) is that tar,
//! written from the layer and the files ([`write_tree_tar`]).

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};

use crate::digest::HashingReader;

/// Media type of a layer that is one file of the checkpoint tree, as it is.
pub const MEDIA_TYPE: &str = "application/vnd.lazarus.checkpoint.file.v1";
/// Media type of a layer that is one file of the checkpoint tree, zstd-compressed: for files
/// that compress well ([`pays_to_compress`]), stored compressed rather than as they are.
pub const MEDIA_TYPE_ZSTD: &str = "application/vnd.lazarus.checkpoint.file.v1+zstd";
/// The descriptor annotation with a compressed file's own size.
pub const FILE_SIZE: &str = "lazarus.dev/file-size";
/// Samples read to decide whether a file is worth compressing, and their size.
const SAMPLES: u64 = 16;
const SAMPLE_SIZE: usize = 64 * 1024;
/// The descriptor annotation naming the file's path in the tree.
pub const TITLE: &str = "org.opencontainers.image.title";
/// Files of at least this size are stored as their own blobs.
pub const MIN_SIZE: u64 = 1 << 20;

/// A large file of a tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeFile {
    /// Its path in the tree (`checkpoint/pages-1.img`).
    pub title: String,
    /// Where it is now.
    pub path: PathBuf,
    /// Its size.
    pub size: u64,
}

/// The regular files of at least `min_size` bytes under `tree` (symlinks are not followed),
/// sorted by path.
pub fn large_files(tree: &Path, min_size: u64) -> io::Result<Vec<TreeFile>> {
    let mut found = Vec::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(rel) = pending.pop() {
        for entry in fs::read_dir(tree.join(&rel))? {
            let entry = entry?;
            let kind = entry.file_type()?;
            let child = rel.join(entry.file_name());
            if kind.is_dir() {
                pending.push(child);
            } else if kind.is_file() {
                let size = entry.metadata()?.len();
                let title = child.to_str().map(str::to_owned);
                if let (true, Some(title)) = (size >= min_size, title) {
                    found.push(TreeFile { title, path: entry.path(), size });
                }
            }
        }
    }
    found.sort_by(|a, b| a.title.cmp(&b.title));
    Ok(found)
}

/// Whether zstd at level 1 halves `file` at least, judged from [`SAMPLES`] pieces spread over it:
/// memory full of zeros or repeated structures is stored compressed (a fraction of the disk and
/// of the time to write it), incompressible memory as it is (compressing it would cost a pass
/// over it for nothing).
pub fn pays_to_compress(file: &File, size: u64) -> io::Result<bool> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; SAMPLE_SIZE];
    let (mut raw, mut compressed) = (0usize, 0usize);
    let step = (size / SAMPLES).max(SAMPLE_SIZE as u64);
    let mut offset = 0;
    while offset < size {
        let n = file.read_at(&mut buf, offset)?;
        if n == 0 {
            break;
        }
        raw += n;
        compressed += zstd::bulk::compress(&buf[..n], 1)?.len();
        offset += step;
    }
    Ok(raw > 0 && compressed * 2 <= raw)
}

/// `tree/title`, when `title` is a plain relative path (no `..`, not absolute, not empty).
pub fn place(tree: &Path, title: &str) -> Option<PathBuf> {
    let rel = Path::new(title);
    let plain = rel.components().all(|c| matches!(c, Component::Normal(_)));
    (plain && !title.is_empty()).then(|| tree.join(rel))
}

/// Why a stored file could not be put in place.
#[derive(Debug, thiserror::Error)]
pub enum TreeFileError {
    /// The title is not a plain relative path.
    #[error("layer {digest}: its title {title:?} is not a plain relative path")]
    Title {
        /// The layer.
        digest: String,
        /// Its title.
        title: String,
    },
    /// The blob's content does not have its digest.
    #[error("layer {digest} ({title}) is damaged: its data has {actual}")]
    Damaged {
        /// The layer.
        digest: String,
        /// Its title.
        title: String,
        /// What the data hashes to.
        actual: String,
    },
    /// A file operation failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> TreeFileError + use<> {
    let path = path.to_owned();
    move |source| TreeFileError::Io { action, path, source }
}

/// Puts a compressed stored file (media type [`MEDIA_TYPE_ZSTD`]) at `tree/title`: decompressed
/// while its digest (of the compressed blob) is checked; nothing is left behind if it does not match.
pub fn unpack_in_place(blob: &Path, digest: &str, title: &str, tree: &Path) -> Result<PathBuf, TreeFileError> {
    let dest = place(tree, title)
        .ok_or_else(|| TreeFileError::Title { digest: digest.to_owned(), title: title.to_owned() })?;
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent).map_err(io_error("creating", parent))?;
    }
    let file = File::open(blob).map_err(io_error("opening", blob))?;
    let mut hashing = HashingReader::new(io::BufReader::with_capacity(1 << 20, file));
    let written = (|| {
        let mut out = io::BufWriter::with_capacity(1 << 20, File::create(&dest)?);
        let mut decoder = zstd::stream::read::Decoder::new(&mut hashing)?;
        io::copy(&mut decoder, &mut out)?;
        out.flush()
    })();
    let drained = io::copy(&mut hashing, &mut io::sink());
    let actual = hashing.into_digester().oci();
    if actual != digest || written.is_err() || drained.is_err() {
        let _ = fs::remove_file(&dest);
    }
    if actual != digest {
        return Err(TreeFileError::Damaged { digest: digest.to_owned(), title: title.to_owned(), actual });
    }
    written.map_err(io_error("decompressing into", &dest))?;
    drained.map_err(io_error("reading", blob))?;
    Ok(dest)
}

/// Checks that the blob at `blob` has `digest` (sha256 of its content), then makes it
/// `tree/title`: a hard link (no copy: the store's file is read-only from here on, CRIU only reads
/// its images), or a copy where the two are on different filesystems.
pub fn put_in_place(blob: &Path, digest: &str, title: &str, tree: &Path) -> Result<PathBuf, TreeFileError> {
    let dest = place(tree, title)
        .ok_or_else(|| TreeFileError::Title { digest: digest.to_owned(), title: title.to_owned() })?;
    let file = File::open(blob).map_err(io_error("opening", blob))?;
    let mut hashing = HashingReader::new(io::BufReader::with_capacity(1 << 20, file));
    io::copy(&mut hashing, &mut io::sink()).map_err(io_error("reading", blob))?;
    let actual = hashing.into_digester().oci();
    if actual != digest {
        return Err(TreeFileError::Damaged { digest: digest.to_owned(), title: title.to_owned(), actual });
    }
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent).map_err(io_error("creating", parent))?;
    }
    match fs::hard_link(blob, &dest) {
        Ok(()) => Ok(dest),
        Err(e) if e.raw_os_error() == Some(nix::libc::EXDEV) => {
            fs::copy(blob, &dest).map_err(io_error("copying into", &dest))?;
            Ok(dest)
        }
        Err(e) => Err(io_error("linking", &dest)(e)),
    }
}

/// One blob holding (a piece of) a stored file.
#[derive(Debug, Clone)]
pub struct StoredPiece {
    /// The blob's digest.
    pub digest: String,
    /// Where the blob is.
    pub blob: PathBuf,
    /// The bytes of the file it holds (not the blob's size, when compressed).
    pub size: u64,
    /// Whether the blob is zstd-compressed.
    pub compressed: bool,
}

/// One large file of a tree as the store holds it: one blob (the file as it is, or compressed),
/// or its chunks in order ([`crate::chunks`]).
#[derive(Debug, Clone)]
pub struct StoredFile {
    /// Its path in the tree.
    pub title: String,
    /// Its blobs, in file order.
    pub pieces: Vec<StoredPiece>,
}

impl StoredFile {
    /// The file's size.
    pub fn size(&self) -> u64 {
        self.pieces.iter().map(|p| p.size).sum()
    }
}

/// Checks every piece of `file` against its digest (two at a time), without keeping anything.
pub fn verify(file: &StoredFile) -> Result<(), TreeFileError> {
    let checked = crate::fsutil::on_workers(
        &file.pieces,
        2,
        |piece| verify_piece(piece, &file.title),
        || {
            Err(TreeFileError::Io {
                action: "checking",
                path: PathBuf::from(&file.title),
                source: io::Error::other("a worker panicked"),
            })
        },
    );
    checked.into_iter().collect()
}

fn verify_piece(piece: &StoredPiece, title: &str) -> Result<(), TreeFileError> {
    let blob = File::open(&piece.blob).map_err(io_error("opening", &piece.blob))?;
    let mut hashing = HashingReader::new(io::BufReader::with_capacity(1 << 20, blob));
    io::copy(&mut hashing, &mut io::sink()).map_err(io_error("reading", &piece.blob))?;
    let actual = hashing.into_digester().oci();
    if actual != piece.digest {
        return Err(TreeFileError::Damaged { digest: piece.digest.clone(), title: title.to_owned(), actual });
    }
    Ok(())
}

/// The data of `file`: its pieces one after the other, decompressed. Not checked: [`verify`] first.
pub fn read_data(file: &StoredFile) -> io::Result<Box<dyn Read + Send>> {
    let mut data: Box<dyn Read + Send> = Box::new(io::empty());
    for piece in &file.pieces {
        let blob = io::BufReader::with_capacity(1 << 20, File::open(&piece.blob)?);
        let piece_data: Box<dyn Read + Send> =
            if piece.compressed { Box::new(zstd::stream::read::Decoder::with_buffer(blob)?) } else { Box::new(blob) };
        data = Box::new(data.chain(exactly(piece_data, piece.size)));
    }
    Ok(data)
}

/// Puts the stored `file` at its place in `tree`, every piece checked against its digest: one
/// blob of the file as it is is hard-linked ([`put_in_place`]), one compressed blob
/// decompressed ([`unpack_in_place`]); chunks are written at their offsets, two at a time. A
/// damaged piece leaves nothing behind. Returns where it went.
pub fn place_file(file: &StoredFile, tree: &Path) -> Result<PathBuf, TreeFileError> {
    match file.pieces.as_slice() {
        [one] if !one.compressed => return put_in_place(&one.blob, &one.digest, &file.title, tree),
        [one] => return unpack_in_place(&one.blob, &one.digest, &file.title, tree),
        _ => {}
    }
    let dest = place(tree, &file.title)
        .ok_or_else(|| TreeFileError::Title { digest: first_digest(file), title: file.title.clone() })?;
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent).map_err(io_error("creating", parent))?;
    }
    let out = fs::OpenOptions::new().write(true).create_new(true).open(&dest).map_err(io_error("creating", &dest))?;
    let mut offsets = Vec::with_capacity(file.pieces.len());
    let mut offset = 0;
    for piece in &file.pieces {
        offsets.push((piece, offset));
        offset += piece.size;
    }
    let written = out.set_len(offset).map_err(io_error("sizing", &dest)).and_then(|()| {
        let outcomes = crate::fsutil::on_workers(
            &offsets,
            2,
            |(piece, at)| write_piece(piece, *at, &out, &file.title, &dest),
            || {
                Err(TreeFileError::Io {
                    action: "writing",
                    path: dest.clone(),
                    source: io::Error::other("a worker panicked"),
                })
            },
        );
        outcomes.into_iter().collect::<Result<(), _>>()
    });
    if let Err(e) = written {
        let _ = fs::remove_file(&dest);
        return Err(e);
    }
    Ok(dest)
}

fn first_digest(file: &StoredFile) -> String {
    file.pieces.first().map(|p| p.digest.clone()).unwrap_or_default()
}

/// One piece at `offset` of `out`: read whole (a chunk is a few MiB), checked, decompressed.
fn write_piece(piece: &StoredPiece, offset: u64, out: &File, title: &str, dest: &Path) -> Result<(), TreeFileError> {
    use std::os::unix::fs::FileExt;
    let blob = fs::read(&piece.blob).map_err(io_error("reading", &piece.blob))?;
    let actual = format!("sha256:{}", crate::digest::sha256_hex(&blob));
    if actual != piece.digest {
        return Err(TreeFileError::Damaged { digest: piece.digest.clone(), title: title.to_owned(), actual });
    }
    let data = if piece.compressed {
        let capacity = usize::try_from(piece.size).unwrap_or(usize::MAX);
        zstd::bulk::decompress(&blob, capacity).map_err(io_error("decompressing", &piece.blob))?
    } else {
        blob
    };
    if data.len() as u64 != piece.size {
        let source = io::Error::other(format!("it holds {} bytes, its descriptor says {}", data.len(), piece.size));
        return Err(TreeFileError::Io { action: "reading", path: piece.blob.clone(), source });
    }
    out.write_all_at(&data, offset).map_err(io_error("writing", dest))
}

/// The whole tree as one tar (checkpointctl's layout): the entries of `archive` (the first
/// layer's tar, decompressed) and then `files`, each checked against its digests before it is
/// written (a damaged one fails the call: throw the output away).
pub fn write_tree_tar(archive: impl Read, files: &[StoredFile], out: impl Write) -> Result<(), TreeFileError> {
    let tar_error = |source| TreeFileError::Io { action: "writing the tree's tar", path: PathBuf::new(), source };
    let mut builder = tar::Builder::new(out);
    builder.mode(tar::HeaderMode::Complete);
    let mut input = tar::Archive::new(archive);
    let copied = (|| -> io::Result<()> {
        for entry in input.entries()? {
            let entry = entry?;
            let mut header = entry.header().clone();
            let path = entry.path()?.into_owned();
            match header.entry_type() {
                tar::EntryType::Symlink | tar::EntryType::Link => {
                    let target = entry.link_name()?.map(|t| t.into_owned()).unwrap_or_default();
                    builder.append_link(&mut header, &path, &target)?;
                }
                _ => builder.append_data(&mut header, &path, entry)?,
            }
        }
        Ok(())
    })();
    copied.map_err(tar_error)?;
    for stored in files {
        verify(stored)?;
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(stored.size());
        header.set_mode(0o600);
        header.set_mtime(0);
        let data = read_data(stored).map_err(tar_error)?;
        builder.append_data(&mut header, &stored.title, data).map_err(tar_error)?;
    }
    builder.into_inner().and_then(|mut out| out.flush()).map_err(tar_error)
}

/// `size` bytes of `inner`: fewer is an error (a tar entry must hold what its header says).
fn exactly(inner: impl Read, size: u64) -> impl Read {
    struct Exactly<R> {
        inner: io::Take<R>,
        left: u64,
    }
    impl<R: Read> Read for Exactly<R> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.inner.read(buf)?;
            if n == 0 && self.left > 0 && !buf.is_empty() {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "a stored file is shorter than its size"));
            }
            self.left -= n as u64;
            Ok(n)
        }
    }
    Exactly { inner: inner.take(size), left: size }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_files_are_found_and_titles_stay_inside() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tree = dir.path();
        fs::create_dir_all(tree.join("checkpoint")).expect("mkdir");
        fs::write(tree.join("checkpoint/pages-1.img"), vec![7u8; 2048]).expect("write");
        fs::write(tree.join("checkpoint/core-1.img"), b"small").expect("write");
        fs::write(tree.join("rootfs-diff.tar"), vec![1u8; 4096]).expect("write");
        let found = large_files(tree, 1024).expect("walk");
        let titles: Vec<&str> = found.iter().map(|f| f.title.as_str()).collect();
        assert_eq!(titles, ["checkpoint/pages-1.img", "rootfs-diff.tar"]);
        assert_eq!(found[0].size, 2048);
        assert_eq!(place(tree, "checkpoint/pages-1.img"), Some(tree.join("checkpoint/pages-1.img")));
        for bad in ["", "/etc/passwd", "../x", "checkpoint/../../x", "./x"] {
            assert_eq!(place(tree, bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_stored_file_is_linked_after_its_digest_is_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blob = dir.path().join("blob");
        fs::write(&blob, b"pages").expect("write");
        let digest = format!("sha256:{}", crate::digest::sha256_hex(b"pages"));
        let tree = dir.path().join("tree");
        let placed = put_in_place(&blob, &digest, "checkpoint/pages-1.img", &tree).expect("placed");
        assert_eq!(fs::read(&placed).expect("read"), b"pages");
        use std::os::unix::fs::MetadataExt;
        assert_eq!(fs::metadata(&placed).expect("meta").ino(), fs::metadata(&blob).expect("meta").ino(), "linked");
        fs::write(&blob, b"PAGES").expect("damage");
        let err = put_in_place(&blob, &digest, "checkpoint/pages-2.img", &tree).expect_err("damaged");
        assert!(matches!(err, TreeFileError::Damaged { .. }), "{err}");
        assert!(!tree.join("checkpoint/pages-2.img").exists(), "nothing placed");
        let err = put_in_place(&blob, &digest, "../escape", &tree).expect_err("title");
        assert!(matches!(err, TreeFileError::Title { .. }), "{err}");
    }

    #[test]
    fn compressible_files_are_told_from_incompressible_ones_and_come_back_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let zeros = dir.path().join("zeros");
        fs::write(&zeros, vec![0u8; 4 << 20]).expect("write");
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let noise: Vec<u8> = (0..(4 << 20) / 8)
            .flat_map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x.to_le_bytes()
            })
            .collect();
        let random = dir.path().join("random");
        fs::write(&random, &noise).expect("write");
        let open = |p: &Path| File::open(p).expect("open");
        assert!(pays_to_compress(&open(&zeros), 4 << 20).expect("sample"));
        assert!(!pays_to_compress(&open(&random), 4 << 20).expect("sample"));
        let blob = dir.path().join("blob");
        let packed = zstd::encode_all(&noise[..1000], 1).expect("zstd");
        fs::write(&blob, &packed).expect("write");
        let digest = format!("sha256:{}", crate::digest::sha256_hex(&packed));
        let tree = dir.path().join("tree");
        let placed = unpack_in_place(&blob, &digest, "checkpoint/pages-1.img", &tree).expect("unpacked");
        assert_eq!(fs::read(placed).expect("read"), &noise[..1000]);
        let err = unpack_in_place(&blob, "sha256:00", "checkpoint/pages-2.img", &tree).expect_err("damaged");
        assert!(matches!(err, TreeFileError::Damaged { .. }), "{err}");
        assert!(!tree.join("checkpoint/pages-2.img").exists(), "nothing left behind");
    }

    #[test]
    fn the_tree_tar_holds_the_archive_and_the_files_and_names_damage() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut small = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_size(0);
        header.set_mode(0o755);
        small.append_data(&mut header, "checkpoint", io::empty()).expect("dir");
        let mut header = tar::Header::new_gnu();
        header.set_size(5);
        header.set_mode(0o644);
        small.append_data(&mut header, "checkpoint/core-1.img", &b"small"[..]).expect("file");
        let small = small.into_inner().expect("tar");
        let blob = dir.path().join("blob");
        fs::write(&blob, b"pag").expect("write");
        let packed = dir.path().join("packed");
        fs::write(&packed, zstd::encode_all(&b"es"[..], 1).expect("zstd")).expect("write");
        let digest_of = |p: &Path| format!("sha256:{}", crate::digest::sha256_hex(&fs::read(p).expect("read")));
        let stored = |digest: String| StoredFile {
            title: "checkpoint/pages-1.img".into(),
            pieces: vec![
                StoredPiece { digest, blob: blob.clone(), size: 3, compressed: false },
                StoredPiece { digest: digest_of(&packed), blob: packed.clone(), size: 2, compressed: true },
            ],
        };
        let mut out = Vec::new();
        write_tree_tar(&small[..], &[stored(digest_of(&blob))], &mut out).expect("tar");
        let mut read = tar::Archive::new(&out[..]);
        let mut seen = Vec::new();
        for entry in read.entries().expect("entries") {
            let mut entry = entry.expect("entry");
            let mut data = Vec::new();
            entry.read_to_end(&mut data).expect("data");
            seen.push((entry.path().expect("path").display().to_string(), data));
        }
        assert_eq!(
            seen,
            [
                ("checkpoint".to_owned(), Vec::new()),
                ("checkpoint/core-1.img".to_owned(), b"small".to_vec()),
                ("checkpoint/pages-1.img".to_owned(), b"pages".to_vec())
            ]
        );
        let err = write_tree_tar(&small[..], &[stored("sha256:00".into())], io::sink()).expect_err("damaged");
        assert!(matches!(&err, TreeFileError::Damaged { title, .. } if title == "checkpoint/pages-1.img"), "{err}");
    }

    #[test]
    fn a_chunked_file_is_put_together_in_order_and_a_damaged_chunk_leaves_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data: Vec<u8> = (0..3 * 4096 + 100).map(|i| (i % 251) as u8).collect();
        let pieces: Vec<StoredPiece> = data
            .chunks(4096)
            .enumerate()
            .map(|(i, chunk)| {
                let compressed = i % 2 == 1;
                let bytes = if compressed { zstd::encode_all(chunk, 1).expect("zstd") } else { chunk.to_vec() };
                let blob = dir.path().join(format!("blob-{i}"));
                fs::write(&blob, &bytes).expect("write");
                let digest = format!("sha256:{}", crate::digest::sha256_hex(&bytes));
                StoredPiece { digest, blob, size: chunk.len() as u64, compressed }
            })
            .collect();
        let file = StoredFile { title: "checkpoint/pages-1.img".into(), pieces };
        assert_eq!(file.size(), data.len() as u64);
        verify(&file).expect("intact");
        let tree = dir.path().join("tree");
        let placed = place_file(&file, &tree).expect("placed");
        assert_eq!(fs::read(&placed).expect("read"), data);
        let mut all = Vec::new();
        read_data(&file).expect("open").read_to_end(&mut all).expect("read");
        assert_eq!(all, data);

        let mut damaged = file.clone();
        damaged.title = "checkpoint/pages-2.img".into();
        fs::write(&damaged.pieces[2].blob, vec![0u8; 4096]).expect("damage");
        let err = place_file(&damaged, &tree).expect_err("damaged");
        assert!(matches!(&err, TreeFileError::Damaged { digest, .. } if *digest == damaged.pieces[2].digest), "{err}");
        assert!(!tree.join("checkpoint/pages-2.img").exists(), "nothing left behind");
        assert!(matches!(verify(&damaged), Err(TreeFileError::Damaged { .. })));
    }
}
