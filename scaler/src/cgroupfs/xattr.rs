//! Extended attributes on cgroup directories (opt-in markers such as `user.scaler`).

use std::{ffi::CString, io, os::unix::ffi::OsStrExt as _, path::Path};

/// The value of xattr `name` on `path`; `Ok(None)` when unset (ENODATA) or unsupported by the
/// filesystem (ENOTSUP/EOPNOTSUPP).
pub(super) fn get(path: &Path, name: &str) -> io::Result<Option<Vec<u8>>> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    let c_name = CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "xattr name contains NUL"))?;
    let mut buf = vec![0u8; 256];
    loop {
        // SAFETY: both strings are NUL-terminated; buf is valid for buf.len() bytes.
        let n = unsafe {
            libc::getxattr(
                c_path.as_ptr(),
                c_name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if n >= 0 {
            buf.truncate(n as usize);
            return Ok(Some(buf));
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::ENODATA) => return Ok(None),
            Some(e) if e == libc::ENOTSUP || e == libc::EOPNOTSUPP => return Ok(None),
            Some(libc::ERANGE) if buf.len() < 64 * 1024 => {
                // The value grew or is larger than the first guess: ask for its size.
                // SAFETY: a null buffer with size 0 queries the size.
                let size = unsafe {
                    libc::getxattr(c_path.as_ptr(), c_name.as_ptr(), std::ptr::null_mut(), 0)
                };
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
    }
}
