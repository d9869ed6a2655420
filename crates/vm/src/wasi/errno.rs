//! WASI preview 1 errno values (the subset this host returns) and the mapping from host
//! I/O errors.

/// A WASI errno.
pub type Errno = u16;

#[allow(missing_docs)]
mod values {
    pub const SUCCESS: u16 = 0;
    pub const ACCES: u16 = 2;
    pub const BADF: u16 = 8;
    pub const BUSY: u16 = 10;
    pub const EXIST: u16 = 20;
    pub const FAULT: u16 = 21;
    pub const ILSEQ: u16 = 25;
    pub const INVAL: u16 = 28;
    pub const IO: u16 = 29;
    pub const ISDIR: u16 = 31;
    pub const LOOP: u16 = 32;
    pub const MFILE: u16 = 33;
    pub const NAMETOOLONG: u16 = 37;
    pub const NOENT: u16 = 44;
    pub const NOSPC: u16 = 51;
    pub const NOSYS: u16 = 52;
    pub const NOTDIR: u16 = 54;
    pub const NOTEMPTY: u16 = 55;
    pub const NOTSUP: u16 = 58;
    pub const PERM: u16 = 63;
    pub const SPIPE: u16 = 70;
    pub const NOTCAPABLE: u16 = 76;
}
pub use values::*;

/// The WASI errno for a host I/O error (`EIO` when there is no better match).
pub fn from_io(e: &std::io::Error) -> Errno {
    match e.raw_os_error() {
        Some(libc::ENOENT) => NOENT,
        Some(libc::EEXIST) => EXIST,
        Some(libc::EACCES) => ACCES,
        Some(libc::EPERM) => PERM,
        Some(libc::EISDIR) => ISDIR,
        Some(libc::ENOTDIR) => NOTDIR,
        Some(libc::ENOTEMPTY) => NOTEMPTY,
        Some(libc::ENOSPC) => NOSPC,
        Some(libc::ELOOP) => LOOP,
        Some(libc::EINVAL) => INVAL,
        Some(libc::ENAMETOOLONG) => NAMETOOLONG,
        Some(libc::ESPIPE) => SPIPE,
        _ => match e.kind() {
            std::io::ErrorKind::NotFound => NOENT,
            std::io::ErrorKind::AlreadyExists => EXIST,
            std::io::ErrorKind::PermissionDenied => ACCES,
            _ => IO,
        },
    }
}
