//! The journal that makes the in-process log durable: every change to the log (a topic
//! created or deleted, a record appended, a group's offset committed) is appended to a
//! file in the data directory, and replayed when the log is opened again.
//!
//! # Format
//!
//! Segments `journal-NNNNNNNNNNNNNNNNNNNN.log`, numbered in order. Each holds frames:
//! `len: u32 LE` (of what follows the checksum), `crc32: u32 LE` (of the same bytes),
//! then a kind byte and its fields (integers little-endian, strings and byte strings
//! length-prefixed). A segment begins with a checkpoint: the names of all topics, every
//! topic with the end of each partition, and every group's topics and committed
//! offsets. So a segment is needed only while it holds records some group has not
//! committed: the others are removed, whichever they are, and reading back the ones
//! kept, in order, each from its checkpoint, gives the log as it was.
//!
//! # Writing
//!
//! Appends go to a buffer under the log's lock, in the log's own order. One writer
//! thread takes the whole buffer, writes it, optionally syncs the file, and then tells
//! every publisher waiting for it: many publishes share one write (group commit).
//! Commits do not wait: a commit lost in a crash only means its records are delivered
//! again, which consumers handle anyway.
//!
//! # Reading back
//!
//! Frames are applied in order. A frame cut short or with a wrong checksum at the end of
//! the last segment is the tail of a write a crash interrupted: it is cut off. Anywhere
//! else it is damage, and opening fails rather than guess.

use bytes::Bytes;
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};

/// Size after which the writer starts a new segment.
pub(crate) const SEGMENT_BYTES: u64 = 64 << 20;

/// Largest frame read back (a record is at most a few megabytes).
const MAX_FRAME: usize = 64 << 20;

const TOPIC: u8 = 1;
const DELETED: u8 = 2;
const RECORD: u8 = 3;
const COMMIT: u8 = 4;
const PARTITION_END: u8 = 5;
const READS: u8 = 6;
const TOPICS: u8 = 7;

/// One change to the log, as read back.
#[derive(Debug, PartialEq)]
pub(crate) enum Entry {
    /// A topic was created with this many partitions.
    Topic { name: String, partitions: u32 },
    /// A topic was deleted.
    Deleted { name: String },
    /// A record was appended at `offset`.
    Record {
        topic: String,
        partition: u32,
        offset: u64,
        key: Bytes,
        payload: Bytes,
    },
    /// A group will next read `partition` of `topic` at `next`.
    Commit {
        group: String,
        topic: String,
        partition: u32,
        next: u64,
    },
    /// Checkpoint: the next record of `partition` of `topic` gets offset `end`.
    PartitionEnd {
        topic: String,
        partition: u32,
        end: u64,
    },
    /// Checkpoint: `group` reads `topic`.
    Reads { group: String, topic: String },
    /// Checkpoint: these are all the topics there are.
    Topics { names: Vec<String> },
}

/// Appends frames to a buffer, and counts every byte it was ever given: its position
/// in the journal's stream of frames.
#[derive(Default)]
pub(crate) struct Encoder {
    buf: Vec<u8>,
    taken: u64,
}

impl Encoder {
    /// The frames so far; the buffer starts over.
    pub(crate) fn take(&mut self) -> Vec<u8> {
        self.taken += self.buf.len() as u64;
        std::mem::take(&mut self.buf)
    }

    /// Bytes encoded since the encoder was made.
    pub(crate) fn position(&self) -> u64 {
        self.taken + self.buf.len() as u64
    }

    pub(crate) fn topic(&mut self, name: &str, partitions: u32) {
        self.frame(TOPIC, |b| {
            put_str(b, name);
            b.extend_from_slice(&partitions.to_le_bytes());
        });
    }

    pub(crate) fn deleted(&mut self, name: &str) {
        self.frame(DELETED, |b| put_str(b, name));
    }

    pub(crate) fn record(
        &mut self,
        topic: &str,
        partition: u32,
        offset: u64,
        key: &[u8],
        payload: &[u8],
    ) {
        self.frame(RECORD, |b| {
            put_str(b, topic);
            b.extend_from_slice(&partition.to_le_bytes());
            b.extend_from_slice(&offset.to_le_bytes());
            put_bytes(b, key);
            put_bytes(b, payload);
        });
    }

    pub(crate) fn commit(&mut self, group: &str, topic: &str, partition: u32, next: u64) {
        self.frame(COMMIT, |b| {
            put_str(b, group);
            put_str(b, topic);
            b.extend_from_slice(&partition.to_le_bytes());
            b.extend_from_slice(&next.to_le_bytes());
        });
    }

    pub(crate) fn partition_end(&mut self, topic: &str, partition: u32, end: u64) {
        self.frame(PARTITION_END, |b| {
            put_str(b, topic);
            b.extend_from_slice(&partition.to_le_bytes());
            b.extend_from_slice(&end.to_le_bytes());
        });
    }

