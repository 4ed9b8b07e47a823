//! Creating (daemon) and reading (tandemstat) the stats segment file.
//!
//! Design: the only module of tandem-control that touches raw memory. The
//! daemon maps the file read-write and stores into it with atomics; readers
//! map it read-only and use volatile loads, so a reader can never block or
//! disturb the writer. Multi-word state goes through a seqlock.

#![expect(
    unsafe_code,
    reason = "the segment is shared memory: mapped, and read with volatile loads"
)]

use std::{
    fs,
    io::Write as _,
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering, fence},
};

use memmap2::{Mmap, MmapMut};

use super::layout::{
    self, ENTRY_SIZE, HEADER_SIZE, Kind, LABELS_LEN, LAYOUT_VERSION, MAGIC, NAME_LEN, STATE_WORDS,
    entry, get_str, get_u32, get_u64, header, put_u32, put_u64,
};

/// Errors creating or reading a segment.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    #[error(
        "no stats segment for instance {instance:?} at {path} (is tandemd --instance {instance} running?)"
    )]
    Missing { instance: String, path: PathBuf },
    #[error("{path}: {source}{}", if source.kind() == std::io::ErrorKind::PermissionDenied {
        " (root and members of group tandem may read it)"
    } else {
        ""
    })]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a tandem stats segment (bad magic)")]
    BadMagic { path: PathBuf },
    #[error("{path}: layout version {found}, this tool reads version {expected}")]
    Version {
        path: PathBuf,
        found: u32,
        expected: u32,
    },
    #[error("{path}: layout hash mismatch (header {header:#018x}, directory {computed:#018x})")]
    LayoutHash {
        path: PathBuf,
        header: u64,
        computed: u64,
    },
    #[error("{path}: corrupt segment: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("metric name or labels too long: {0}")]
    TooLong(String),
}

/// Directory of the segments; `TANDEM_STATS_DIR` overrides it (for
/// containers with another shm mount, and for tests).
pub fn segment_dir() -> PathBuf {
    std::env::var_os("TANDEM_STATS_DIR")
        .map_or_else(|| PathBuf::from("/dev/shm/tandem"), PathBuf::from)
}

/// The segment file of an instance.
pub fn segment_path(instance: &str) -> PathBuf {
    segment_dir().join(format!("{instance}.stats"))
}

/// One directory entry as registered by the daemon.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryDef {
    pub name: String,
    /// `k=v,k=v`, in a stable order.
    pub labels: String,
    pub kind: Kind,
    pub slot: u32,
}

/// Assigns value slots to named metrics before the segment is created.
#[derive(Debug, Default)]
pub struct Schema {
    entries: Vec<EntryDef>,
    slots: u32,
}

impl Schema {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a metric and returns its slot.
    pub fn push(&mut self, name: &str, labels: &str, kind: Kind) -> Result<u32, StatsError> {
        if name.len() >= NAME_LEN || labels.len() >= LABELS_LEN {
            return Err(StatsError::TooLong(format!("{name}{{{labels}}}")));
        }
        let slot = self.slots;
        self.entries.push(EntryDef {
            name: name.to_owned(),
            labels: labels.to_owned(),
            kind,
            slot,
        });
        self.slots += 1;
        Ok(slot)
    }

    /// Starts the next slot on a 64-byte boundary, so blocks written by
    /// different threads never share a cache line.
    pub fn align_block(&mut self) {
        self.slots = self.slots.div_ceil(8) * 8;
    }

    pub fn entries(&self) -> &[EntryDef] {
        &self.entries
    }

