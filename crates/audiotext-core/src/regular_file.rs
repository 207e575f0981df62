//! Opening only regular files. A path named in SQL can be a named pipe, a socket or a device:
//! reading one can block forever (a FIFO without a writer) or never end (`/dev/zero`). Every
//! file the extension opens by a user-given name goes through `open`, which classifies the path
//! first, opens without blocking, and checks the opened file again (the path may have been
//! swapped in between).

use std::fs::{File, FileType, OpenOptions};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// What a path is, in words, for messages.
pub fn kind(file_type: &FileType) -> &'static str {
    if file_type.is_dir() {
        "a directory"
    } else if file_type.is_fifo() {
        "a named pipe (FIFO)"
    } else if file_type.is_socket() {
        "a socket"
    } else if file_type.is_char_device() {
        "a character device"
    } else if file_type.is_block_device() {
        "a block device"
    } else if file_type.is_symlink() {
        "a symbolic link"
    } else {
        "a regular file"
    }
}

/// Opens `path` for reading if it is a regular file (after following links). The error is a
/// whole sentence naming the path, the cause and the fix.
pub fn open(path: &Path) -> Result<File, String> {
    let metadata = std::fs::metadata(path).map_err(|e| cannot_open(path, &e))?;
    refuse_unless_regular(path, &metadata.file_type())?;
    // O_NONBLOCK: should the path have become a FIFO since, opening it does not wait for a
    // writer; O_NOCTTY: a terminal never becomes ours. Neither changes reads of a regular file.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| cannot_open(path, &e))?;
    let opened = file.metadata().map_err(|e| cannot_open(path, &e))?;
    refuse_unless_regular(path, &opened.file_type())?;
    Ok(file)
}

fn refuse_unless_regular(path: &Path, file_type: &FileType) -> Result<(), String> {
    if file_type.is_file() {
        return Ok(());
    }
    Err(format!(
        "{} is {}, not a regular file: only regular files are read, because a pipe, socket or device can block forever or never end; pass the path of a file (save a stream to a file first)",
        path.display(),
        kind(file_type)
    ))
}

/// "cannot open PATH: CAUSE (FIX)" for the errors people meet.
pub fn cannot_open(path: &Path, e: &std::io::Error) -> String {
    let fix = match e.kind() {
        std::io::ErrorKind::NotFound => {
            let cwd = std::env::current_dir()
                .map(|d| d.display().to_string())
                .unwrap_or_else(|_| "unknown".into());
            format!("check the path; a relative path is taken from the process's working directory, {cwd}")
        }
        std::io::ErrorKind::PermissionDenied => {
            "give the process read permission on the file and its folders".to_string()
        }
        _ => "check that the file is readable".to_string(),
    };
    format!("cannot open {}: {e} ({fix})", path.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_files_are_refused_before_any_read() {
        let dir = std::env::temp_dir().join(format!("audiotext-regular-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("pipe.wav");
        let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        // Without a writer a blocking open would never return: this test would hang.
        let message = open(&fifo).unwrap_err();
        assert!(
            message.contains("is a named pipe (FIFO), not a regular file"),
            "{message}"
        );
        let message = open(&dir).unwrap_err();
        assert!(message.contains("is a directory"), "{message}");
        let message = open(Path::new("/dev/zero")).unwrap_err();
        assert!(message.contains("is a character device"), "{message}");
        let message = open(&dir.join("missing.wav")).unwrap_err();
        assert!(
            message.contains("cannot open") && message.contains("working directory"),
            "{message}"
        );
        std::fs::write(dir.join("a.wav"), b"RIFF").unwrap();
        assert!(open(&dir.join("a.wav")).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
