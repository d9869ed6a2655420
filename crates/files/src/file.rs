//! `File` and `OpenOptions`: the std::fs API over managed files.

use crate::error::{FilesError, FilesErrorKind};
use crate::fs::{Files, Node};
use crate::path;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Options to open a managed file, with the meaning of [`std::fs::OpenOptions`].
#[derive(Clone, Debug)]
pub struct OpenOptions {
    files: Files,
    read: bool,
    write: bool,
    append: bool,
    truncate: bool,
    create: bool,
    create_new: bool,
}

impl OpenOptions {
    pub(crate) fn new(files: Files) -> Self {
        OpenOptions {
            files,
            read: false,
            write: false,
            append: false,
            truncate: false,
            create: false,
            create_new: false,
        }
    }

    /// Open for reading.
    pub fn read(&mut self, v: bool) -> &mut Self {
        self.read = v;
        self
    }

    /// Open for writing.
    pub fn write(&mut self, v: bool) -> &mut Self {
        self.write = v;
        self
    }

    /// Every write goes to the end of the file (implies write).
    pub fn append(&mut self, v: bool) -> &mut Self {
        self.append = v;
        self
    }

    /// Truncate to 0 on open (needs write).
    pub fn truncate(&mut self, v: bool) -> &mut Self {
        self.truncate = v;
        self
    }

    /// Create the file if it does not exist (needs write or append).
    pub fn create(&mut self, v: bool) -> &mut Self {
        self.create = v;
        self
    }

    /// Create the file, failing if it exists (needs write or append).
    pub fn create_new(&mut self, v: bool) -> &mut Self {
        self.create_new = v;
        self
    }

    /// Opens managed path `p` with these options.
    pub fn open(&self, p: impl AsRef<Path>) -> io::Result<File> {
        let pa = p.as_ref();
        let key = path::normalize(pa)?;
        let writable = self.write || self.append;
        if !self.read && !writable {
            return Err(invalid(pa, "open needs read, write or append"));
        }
        if (self.create || self.create_new || self.truncate) && !writable {
            return Err(invalid(pa, "create/truncate need write or append"));
        }
        if self.truncate && self.append {
            return Err(invalid(pa, "truncate and append together"));
        }
        let mut g = self.files.lock();
        g.check_ready()?;
        let id = match g.tree.get(&key).copied() {
            Some(Node::Dir) => {
                return Err(io::Error::new(
                    io::ErrorKind::IsADirectory,
                    format!("{}: is a directory", pa.display()),
                ))
            }
            Some(Node::File(_)) if self.create_new => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{}: exists", pa.display()),
                ))
            }
            Some(Node::File(id)) => {
                if self.truncate {
                    g.set_len(id, 0)?;
                }
                id
            }
            None if self.create || self.create_new => g.create_file(&key, pa)?,
            None => {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{}: no such managed file", pa.display()),
                ))
            }
        };
        g.fd(id)?;
        if let Some(s) = g.files.get_mut(&id) {
            s.handles += 1;
        }
        drop(g);
        Ok(File {
            files: self.files.clone(),
            id,
            pos: 0,
            read: self.read,
            write: writable,
            append: self.append,
        })
    }
}

fn invalid(p: &Path, msg: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{}: {msg}", p.display()),
    )
}

/// A handle on a managed file, used like [`std::fs::File`]: `Read`, `Write`, `Seek`,
/// `set_len`, `sync_all`. Every change is journaled before it reaches the file, so it
/// can be rolled back to any retained checkpoint. Writes go straight to the file (no
/// buffering: other readers see them as with std), and like std's they are durable only
/// after `sync_all` or a checkpoint. The handle follows its file across renames; after
/// `remove_file` it writes to the removed file, which no checkpoint includes.
#[derive(Debug)]
pub struct File {
    files: Files,
    id: u64,
    pos: u64,
    read: bool,
    write: bool,
    append: bool,
}

impl File {
    fn not_writable(&self) -> io::Error {
        io::Error::new(
            io::ErrorKind::PermissionDenied,
            "managed file not opened for writing",
        )
    }

    /// The file's current length.
    pub fn len(&self) -> u64 {
        self.files.lock().files.get(&self.id).map_or(0, |s| s.len)
    }

    /// True when the file is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Truncates or extends the file, like [`std::fs::File::set_len`].
    pub fn set_len(&self, len: u64) -> io::Result<()> {
        if !self.write {
            return Err(self.not_writable());
        }
        self.files.lock().set_len(self.id, len)
    }

    /// Writes `buf` at `offset` without moving the cursor, like
    /// `std::os::unix::fs::FileExt::write_all_at`.
    pub fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if !self.write {
            return Err(self.not_writable());
        }
        self.files
            .lock()
            .write_at(self.id, Some(offset), buf)
            .map(|_| ())
    }

    /// Reads exactly `buf.len()` bytes at `offset`, like `FileExt::read_exact_at`.
    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let mut g = self.files.lock();
        let r = g.fd(self.id)?.read_exact_at(buf, offset);
        r.map_err(|e| g.data_error(self.id, "reading", e))
    }

    /// Makes the file's data and the undo journal durable, like
    /// [`std::fs::File::sync_all`]. (A checkpoint does this for every changed file.)
    pub fn sync_all(&self) -> io::Result<()> {
        let mut g = self.files.lock();
        if g.journal.is_some() {
            g.journal()?.sync()?;
        }
        let r = g.fd(self.id)?.sync_all();
        r.map_err(|e| g.data_error(self.id, "syncing", e))?;
        if let Some(s) = g.files.get_mut(&self.id) {
            s.unsynced = false;
        }
        Ok(())
    }

    /// Same as [`File::sync_all`] (metadata included).
    pub fn sync_data(&self) -> io::Result<()> {
        self.sync_all()
    }
}

impl Read for File {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if !self.read {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "managed file not opened for reading",
            ));
        }
        let mut g = self.files.lock();
        let len = g.files.get(&self.id).map_or(0, |s| s.len);
        if self.pos >= len {
            return Ok(0);
        }
        let n = buf.len().min((len - self.pos) as usize);
        let r = g.fd(self.id)?.read_at(&mut buf[..n], self.pos);
        let got = r.map_err(|e| g.data_error(self.id, "reading", e))?;
        self.pos += got as u64;
        Ok(got)
    }
}

impl Write for File {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !self.write {
            return Err(self.not_writable());
        }
        let at = (!self.append).then_some(self.pos);
        let off = self.files.lock().write_at(self.id, at, buf)?;
        self.pos = off + buf.len() as u64;
        Ok(buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.write(buf).map(|_| ())
    }

    fn flush(&mut self) -> io::Result<()> {
        // Unbuffered, like std::fs::File.
        Ok(())
    }
}

impl Seek for File {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let len = self.len();
        let new = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        let new = new.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start of the file",
            )
        })?;
        self.pos = new;
        Ok(new)
    }
}

impl Drop for File {
    fn drop(&mut self) {
        let mut g = self.files.lock();
        if let Some(s) = g.files.get_mut(&self.id) {
            s.handles = s.handles.saturating_sub(1);
            if s.handles == 0 {
                if s.path.is_none() {
                    g.files.remove(&self.id);
                } else {
                    // Keep the table small in descriptors; reopened on demand.
                    s.fd = None;
                }
            }
        }
    }
}

/// Turns a missing-ready state into an io error (for `?` in io contexts).
impl From<FilesErrorKind> for io::Error {
    fn from(k: FilesErrorKind) -> io::Error {
        FilesError::new(k, None, k.to_string()).into()
    }
}