    pub(crate) fn topics<'a>(&mut self, names: impl ExactSizeIterator<Item = &'a str>) {
        self.frame(TOPICS, |b| {
            let count = u32::try_from(names.len()).expect("under 4 billion topics");
            b.extend_from_slice(&count.to_le_bytes());
            for name in names {
                put_str(b, name);
            }
        });
    }

    pub(crate) fn reads(&mut self, group: &str, topic: &str) {
        self.frame(READS, |b| {
            put_str(b, group);
            put_str(b, topic);
        });
    }

    fn frame(&mut self, kind: u8, body: impl FnOnce(&mut Vec<u8>)) {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0; 8]);
        self.buf.push(kind);
        body(&mut self.buf);
        let content = &self.buf[start + 8..];
        let len = u32::try_from(content.len()).expect("a frame is under 4 GiB");
        let crc = crc32fast::hash(content);
        self.buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
        self.buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    }
}

fn put_str(buf: &mut Vec<u8>, s: &str) {
    put_bytes(buf, s.as_bytes());
}

fn put_bytes(buf: &mut Vec<u8>, bytes: &[u8]) {
    let len = u32::try_from(bytes.len()).expect("a field is under 4 GiB");
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(bytes);
}

/// Fields of one frame, read in order.
struct Fields<'a> {
    rest: &'a [u8],
}

impl<'a> Fields<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.rest.len() < n {
            return None;
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Some(head)
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = self.u32()? as usize;
        self.take(len)
    }

    fn string(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?.to_vec()).ok()
    }
}

fn decode(content: &[u8]) -> Option<Entry> {
    let (&kind, rest) = content.split_first()?;
    let mut f = Fields { rest };
    let entry = match kind {
        TOPIC => Entry::Topic {
            name: f.string()?,
            partitions: f.u32()?,
        },
        DELETED => Entry::Deleted { name: f.string()? },
        RECORD => Entry::Record {
            topic: f.string()?,
            partition: f.u32()?,
            offset: f.u64()?,
            key: Bytes::copy_from_slice(f.bytes()?),
            payload: Bytes::copy_from_slice(f.bytes()?),
        },
        COMMIT => Entry::Commit {
            group: f.string()?,
            topic: f.string()?,
            partition: f.u32()?,
            next: f.u64()?,
        },
        PARTITION_END => Entry::PartitionEnd {
            topic: f.string()?,
            partition: f.u32()?,
            end: f.u64()?,
        },
        READS => Entry::Reads {
            group: f.string()?,
            topic: f.string()?,
        },
        TOPICS => {
            let count = f.u32()?;
            let names = (0..count)
                .map(|_| f.string())
                .collect::<Option<Vec<String>>>()?;
            Entry::Topics { names }
        }
        _ => return None,
    };
    f.rest.is_empty().then_some(entry)
}

/// How a segment ended when it was read back.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum End {
    /// Every frame was whole.
    Clean,
    /// A frame cut short or damaged starts at this byte.
    Torn(u64),
}

/// Reads the frames of the segment at `path` into `apply`; says where it ended.
pub(crate) fn read_segment(path: &Path, mut apply: impl FnMut(Entry)) -> io::Result<End> {
    let mut reader = BufReader::with_capacity(1 << 20, File::open(path)?);
    let mut at: u64 = 0;
    let mut header = [0u8; 8];
    let mut content = Vec::new();
    loop {
        match read_full(&mut reader, &mut header)? {
            0 => return Ok(End::Clean),
            8 => {}
            _ => return Ok(End::Torn(at)),
        }
        let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
        if len == 0 || len > MAX_FRAME {
            return Ok(End::Torn(at));
        }
        content.resize(len, 0);
        if read_full(&mut reader, &mut content)? < len || crc32fast::hash(&content) != crc {
            return Ok(End::Torn(at));
        }
        let Some(entry) = decode(&content) else {
            return Ok(End::Torn(at));
        };
        apply(entry);
        at += 8 + len as u64;
    }
}

/// Reads until `buf` is full or the file ends; returns how much was read.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut read = 0;
    while read < buf.len() {
        match reader.read(&mut buf[read..]) {
            Ok(0) => break,
            Ok(n) => read += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(read)
}

/// The segments in `dir`, oldest first, by number.
pub(crate) fn segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let number = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("journal-"))
            .and_then(|n| n.strip_suffix(".log"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(number) = number {
            out.push((number, path));
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// The path of segment `number` in `dir`.
pub(crate) fn segment_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("journal-{number:020}.log"))
}

/// The segments of a journal on disk: the one being written, and the start of the
/// next when it is full.
pub(crate) struct Files {
    dir: PathBuf,
    segment: Segment,
    segment_bytes: u64,
}

impl Files {
    /// Appends to `segment`, in `dir`; a new segment is started past `segment_bytes`.
    pub(crate) fn new(dir: PathBuf, segment: Segment, segment_bytes: u64) -> Self {
        Self {
            dir,
            segment,
            segment_bytes,
        }
    }

    /// The directory the journal is in (for messages).
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends `bytes` to the segment being written.
    pub(crate) fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        let started = std::time::Instant::now();
        self.segment.append(bytes)?;
        metrics::histogram!("chorus_log_journal_write_seconds")
            .record(started.elapsed().as_secs_f64());
        metrics::counter!("chorus_log_journal_bytes_total").increment(bytes.len() as u64);
        Ok(())
    }

    /// Whether the segment being written is full.
    pub(crate) fn full(&self) -> bool {
        self.segment.bytes >= self.segment_bytes
    }

    /// The number of the segment being written.
    pub(crate) fn number(&self) -> u64 {
        self.segment.number
    }

    /// Starts the next segment with `checkpoint`.
    pub(crate) fn start_next(&mut self, checkpoint: &[u8]) -> io::Result<()> {
        let mut next = Segment::open(&self.dir, self.segment.number + 1, 0, self.segment.sync)?;
        next.append(checkpoint)?;
        self.segment = next;
        Ok(())
    }

    /// Removes the segments `numbers`.
    pub(crate) fn remove(&self, numbers: &[u64]) -> io::Result<()> {
        for number in numbers {
            std::fs::remove_file(segment_path(&self.dir, *number))?;
        }
        Ok(())
    }
}

