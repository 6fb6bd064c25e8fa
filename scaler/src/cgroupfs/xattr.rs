//! Extended attributes on cgroup directories (opt-in markers such as `trusted.scaler`).

use std::{
    ffi::CString,
    io,
    os::{
        fd::AsRawFd as _,
        unix::{ffi::OsStrExt as _, fs::MetadataExt as _},
    },
    path::Path,
};

/// Who owns a directory, as `fstat` says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    /// `st_mode` (type and permission bits).
    pub mode: u32,
}

/// The value of xattr `name` on directory `path` and, when it is set, the directory's owner
/// and mode — both read through one open descriptor, so they are of the same directory even if
/// the path is renamed meanwhile. `Ok(None)` when unset or unsupported.
pub(super) fn get_with_owner(path: &Path, name: &str) -> io::Result<Option<(Vec<u8>, Owner)>> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let dir = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    let c_name = CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "xattr name contains NUL"))?;
    let fd = dir.as_raw_fd();
    let Some(value) = read_loop(|buf| {
        // SAFETY: `fd` is open for the call; the name is NUL-terminated; `buf` is valid for
        // its length (or null with length 0, which queries the size).
        unsafe {
            let (ptr, len) = raw(buf);
            libc::fgetxattr(fd, c_name.as_ptr(), ptr, len)
        }
    })?
    else {
        return Ok(None);
    };
    let m = dir.metadata()?;
    Ok(Some((
        value,
        Owner {
            uid: m.uid(),
            mode: m.mode(),
        },
    )))
}

/// A buffer as a getxattr(2) argument: pointer and length (null and 0 query the size).
fn raw(buf: Option<&mut [u8]>) -> (*mut libc::c_void, usize) {
    match buf {
        Some(b) => (b.as_mut_ptr().cast(), b.len()),
        None => (std::ptr::null_mut(), 0),
    }
}

/// Calls `get` (a getxattr-like call: `Some(buf)` reads into it, `None` asks for the size)
/// until the value fits; `Ok(None)` when unset (ENODATA) or unsupported.
fn read_loop(mut get: impl FnMut(Option<&mut [u8]>) -> isize) -> io::Result<Option<Vec<u8>>> {
    let mut buf = vec![0u8; 256];
    loop {
        let n = get(Some(&mut buf));
        if n >= 0 {
            buf.truncate(n as usize);
            return Ok(Some(buf));
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::ENODATA) => return Ok(None),
            Some(e) if e == libc::ENOTSUP || e == libc::EOPNOTSUPP => return Ok(None),
            Some(libc::ERANGE) if buf.len() < 64 * 1024 => {
                let size = get(None);
                let size = if size > 0 {
                    size as usize
                } else {
                    buf.len() * 2
                };
                buf.resize(size.max(buf.len() * 2).min(64 * 1024), 0);
            }
            _ => return Err(err),
        }
    }
}

/// The value of xattr `name` on `path`; `Ok(None)` when unset (ENODATA) or unsupported by the
/// filesystem (ENOTSUP/EOPNOTSUPP).
pub(super) fn get(path: &Path, name: &str) -> io::Result<Option<Vec<u8>>> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    let c_name = CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "xattr name contains NUL"))?;
    read_loop(|buf| {
        // SAFETY: both strings are NUL-terminated; `buf` is valid for its length (or null with
        // length 0, which queries the size).
        unsafe {
            let (ptr, len) = raw(buf);
            libc::getxattr(c_path.as_ptr(), c_name.as_ptr(), ptr, len)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_or_unsupported_is_none_and_set_values_are_read() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(get(dir.path(), "user.scaler").unwrap(), None);
        let c_path = CString::new(dir.path().as_os_str().as_bytes()).unwrap();
        let c_name = CString::new("user.scaler").unwrap();
        let value = b"managed";
        // SAFETY: valid NUL-terminated strings and a valid value buffer.
        let rc = unsafe {
            libc::setxattr(
                c_path.as_ptr(),
                c_name.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        };
        if rc != 0 {
            // tmpfs without user xattrs: nothing more to check here, the None path was tested.
            let e = io::Error::last_os_error();
            eprintln!("setxattr unsupported on the temp dir ({e}); skipping the read-back check");
            return;
        }
        assert_eq!(
            get(dir.path(), "user.scaler").unwrap(),
            Some(value.to_vec())
        );
        assert!(get(&dir.path().join("missing"), "user.scaler").is_err());
        let (v, owner) = get_with_owner(dir.path(), "user.scaler").unwrap().unwrap();
        assert_eq!(v, value);
        assert_eq!(owner.uid, nix::unistd::Uid::effective().as_raw());
        assert_eq!(owner.mode & libc::S_IFMT, libc::S_IFDIR);
        assert_eq!(get_with_owner(dir.path(), "user.other").unwrap(), None);
    }
}
