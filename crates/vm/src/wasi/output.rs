//! The program's stdout and stderr, made consistent with checkpoints (docs/VM.md, "Output").
//!
//! Three modes, chosen per stream when the VM starts:
//! - **File** (the stream is a regular file, e.g. `> out.txt`): written through; the
//!   checkpoint records the file's identity and its offset (its size for an `O_APPEND`
//!   descriptor); a resume with the same file truncates it back to that, so output written
//!   after the checkpoint by a killed run is erased and written again exactly once.
//! - **Lines** (stdout under `lazarus run --repo`, a marker key in `LAZARUS_OUTPUT_MARKERS`): complete
//!   lines are written through, the unfinished last line stays in the VM (`pending`,
//!   captured in the checkpoint), so the supervisor's `part`/`commit` markers start a
//!   line and it can release exactly the lines a committed checkpoint covers. Past
//!   [`MAX_HELD_LINE`] bytes an unfinished line is written through; the supervisor then
//!   takes the marker out of the middle of the line and keeps the fragment in place.
//! - **Plain** (a pipe or terminal, unsupervised): written through; output produced after
//!   the last checkpoint is written again by the resumed run (a pipe cannot be taken
//!   back). Redirect to a file or run under the supervisor for exactly-once output.

use serde::{Deserialize, Serialize};
use std::io;

/// How a stream is made consistent with checkpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "lowercase", deny_unknown_fields)]
pub enum Sink {
    /// A regular file, identified by its inode (the device is recorded but not compared: it
    /// differs between the client nodes of a network file system).
    File {
        /// device of the file
        dev: u64,
        /// inode of the file
        ino: u64,
    },
    /// Supervised stdout: whole lines only.
    Lines,
    /// Anything else: written through.
    Plain,
}

/// What a checkpoint records about one output stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputState {
    /// The mode at the time of the checkpoint.
    pub sink: Sink,
    /// Bytes the program has written to the stream (including `pending`).
    pub produced: u64,
    /// File mode: the file's offset at the checkpoint (what a resume truncates it to), its
    /// size for an `O_APPEND` descriptor. Taken from the file itself, so anything else
    /// written to it counts too.
    pub offset: Option<u64>,
    /// Bytes written by the program but not yet to the stream (Lines mode: the
    /// unfinished last line).
    #[serde(with = "crate::meta::hex_bytes")]
    pub pending: Vec<u8>,
}

/// One output stream of the VM (host fd 1 or 2).
#[derive(Debug)]
pub struct Output {
    fd: i32,
    sink: Sink,
    produced: u64,
    pending: Vec<u8>,
}

fn fstat(fd: i32) -> Option<libc::stat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::zeroed();
    // SAFETY: fstat writes a `stat` into the buffer we own; we read it only on success.
    let r = unsafe { libc::fstat(fd, st.as_mut_ptr()) };
    // SAFETY: initialised by the successful fstat above (and zeroed before).
    (r == 0).then(|| unsafe { st.assume_init() })
}

/// `(dev, ino, offset)` of `fd` when it is a regular file. For a descriptor opened with
/// `O_APPEND` (`>>`) the offset is the file's size, where its next write goes: its own
/// offset stands after its own last write only, so with `prog >>out 2>>out` (one file,
/// two descriptors) each stream's offset missed the other's later bytes, and a resume
/// truncating to the smaller one erased output written before the checkpoint.
fn regular(fd: i32) -> Option<(u64, u64, u64)> {
    let st = fstat(fd)?;
    ((st.st_mode & libc::S_IFMT) == libc::S_IFREG).then(|| {
        // SAFETY: fcntl/lseek on an fd we were given; failure returns -1, handled below.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        let pos = if flags >= 0 && flags & libc::O_APPEND != 0 {
            -1
        } else {
            // SAFETY: as above.
            unsafe { libc::lseek(fd, 0, libc::SEEK_CUR) }
        };
        let pos = if pos < 0 {
            st.st_size as u64
        } else {
            pos as u64
        };
        (st.st_dev, st.st_ino, pos)
    })
}

/// Most bytes of an unfinished line held back in Lines mode (docs/VM.md, "Output"). The
/// held bytes are part of every checkpoint's vm.meta (hex, twice their size), so a program
/// printing without newlines would end up writing checkpoints no resume reads; past this
/// they are written through. The supervisor keeps such a fragment in its place and joins
/// it to the rest of its line (docs/RECOVERY.md, "A marker inside a line").
pub const MAX_HELD_LINE: usize = 1 << 20;

