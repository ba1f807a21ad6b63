//! The file system under the recordings: files appended and synced, removed, and the free
//! space of the disk. Tests change how it behaves without mounting anything: with
//! `FERROCAST_TEST_RECORD_FULL` naming a file that exists, every write fails with ENOSPC; with
//! `FERROCAST_TEST_RECORD_FREE_BYTES` naming a file that holds a number, that number is the
//! free space.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The disk.
#[derive(Debug, Clone, Default)]
pub struct Disk {
    full_marker: Option<PathBuf>,
    free_bytes_file: Option<PathBuf>,
}

impl Disk {
    /// The real disk, with the test hooks the environment names.
    pub fn from_env() -> Disk {
        Disk {
            full_marker: std::env::var_os("FERROCAST_TEST_RECORD_FULL").map(PathBuf::from),
            free_bytes_file: std::env::var_os("FERROCAST_TEST_RECORD_FREE_BYTES").map(PathBuf::from),
        }
    }

    fn full(&self) -> io::Result<()> {
        match &self.full_marker {
            Some(m) if m.exists() => Err(io::Error::from_raw_os_error(nix::libc::ENOSPC)),
            _ => Ok(()),
        }
    }

    /// Creates a new file (and its directories); an existing one is an error.
    pub fn create(&self, path: &Path) -> io::Result<Appender> {
        self.full()?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().append(true).create_new(true).open(path)?;
        Ok(Appender { file, len: 0, disk: self.clone() })
    }

    /// Opens a file to cut its tail (recovery after a crash).
    pub fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let f = OpenOptions::new().write(true).open(path)?;
        f.set_len(len)?;
        f.sync_all()
    }

    /// Removes a file; one already gone is no error.
    pub fn remove(&self, path: &Path) -> io::Result<()> {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Bytes free for unprivileged users on the file system of `dir`.
    pub fn free_bytes(&self, dir: &Path) -> io::Result<u64> {
        if let Some(f) = &self.free_bytes_file {
            let text = std::fs::read_to_string(f)?;
            return text.trim().parse().map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "free bytes file"));
        }
        let s = nix::sys::statvfs::statvfs(dir).map_err(io::Error::from)?;
        // The field types differ between platforms (u32 on some 32-bit ones).
        #[allow(clippy::useless_conversion)]
        let (blocks, size) = (u64::from(s.blocks_available()), u64::from(s.fragment_size()));
        Ok(blocks.saturating_mul(size))
    }
}

/// A file written at its end.
#[derive(Debug)]
pub struct Appender {
    file: File,
    len: u64,
    disk: Disk,
}

impl Appender {
    /// Bytes written so far (all of them, or none of a failed write: see [`Appender::append`]).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends `data` whole, or on an error cuts the file back to what it was.
    pub fn append(&mut self, data: &[u8]) -> io::Result<()> {
        let r = self.disk.full().and_then(|()| self.file.write_all(data));
        if let Err(e) = r {
            let _ = self.file.set_len(self.len);
            return Err(e);
        }
        self.len += data.len() as u64;
        Ok(())
    }

    /// Puts what was written on the disk (a power cut loses nothing written before).
    pub fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }
}