/// The segment being written.
pub(crate) struct Segment {
    pub(crate) number: u64,
    file: File,
    pub(crate) bytes: u64,
    sync: bool,
}

impl Segment {
    /// Opens segment `number` in `dir` to append at `at` (what is beyond is cut off),
    /// creating it if needed; each write is synced with `sync`.
    pub(crate) fn open(dir: &Path, number: u64, at: u64, sync: bool) -> io::Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(segment_path(dir, number))?;
        file.set_len(at)?;
        let mut segment = Self {
            number,
            file,
            bytes: at,
            sync,
        };
        std::io::Seek::seek(&mut segment.file, io::SeekFrom::Start(at))?;
        if sync {
            segment.file.sync_all()?;
            File::open(dir)?.sync_all()?;
        }
        Ok(segment)
    }

    /// Appends `bytes`, synced if so configured.
    pub(crate) fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all(bytes)?;
        if self.sync {
            self.file.sync_data()?;
        }
        self.bytes += bytes.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries() -> Vec<Entry> {
        vec![
            Entry::Topic {
                name: "t".into(),
                partitions: 3,
            },
            Entry::Record {
                topic: "t".into(),
                partition: 2,
                offset: 7,
                key: Bytes::from_static(b"k"),
                payload: Bytes::from_static(b"hello"),
            },
            Entry::Commit {
                group: "g".into(),
                topic: "t".into(),
                partition: 2,
                next: 8,
            },
            Entry::PartitionEnd {
                topic: "t".into(),
                partition: 1,
                end: 4,
            },
            Entry::Reads {
                group: "g".into(),
                topic: "t".into(),
            },
            Entry::Topics {
                names: vec!["t".into(), "u".into()],
            },
            Entry::Deleted { name: "t".into() },
        ]
    }

    /// `entries()` as the encoder writes them.
    fn written() -> Vec<u8> {
        let mut e = Encoder::default();
        e.topic("t", 3);
        e.record("t", 2, 7, b"k", b"hello");
        e.commit("g", "t", 2, 8);
        e.partition_end("t", 1, 4);
        e.reads("g", "t");
        e.topics(["t", "u"].into_iter());
        e.deleted("t");
        e.take()
    }

    fn read(bytes: &[u8]) -> (Vec<Entry>, End) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.log");
        std::fs::write(&path, bytes).unwrap();
        let mut got = Vec::new();
        let end = read_segment(&path, |e| got.push(e)).unwrap();
        (got, end)
    }

    #[test]
    fn every_kind_of_frame_reads_back_as_written() {
        let (got, end) = read(&written());
        assert_eq!(got, entries());
        assert_eq!(end, End::Clean);
    }

    #[test]
    fn a_frame_cut_short_anywhere_ends_the_segment_at_its_start() {
        let bytes = written();
        let first_len = 8 + u32::from_le_bytes(bytes[..4].try_into().unwrap()) as usize;
        for cut in first_len + 1..bytes.len() {
            let (got, end) = read(&bytes[..cut]);
            let End::Torn(at) = end else {
                // Cut exactly between two frames.
                assert!(got.len() > 1, "cut at {cut}");
                continue;
            };
            assert!(
                at as usize >= first_len && (at as usize) < cut,
                "cut at {cut}"
            );
            assert_eq!(got[..], entries()[..got.len()], "cut at {cut}");
        }
    }

    #[test]
    fn a_damaged_byte_is_caught_by_the_checksum() {
        let mut bytes = written();
        let last = bytes.len() - 2;
        bytes[last] ^= 0x40;
        let (got, end) = read(&bytes);
        assert_eq!(got.len(), entries().len() - 1);
        assert!(matches!(end, End::Torn(_)));
    }

    #[test]
    fn segments_are_listed_in_order_and_other_files_ignored() {
        let dir = tempfile::tempdir().unwrap();
        for n in [10, 2, 300] {
            std::fs::write(segment_path(dir.path(), n), b"").unwrap();
        }
        std::fs::write(dir.path().join("notes.txt"), b"").unwrap();
        let numbers: Vec<u64> = segments(dir.path())
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(numbers, [2, 10, 300]);
    }
}