/// Resumes stdout (`fds.0`, `states.0`) and stderr together: when both were the same file
/// at the checkpoint (`>>out 2>>out`: two descriptors of one inode), both are truncated to
/// the larger of their recorded offsets, never one after the other to the smaller (an
/// older record took each offset from its own descriptor, so the smaller one missed the
/// other stream's bytes written before the checkpoint).
pub(crate) fn resume_both(
    fds: (i32, i32),
    states: (&OutputState, &OutputState),
    lines: bool,
) -> io::Result<(Output, Output)> {
    let (mut out, mut err) = (states.0.clone(), states.1.clone());
    if let (Sink::File { dev, ino }, Sink::File { dev: d2, ino: i2 }, Some(a), Some(b)) =
        (out.sink, err.sink, out.offset, err.offset)
    {
        // Both recorded on the same node at the same moment: the device is comparable here.
        if dev == d2 && ino == i2 {
            out.offset = Some(a.max(b));
            err.offset = Some(a.max(b));
        }
    }
    let named = |what: &str, e: io::Error| io::Error::new(e.kind(), format!("{what}: {e}"));
    let so = Output::resume(fds.0, &out, lines).map_err(|e| named("stdout", e))?;
    let se = Output::resume(fds.1, &err, false).map_err(|e| named("stderr", e))?;
    Ok((so, se))
}

impl Output {
    /// A fresh stream on host fd `fd`; `lines`: supervised stdout.
    pub fn new(fd: i32, lines: bool) -> Output {
        let sink = if lines {
            Sink::Lines
        } else if let Some((dev, ino, _)) = regular(fd) {
            Sink::File { dev, ino }
        } else {
            Sink::Plain
        };
        Output {
            fd,
            sink,
            produced: 0,
            pending: Vec::new(),
        }
    }