    fn directory(&self) -> Vec<u8> {
        let mut dir = vec![0u8; self.entries.len() * ENTRY_SIZE];
        for (e, chunk) in self.entries.iter().zip(dir.chunks_exact_mut(ENTRY_SIZE)) {
            chunk[entry::NAME..entry::NAME + e.name.len()].copy_from_slice(e.name.as_bytes());
            chunk[entry::LABELS..entry::LABELS + e.labels.len()]
                .copy_from_slice(e.labels.as_bytes());
            chunk[entry::KIND] = e.kind as u8;
            put_u32(chunk, entry::SLOT, e.slot);
        }
        dir
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StatsError + '_ {
    move |source| StatsError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The daemon's read-write mapping.
#[derive(Debug)]
pub struct SegmentWriter {
    map: MmapMut,
    values_offset: usize,
    values_count: usize,
    baseline_offset: usize,
    state_offset: usize,
    path: PathBuf,
}

fn align64(n: usize) -> usize {
    n.div_ceil(64) * 64
}

impl SegmentWriter {
    /// Creates the segment at `path` fresh (replacing any old one, whose
    /// readers keep their own mapping), mode 0640.
    pub fn create(
        path: &Path,
        schema: &Schema,
        pid: u32,
        workers: u32,
        start_ns: u64,
    ) -> Result<Self, StatsError> {
        let dir = schema.directory();
        let dir_offset = HEADER_SIZE;
        let state_offset = align64(dir_offset + dir.len());
        let values_offset = align64(state_offset + STATE_WORDS * 8);
        let values_count = schema.slots as usize;
        let baseline_offset = align64(values_offset + values_count * 8);
        let total = align64(baseline_offset + values_count * 8);

        let mut head = vec![0u8; HEADER_SIZE];
        head[header::MAGIC..header::MAGIC + 8].copy_from_slice(&MAGIC);
        put_u32(&mut head, header::VERSION, LAYOUT_VERSION);
        put_u32(&mut head, header::HEADER_SIZE, HEADER_SIZE as u32);
        put_u64(&mut head, header::LAYOUT_HASH, layout::layout_hash(&dir));
        put_u32(&mut head, header::PID, pid);
        put_u32(&mut head, header::WORKERS, workers);
        put_u64(&mut head, header::START_NS, start_ns);
        put_u64(&mut head, header::HEARTBEAT_NS, start_ns);
        put_u64(&mut head, header::DIR_OFFSET, dir_offset as u64);
        put_u32(&mut head, header::DIR_COUNT, schema.entries.len() as u32);
        put_u32(&mut head, header::ENTRY_SIZE, ENTRY_SIZE as u32);
        put_u64(&mut head, header::STATE_OFFSET, state_offset as u64);
        put_u64(&mut head, header::STATE_WORDS, STATE_WORDS as u64);
        put_u64(&mut head, header::VALUES_OFFSET, values_offset as u64);
        put_u64(&mut head, header::VALUES_COUNT, values_count as u64);
        put_u64(&mut head, header::TOTAL_SIZE, total as u64);
        put_u64(&mut head, header::BASELINE_OFFSET, baseline_offset as u64);

        let parent = path.parent().unwrap_or(Path::new("/"));
        fs::create_dir_all(parent).map_err(io(parent))?;
        let tmp = path.with_extension(format!("tmp.{pid}"));
        let mut f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o640)
            .open(&tmp)
            .map_err(io(&tmp))?;
        // The umask may have narrowed the mode; the contract is 0640,
        // group `tandem` when there is one (its members read counters).
        f.set_permissions(fs::Permissions::from_mode(0o640))
            .map_err(io(&tmp))?;
        crate::sys::share_with_group(&tmp).map_err(io(&tmp))?;
        f.set_len(total as u64).map_err(io(&tmp))?;
        f.write_all(&head).map_err(io(&tmp))?;
        f.write_all(&dir).map_err(io(&tmp))?;
        // SAFETY: the file is ours, just sized; nobody truncates it while
        // mapped (it is replaced by rename, never shrunk in place).
        let map = unsafe { MmapMut::map_mut(&f) }.map_err(io(&tmp))?;
        fs::rename(&tmp, path).map_err(io(path))?;
        Ok(Self {
            map,
            values_offset,
            values_count,
            baseline_offset,
            state_offset,
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn word(&self, byte_off: usize) -> &AtomicU64 {
        assert!(byte_off.is_multiple_of(8) && byte_off + 8 <= self.map.len());
        #[expect(
            clippy::cast_ptr_alignment,
            reason = "the mapping is page-aligned and byte_off is checked to be 8-aligned"
        )]
        let p = self
            .map
            .as_ptr()
            .wrapping_add(byte_off)
            .cast_mut()
            .cast::<u64>();
        // SAFETY: in bounds and 8-aligned (checked); the memory lives as
        // long as `self` and is only accessed atomically by this process.
        unsafe { AtomicU64::from_ptr(p) }
    }

    /// The value slots `first..first + n`.
    pub fn values(&self, first: u32, n: usize) -> &[AtomicU64] {
        let first = first as usize;
        assert!(
            first + n <= self.values_count,
            "slot range out of the segment"
        );
        let p = std::ptr::from_ref(self.word(self.values_offset + first * 8));
        // SAFETY: the range was checked against the values area, which is
        // contiguous, aligned u64 words valid for the mapping's lifetime.
        unsafe { std::slice::from_raw_parts(p, n) }
    }

    pub fn value(&self, slot: u32) -> &AtomicU64 {
        &self.values(slot, 1)[0]
    }

    /// `clear statistics`: the current value of every slot becomes its
    /// baseline. Writers are not disturbed; readers subtract.
    pub fn clear(&self, now_ns: u64) {
        for i in 0..self.values_count {
            let v = self
                .word(self.values_offset + i * 8)
                .load(Ordering::Relaxed);
            self.word(self.baseline_offset + i * 8)
                .store(v, Ordering::Relaxed);
        }
        self.word(header::CLEARED_NS)
            .store(now_ns, Ordering::Release);
    }

    pub fn heartbeat(&self, now_ns: u64) {
        self.word(header::HEARTBEAT_NS)
            .store(now_ns, Ordering::Release);
    }

    /// Publishes `payload` (at most STATE_WORDS - 1 words) under the seqlock:
    /// the sequence is odd while the words change.
    pub fn write_state(&self, payload: &[u64]) {
        assert!(payload.len() < STATE_WORDS, "state payload too large");
        let seq = self.word(self.state_offset);
        let s = seq.load(Ordering::Relaxed);
        seq.store(s.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        for i in 0..STATE_WORDS - 1 {
            let v = payload.get(i).copied().unwrap_or(0);
            self.word(self.state_offset + 8 + i * 8)
                .store(v, Ordering::Relaxed);
        }
        seq.store(s.wrapping_add(2), Ordering::Release);
    }
}

/// One directory entry as a reader sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub labels: String,
    pub kind: Kind,
    pub slot: u32,
}

impl Entry {
    /// The value of label `key`, if present.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.split(',').find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            (k == key).then_some(v)
        })
    }
}