    /// The stream as it was at a checkpoint. A File-mode stream whose file is still the
    /// host fd's file is truncated back to the checkpoint's length; otherwise the mode is
    /// chosen afresh (the output before the checkpoint lives wherever it went then).
    pub fn resume(fd: i32, state: &OutputState, lines: bool) -> io::Result<Output> {
        let mut out = Output::new(fd, lines);
        out.produced = state.produced;
        if let (Sink::File { ino, .. }, Some(end), Some((_, i, _))) =
            (state.sink, state.offset, regular(fd))
        {
            // The inode only: a network file system's device number differs between nodes.
            let same = ino == i;
            let size = fstat(fd).map_or(0, |st| st.st_size as u64);
            if same && size < end {
                // `> out.txt` again truncated it: what was written before the checkpoint
                // is gone; extending the file would fill it with zeros instead.
                tracing::warn!(
                    "fd {fd}: the file is shorter ({size} bytes) than at the checkpoint \
                     ({end}); output from before the checkpoint is not in it (use >> to \
                     resume into the same file)"
                );
            } else if same {
                // SAFETY: plain syscalls on an fd we were given; errors are checked.
                if unsafe { libc::ftruncate(fd, end as libc::off_t) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                // SAFETY: as above.
                if unsafe { libc::lseek(fd, end as libc::off_t, libc::SEEK_SET) } < 0 {
                    return Err(io::Error::last_os_error());
                }
                out.sink = state.sink;
            }
        }
        if lines && state.sink == Sink::Lines {
            out.pending = state.pending.clone();
        } else if !state.pending.is_empty() {
            // Held back under the supervisor, now resumed without it: write it out.
            write_all(fd, &state.pending)?;
        }
        Ok(out)
    }

    /// What a checkpoint records.
    pub fn state(&self) -> OutputState {
        let offset = match self.sink {
            Sink::File { .. } => regular(self.fd).map(|(_, _, pos)| pos),
            _ => None,
        };
        OutputState {
            sink: self.sink,
            produced: self.produced,
            offset,
            pending: self.pending.clone(),
        }
    }

    /// Bytes the program wrote so far.
    pub fn produced(&self) -> u64 {
        self.produced
    }

    /// The program writes `data`.
    pub fn write(&mut self, data: &[u8]) -> io::Result<()> {
        self.produced += data.len() as u64;
        if self.sink != Sink::Lines {
            return write_all(self.fd, data);
        }
        match data.iter().rposition(|&b| b == b'\n') {
            None => self.pending.extend_from_slice(data),
            Some(last) => {
                let (lines, rest) = data.split_at(last + 1);
                if !self.pending.is_empty() {
                    let held = std::mem::take(&mut self.pending);
                    write_all(self.fd, &held)?;
                }
                write_all(self.fd, lines)?;
                self.pending.extend_from_slice(rest);
            }
        }
        if self.pending.len() > MAX_HELD_LINE {
            let held = std::mem::take(&mut self.pending);
            write_all(self.fd, &held)?;
        }
        Ok(())
    }

    /// Writes a whole control line (a supervisor marker) between program lines.
    pub fn control_line(&mut self, line: &str) -> io::Result<()> {
        let mut l = Vec::with_capacity(line.len() + 1);
        l.extend_from_slice(line.as_bytes());
        l.push(b'\n');
        write_all(self.fd, &l)
    }

    /// At exit: writes what is still held back.
    pub fn finish(&mut self) -> io::Result<()> {
        let held = std::mem::take(&mut self.pending);
        write_all(self.fd, &held)
    }
}

/// After the program has exited (its exit record's `state`): nothing will be written
/// again, so nothing is truncated; when `fd` is still the File-mode stream's file, it is
/// only positioned at its end (after the program's output and anything appended since).
pub fn position_at_end(fd: i32, state: &OutputState) -> io::Result<()> {
    if let (Sink::File { ino, .. }, Some((_, i, _))) = (state.sink, regular(fd)) {
        // SAFETY: lseek on an fd we were given; the error is checked.
        if ino == i && unsafe { libc::lseek(fd, 0, libc::SEEK_END) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Writes all of `data` to `fd`, retrying on `EINTR` and short writes.
pub(crate) fn write_all(fd: i32, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        // SAFETY: writes from a live slice to an fd; the length is the slice's.
        let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        data = &data[n as usize..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn append(p: &std::path::Path) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .unwrap()
    }

    /// Regression (review): `prog >>out 2>>out` gives stdout and stderr two descriptors of
    /// one file. Each stream's offset came from its own descriptor (after its own last
    /// write), so a resume truncated the file to stdout's offset, then to stderr's smaller
    /// one, erasing stdout's bytes written before the checkpoint.
    #[test]
    fn stdout_and_stderr_appending_to_one_file_resume_byte_exact() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("out");
        let (f1, f2) = (append(&p), append(&p));
        let mut out = Output::new(f1.as_raw_fd(), false);
        let mut err = Output::new(f2.as_raw_fd(), false);
        err.write(&[b'e'; 100]).unwrap();
        out.write(&[b'o'; 50]).unwrap();
        let (so, se) = (out.state(), err.state());
        // The killed run went on writing after the checkpoint.
        out.write(b"after the checkpoint\n").unwrap();
        err.write(b"also after\n").unwrap();
        drop((out, err, f1, f2));
        let mut before = vec![b'e'; 100];
        before.extend_from_slice(&[b'o'; 50]);

        // The resumed run: `>>out 2>>out` again.
        let (g1, g2) = (append(&p), append(&p));
        let (mut out, mut err) =
            resume_both((g1.as_raw_fd(), g2.as_raw_fd()), (&so, &se), false).unwrap();
        assert_eq!(
            std::fs::read(&p).unwrap(),
            before,
            "everything before the checkpoint"
        );
        out.write(b"O").unwrap();
        err.write(b"E").unwrap();
        before.extend_from_slice(b"OE");
        assert_eq!(std::fs::read(&p).unwrap(), before);

        // A record of an older version (each offset its own descriptor's) resumes the same.
        std::fs::write(&p, [&before[..150], b"lost"].concat()).unwrap();
        let (old_out, old_err) = (
            OutputState {
                offset: Some(150),
                ..so.clone()
            },
            OutputState {
                offset: Some(100),
                ..se.clone()
            },
        );
        let (g1, g2) = (append(&p), append(&p));
        resume_both(
            (g1.as_raw_fd(), g2.as_raw_fd()),
            (&old_out, &old_err),
            false,
        )
        .unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), &before[..150]);
    }

    /// Regression (review): under the supervisor a line without newline was held whole in
    /// `pending`, which every checkpoint stores (hex) in vm.meta: a program printing 40 MiB
    /// without a newline produced checkpoints that commit but that no resume reads.
    #[test]
    fn held_partial_line_is_written_through_past_its_cap() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("out");
        let f = append(&p);
        let mut out = Output::new(f.as_raw_fd(), true);
        let piece: Vec<u8> = (0..64 << 10).map(|i| b'a' + (i % 26) as u8).collect();
        let mut all = Vec::new();
        for _ in 0..(3 * MAX_HELD_LINE) / piece.len() {
            out.write(&piece).unwrap();
            all.extend_from_slice(&piece);
            assert!(out.state().pending.len() <= MAX_HELD_LINE);
        }
        let on_disk = std::fs::read(&p).unwrap();
        assert!(on_disk.len() >= 2 * MAX_HELD_LINE, "written through");
        assert_eq!(
            [&on_disk[..], &out.state().pending[..]].concat(),
            all,
            "nothing lost or reordered"
        );
        // Short lines are still held until their newline.
        out.write(b"\nshort").unwrap();
        assert_eq!(out.state().pending, b"short");
        out.finish().unwrap();
        all.extend_from_slice(b"\nshort");
        assert_eq!(std::fs::read(&p).unwrap(), all);
    }
}