/// A validated read-only mapping.
#[derive(Debug)]
pub struct SegmentReader {
    map: Mmap,
    pub entries: Vec<Entry>,
    pub pid: u32,
    pub workers: u32,
    pub start_ns: u64,
    values_offset: usize,
    values_count: usize,
    baseline_offset: usize,
    state_offset: usize,
}

impl SegmentReader {
    /// Opens the segment of `instance` under /dev/shm/tandem.
    pub fn open_instance(instance: &str) -> Result<Self, StatsError> {
        let path = segment_path(instance);
        if !path.exists() {
            return Err(StatsError::Missing {
                instance: instance.to_owned(),
                path,
            });
        }
        Self::open(&path)
    }

    /// Opens and validates `path`; never trusts a field before checking it.
    pub fn open(path: &Path) -> Result<Self, StatsError> {
        let f = fs::File::open(path).map_err(io(path))?;
        // SAFETY: read-only mapping; the daemon never shrinks the file in
        // place (a new segment replaces it by rename).
        let map = unsafe { Mmap::map(&f) }.map_err(io(path))?;
        Self::from_map(map, path)
    }

    /// Validates a mapping of the segment `path` names (any bytes at all:
    /// another version's segment, a truncated or a crafted one are refused
    /// with the reason, and no offset is used before it is checked).
    pub fn from_map(map: Mmap, path: &Path) -> Result<Self, StatsError> {
        let corrupt = |reason: String| StatsError::Corrupt {
            path: path.to_owned(),
            reason,
        };
        if map.len() < HEADER_SIZE || map[..8] != MAGIC {
            if map.len() >= 8 && map[..8] == MAGIC {
                return Err(corrupt(format!(
                    "{} bytes, shorter than its header",
                    map.len()
                )));
            }
            return Err(StatsError::BadMagic {
                path: path.to_owned(),
            });
        }
        let version = get_u32(&map, header::VERSION);
        if version != LAYOUT_VERSION {
            return Err(StatsError::Version {
                path: path.to_owned(),
                found: version,
                expected: LAYOUT_VERSION,
            });
        }
        let total = get_u64(&map, header::TOTAL_SIZE) as usize;
        if total != map.len() {
            return Err(corrupt(format!(
                "header says {total} bytes, file has {}",
                map.len()
            )));
        }
        let dir_offset = get_u64(&map, header::DIR_OFFSET) as usize;
        let dir_count = get_u32(&map, header::DIR_COUNT) as usize;
        let entry_size = get_u32(&map, header::ENTRY_SIZE) as usize;
        let state_offset = get_u64(&map, header::STATE_OFFSET) as usize;
        let state_words = get_u64(&map, header::STATE_WORDS) as usize;
        let values_offset = get_u64(&map, header::VALUES_OFFSET) as usize;
        let values_count = get_u64(&map, header::VALUES_COUNT) as usize;
        let baseline_offset = get_u64(&map, header::BASELINE_OFFSET) as usize;
        let dir_end = dir_count
            .checked_mul(entry_size)
            .and_then(|n| n.checked_add(dir_offset));
        let values_end = values_count
            .checked_mul(8)
            .and_then(|n| n.checked_add(values_offset));
        let ok = entry_size == ENTRY_SIZE
            && state_words == STATE_WORDS
            && dir_offset >= HEADER_SIZE
            && dir_end.is_some_and(|e| e <= state_offset)
            && state_offset.is_multiple_of(8)
            && state_offset
                .checked_add(STATE_WORDS * 8)
                .is_some_and(|e| e <= values_offset)
            && values_offset.is_multiple_of(8)
            && values_end.is_some_and(|e| e <= baseline_offset)
            && baseline_offset.is_multiple_of(8)
            && values_count
                .checked_mul(8)
                .and_then(|n| n.checked_add(baseline_offset))
                .is_some_and(|e| e <= total);
        if !ok {
            return Err(corrupt("inconsistent offsets in the header".into()));
        }
        let dir = &map[dir_offset..dir_offset + dir_count * ENTRY_SIZE];
        let computed = layout::layout_hash(dir);
        let stored = get_u64(&map, header::LAYOUT_HASH);
        if computed != stored {
            return Err(StatsError::LayoutHash {
                path: path.to_owned(),
                header: stored,
                computed,
            });
        }
        let mut entries = Vec::with_capacity(dir_count);
        for chunk in dir.chunks_exact(ENTRY_SIZE) {
            let kind = Kind::from_u8(chunk[entry::KIND])
                .ok_or_else(|| corrupt(format!("bad kind {}", chunk[entry::KIND])))?;
            let slot = get_u32(chunk, entry::SLOT);
            if slot as usize >= values_count {
                return Err(corrupt(format!("slot {slot} past {values_count} values")));
            }
            entries.push(Entry {
                name: get_str(&chunk[entry::NAME..entry::NAME + NAME_LEN]).to_owned(),
                labels: get_str(&chunk[entry::LABELS..entry::LABELS + LABELS_LEN]).to_owned(),
                kind,
                slot,
            });
        }
        Ok(Self {
            pid: get_u32(&map, header::PID),
            workers: get_u32(&map, header::WORKERS),
            start_ns: get_u64(&map, header::START_NS),
            map,
            entries,
            values_offset,
            values_count,
            baseline_offset,
            state_offset,
        })
    }

    fn load(&self, byte_off: usize) -> u64 {
        // Offsets were checked against the mapping when it was opened: a
        // failure here is a bug, not bad input.
        assert!(
            byte_off.is_multiple_of(8)
                && byte_off.checked_add(8).is_some_and(|e| e <= self.map.len())
        );
        #[expect(
            clippy::cast_ptr_alignment,
            reason = "the mapping is page-aligned and byte_off is checked to be 8-aligned"
        )]
        let p = self.map.as_ptr().wrapping_add(byte_off).cast::<u64>();
        // SAFETY: in bounds and aligned (checked); volatile because another
        // process writes the word while we read it.
        unsafe { std::ptr::read_volatile(p) }
    }

    pub fn heartbeat_ns(&self) -> u64 {
        let v = self.load(header::HEARTBEAT_NS);
        fence(Ordering::Acquire);
        v
    }

    pub fn value(&self, slot: u32) -> u64 {
        assert!((slot as usize) < self.values_count);
        self.load(self.values_offset + slot as usize * 8)
    }

    /// Every value, indexed by slot.
    pub fn values(&self) -> Vec<u64> {
        (0..self.values_count as u32)
            .map(|s| self.value(s))
            .collect()
    }

    /// Every slot's value at the last clear (zeros if never cleared).
    pub fn baselines(&self) -> Vec<u64> {
        (0..self.values_count)
            .map(|i| self.load(self.baseline_offset + i * 8))
            .collect()
    }

    /// Unix ns of the last `clear statistics`, 0 if never.
    pub fn cleared_ns(&self) -> u64 {
        self.load(header::CLEARED_NS)
    }

    /// The state payload, read consistently: retried while the writer is
    /// mid-update; `None` if it never settled within the attempts.
    pub fn read_state(&self) -> Option<Vec<u64>> {
        for _ in 0..10_000 {
            let s1 = self.load(self.state_offset);
            fence(Ordering::Acquire);
            if s1 % 2 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let words: Vec<u64> = (0..STATE_WORDS - 1)
                .map(|i| self.load(self.state_offset + 8 + i * 8))
                .collect();
            fence(Ordering::Acquire);
            if self.load(self.state_offset) == s1 {
                return Some(words);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, thread};

    use super::*;

    fn tmp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("tandem-seg-{}-{name}", std::process::id()))
    }

    fn schema() -> Schema {
        let mut s = Schema::new();
        s.push("tandem_worker_rx_packets_total", "worker=0", Kind::Counter)
            .unwrap();
        s.align_block();
        s.push("tandem_worker_rx_packets_total", "worker=1", Kind::Counter)
            .unwrap();
        s.push("tandem_workers", "", Kind::Gauge).unwrap();
        s
    }

    #[test]
    fn written_values_are_read_back() {
        let p = tmp("rw");
        let w = SegmentWriter::create(&p, &schema(), 42, 2, 1_000).unwrap();
        w.value(0).store(7, Ordering::Relaxed);
        w.value(8).store(9, Ordering::Relaxed);
        w.heartbeat(5_000);
        let r = SegmentReader::open(&p).unwrap();
        assert_eq!((r.pid, r.workers, r.start_ns), (42, 2, 1_000));
        assert_eq!(r.entries.len(), 3);
        assert_eq!(r.entries[1].slot, 8, "second block starts on a cache line");
        assert_eq!(r.entries[1].label("worker"), Some("1"));
        assert_eq!(r.value(0), 7);
        assert_eq!(r.value(8), 9);
        assert_eq!(r.heartbeat_ns(), 5_000);
        let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        fs::remove_file(&p).unwrap();
    }

    /// A header whose state offset wraps the address space when the state
    /// block's length is added used to pass the checks and had the reader
    /// load from before the mapping.
    #[test]
    fn offsets_that_wrap_are_refused() {
        let p = tmp("wrap");
        SegmentWriter::create(&p, &schema(), 1, 2, 0).unwrap();
        let good = fs::read(&p).unwrap();
        for (field, value) in [
            (header::STATE_OFFSET, u64::MAX - 7),
            (header::VALUES_OFFSET, u64::MAX - 7),
            (header::BASELINE_OFFSET, u64::MAX - 7),
            (header::DIR_OFFSET, u64::MAX - 7),
        ] {
            let mut bad = good.clone();
            bad[field..field + 8].copy_from_slice(&value.to_le_bytes());
            fs::write(&p, &bad).unwrap();
            match SegmentReader::open(&p) {
                Err(StatsError::Corrupt { reason, .. }) => {
                    assert!(reason.contains("offsets"), "{reason}");
                }
                other => panic!("field at {field}: {other:?}"),
            }
        }
        fs::remove_file(&p).unwrap();
    }

    #[test]
    fn clear_sets_baselines_without_touching_values() {
        let p = tmp("clear");
        let w = SegmentWriter::create(&p, &schema(), 1, 2, 0).unwrap();
        w.value(0).store(100, Ordering::Relaxed);
        w.clear(77);
        w.value(0).store(130, Ordering::Relaxed);
        let r = SegmentReader::open(&p).unwrap();
        assert_eq!(r.value(0), 130);
        assert_eq!(r.baselines()[0], 100);
        assert_eq!(r.cleared_ns(), 77);
        fs::remove_file(&p).unwrap();
    }

    #[test]
    fn truncated_file_is_refused() {
        let p = tmp("trunc");
        drop(SegmentWriter::create(&p, &schema(), 1, 1, 0).unwrap());
        let bytes = fs::read(&p).unwrap();
        fs::write(&p, &bytes[..bytes.len() - 8]).unwrap();
        let e = SegmentReader::open(&p).unwrap_err().to_string();
        assert!(e.contains("corrupt") && e.contains("bytes"), "{e}");
        fs::write(&p, &bytes[..100]).unwrap();
        let e = SegmentReader::open(&p).unwrap_err().to_string();
        assert!(e.contains("shorter than its header"), "{e}");
        fs::remove_file(&p).unwrap();
    }

    #[test]
    fn foreign_file_is_refused() {
        let p = tmp("foreign");
        fs::write(&p, vec![0x5a; 4096]).unwrap();
        let e = SegmentReader::open(&p).unwrap_err();
        assert!(matches!(e, StatsError::BadMagic { .. }), "{e}");
        fs::remove_file(&p).unwrap();
    }

    #[test]
    fn other_version_is_refused() {
        let p = tmp("version");
        drop(SegmentWriter::create(&p, &schema(), 1, 1, 0).unwrap());
        let mut bytes = fs::read(&p).unwrap();
        put_u32(&mut bytes, header::VERSION, LAYOUT_VERSION + 1);
        fs::write(&p, &bytes).unwrap();
        let e = SegmentReader::open(&p).unwrap_err().to_string();
        assert!(e.contains("layout version 2"), "{e}");
        fs::remove_file(&p).unwrap();
    }

    #[test]
    fn edited_directory_fails_the_layout_hash() {
        let p = tmp("hash");
        drop(SegmentWriter::create(&p, &schema(), 1, 1, 0).unwrap());
        let mut bytes = fs::read(&p).unwrap();
        bytes[HEADER_SIZE + 3] ^= 1;
        fs::write(&p, &bytes).unwrap();
        let e = SegmentReader::open(&p).unwrap_err();
        assert!(matches!(e, StatsError::LayoutHash { .. }), "{e}");
        fs::remove_file(&p).unwrap();
    }

    #[test]
    fn names_that_do_not_fit_are_refused() {
        let mut s = Schema::new();
        assert!(s.push(&"x".repeat(NAME_LEN), "", Kind::Gauge).is_err());
        assert!(s.push("ok", &"l".repeat(LABELS_LEN), Kind::Gauge).is_err());
    }

    #[test]
    fn seqlock_reader_never_sees_a_torn_state() {
        let p = tmp("seqlock");
        let w = Arc::new(SegmentWriter::create(&p, &schema(), 1, 1, 0).unwrap());
        let r = SegmentReader::open(&p).unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (w, stop) = (Arc::clone(&w), Arc::clone(&stop));
            thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    // Every word of one version carries the same value.
                    w.write_state(&[i; STATE_WORDS - 1]);
                    i += 1;
                    // Leave the reader windows between writes, as the
                    // daemon does (it writes a few times a second).
                    if i.is_multiple_of(64) {
                        thread::sleep(std::time::Duration::from_micros(20));
                    }
                }
                i
            })
        };
        let mut reads = 0;
        let mut versions = std::collections::BTreeSet::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        // Until the writer has visibly moved on (it may start late).
        while (reads < 500 || versions.len() < 3) && std::time::Instant::now() < deadline {
            if let Some(words) = r.read_state() {
                assert!(words.iter().all(|v| *v == words[0]), "torn read");
                versions.insert(words[0]);
                reads += 1;
            }
        }
        assert!(reads > 0, "the reader never got a consistent state");
        stop.store(true, Ordering::Relaxed);
        let written = writer.join().unwrap();
        assert!(written > 0);
        assert!(versions.len() > 1, "reader saw the writer make progress");
        fs::remove_file(&p).unwrap();
    }
}
