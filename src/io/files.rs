//! Reading inputs and writing outputs safely: the one place files are opened.
//!
//! * **Reads** ([`open_regular`], [`read_regular`]) accept regular files only. The path's
//!   metadata is checked *before* the file is opened, so a FIFO never blocks and `/dev/zero`
//!   is never read; the size from the metadata is checked against a cap before anything is
//!   read, and the read stops at that size even if the file grows meanwhile.
//! * **Writes** ([`write_atomic`], [`write_atomic_bytes`]) go to a temporary file in the
//!   destination's directory, which is flushed, `fsync`ed and renamed over the destination
//!   (then the directory is `fsync`ed). A failed write (full disk, file-size limit, a kill
//!   before the rename) leaves the previous file as it was and no temporary behind (a kill
//!   can leave a `.NAME.tmp-*` file, never a damaged `NAME`); concurrent writers of one path
//!   each replace it whole.
//! * **Outputs are validated before any work** ([`check_output`]): the path names a file (not
//!   `dir/`), an existing output is a regular file (a device, FIFO or socket is refused, never
//!   replaced), the parent directory exists and accepts a new file, and the output is not the
//!   same file as any input (compared by device and inode, and by canonical path). A symbolic
//!   link is followed: its target is written (atomically, in the target's directory) and the
//!   link kept ([`resolve_output`]).
//!
//! Written with `std` only (no `tempfile`): the temporary's name is made unique with the
//! process id and a counter and created with `create_new`, which is all that is needed here.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

/// What kind of non-regular file `meta` describes, for messages.
fn kind_of(meta: &std::fs::Metadata) -> &'static str {
    let ft = meta.file_type();
    if ft.is_dir() {
        return "a directory";
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if ft.is_fifo() {
            return "a FIFO (named pipe)";
        }
        if ft.is_char_device() {
            return "a character device";
        }
        if ft.is_block_device() {
            return "a block device";
        }
        if ft.is_socket() {
            return "a socket";
        }
    }
    "a special file"
}

fn not_regular(path: &Path, meta: &std::fs::Metadata) -> Error {
    Error::io(
        path,
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("it is {}, not a regular file", kind_of(meta)),
        ),
    )
}

/// Opens `path` for reading if it is a regular file of at most `cap` bytes; returns the file
/// and its size. `what` names the kind of input in the size message ("weight file", ...).
pub fn open_regular(path: &Path, cap: u64, what: &str) -> Result<(File, u64)> {
    // Metadata through the path first (following links): a FIFO or device is refused before
    // `open`, which would block on a FIFO with no writer.
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(not_regular(path, &meta));
    }
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    // Again on the open file, in case the path changed in between.
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(not_regular(path, &meta));
    }
    if meta.len() > cap {
        return Err(Error::io(
            path,
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "{} bytes, more than the {} limit of {cap} bytes",
                    meta.len(),
                    what
                ),
            ),
        ));
    }
    Ok((file, meta.len()))
}

/// The whole content of a regular file of at most `cap` bytes (see [`open_regular`]).
pub fn read_regular(path: &Path, cap: u64, what: &str) -> Result<Vec<u8>> {
    let (file, len) = open_regular(path, cap, what)?;
    let mut buf = Vec::with_capacity(len as usize);
    file.take(cap)
        .read_to_end(&mut buf)
        .map_err(|e| Error::io(path, e))?;
    Ok(buf)
}

/// [`read_regular`] as UTF-8 text.
pub fn read_regular_text(path: &Path, cap: u64, what: &str) -> Result<String> {
    String::from_utf8(read_regular(path, cap, what)?).map_err(|_| {
        Error::io(
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text"),
        )
    })
}

fn write_error(path: &Path, why: impl ToString) -> Error {
    Error::Write {
        path: path.to_path_buf(),
        why: why.to_string(),
    }
}

/// [`write_error`] of a failed write, naming the file-size limit (`ulimit -f`) when that is
/// what stopped it (`EFBIG`), so the fix is plain.
fn write_io_error(path: &Path, e: std::io::Error) -> Error {
    match crate::os_limits::file_size_limit() {
        Some(limit) if e.kind() == std::io::ErrorKind::FileTooLarge => write_error(
            path,
            format!("{e}; the file-size limit (ulimit -f, RLIMIT_FSIZE) allows {limit} bytes"),
        ),
        _ => write_error(path, e),
    }
}

/// The directory an output lands in (`.` for a bare file name).
fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

#[cfg(unix)]
fn same_file(a: &std::fs::Metadata, b: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    a.dev() == b.dev() && a.ino() == b.ino()
}
#[cfg(not(unix))]
fn same_file(_: &std::fs::Metadata, _: &std::fs::Metadata) -> bool {
    false
}

/// The most symbolic links followed when resolving an output (as Linux's `MAXSYMLINKS`).
const MAX_LINKS: usize = 40;

/// The file an output path stands for: its symbolic links followed (relative targets taken
/// from the link's directory), its directory made canonical when it exists. Writing `path`
/// replaces this file, so the link itself is kept and its target gets the new content. An
/// error for a path that names a directory (`dir/`, `.`, `..`) or a loop of links.
pub fn resolve_output(path: &Path) -> Result<PathBuf> {
    if path.as_os_str().is_empty() {
        return Err(write_error(path, "the output path is empty"));
    }
    let mut cur = path.to_path_buf();
    for _ in 0..MAX_LINKS {
        let text = cur.as_os_str().to_string_lossy();
        if text.ends_with('/') || text.ends_with("/.") || cur.file_name().is_none() {
            return Err(write_error(
                path,
                "it names a directory (a trailing '/', '.' or '..'); give the path of a file",
            ));
        }
        match std::fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_symlink() => {
                let target = std::fs::read_link(&cur).map_err(|e| write_error(path, e))?;
                cur = parent_dir(&cur).join(target);
            }
            _ => {
                let dir = parent_dir(&cur);
                let name = cur.file_name().expect("checked above");
                return Ok(match std::fs::canonicalize(&dir) {
                    Ok(d) => d.join(name),
                    Err(_) => cur.clone(),
                });
            }
        }
    }
    Err(write_error(
        path,
        format!("more than {MAX_LINKS} symbolic links to follow (a loop?)"),
    ))
}

/// Refuses an existing output that is not a regular file: a directory, or a device, FIFO or
/// socket, which an atomic write would replace by a regular file instead of writing to it.
/// `path` is looked at as given (the kernel follows every link, `/proc/self/fd/N` included)
/// and at the `target` [`resolve_output`] made of it.
fn check_existing_output(path: &Path, target: &Path) -> Result<Option<std::fs::Metadata>> {
    if path.as_os_str() == "-" {
        return Err(write_error(
            path,
            "'-' would be standard output, where the command prints its report: give the path \
             of a file (a file named '-' is ./-)",
        ));
    }
    let meta = std::fs::metadata(path).or_else(|_| std::fs::metadata(target));
    match meta {
        Ok(m) if m.is_file() => Ok(Some(m)),
        Ok(m) if m.is_dir() => Err(write_error(path, "it is a directory")),
        Ok(m) => Err(write_error(
            path,
            format!(
                "it is {}, not a regular file; outputs are written as whole files (temporary, \
                 then rename), which would replace it: give the path of a regular file",
                kind_of(&m)
            ),
        )),
        Err(_) => Ok(None),
    }
}

/// Checks, before any work, that `output` can be written: it names a file, not a directory
/// ([`resolve_output`]); where it exists (after its links) it is a regular file; the directory
/// it lands in exists and accepts a new file (tried with a temporary that is removed at
/// once); and it is not the same file as any of `inputs` (device and inode, or canonical
/// path). An input that is a directory is not looked into: see [`check_not_inputs`].
pub fn check_output(output: &Path, inputs: &[&Path]) -> Result<()> {
    check_existing_output(output, output)?;
    let target = resolve_output(output)?;
    let dir = parent_dir(&target);
    match std::fs::metadata(&dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(write_error(
                output,
                format!("{} is not a directory", dir.display()),
            ))
        }
        Err(e) => {
            return Err(write_error(
                output,
                format!("its directory {} is not there: {e}", dir.display()),
            ))
        }
    }
    check_existing_output(output, &target)?;
    check_not_inputs(output, inputs.iter().copied())?;
    let probe = TempFile::create(&target)?;
    drop(probe);
    Ok(())
}

/// Refuses `output` if it is (after its links) the same existing file as any of `inputs`,
/// compared by device and inode (and by canonical path). For a data set, pass every file
/// the run reads; work is one `stat` per input, and none when the output does not exist yet.
pub fn check_not_inputs<'a>(
    output: &Path,
    inputs: impl IntoIterator<Item = &'a Path>,
) -> Result<()> {
    let Ok(out_meta) = std::fs::metadata(output) else {
        return Ok(());
    };
    let out_canon = std::fs::canonicalize(output).ok();
    for input in inputs {
        let same = std::fs::metadata(input).is_ok_and(|b| same_file(&out_meta, &b))
            || (out_canon.is_some() && std::fs::canonicalize(input).ok() == out_canon);
        if same {
            return Err(write_error(
                output,
                format!(
                    "it is the same file as the input {} (writing would destroy it); choose another output path",
                    input.display()
                ),
            ));
        }
    }
    Ok(())
}

/// Refuses two outputs of one command that are one file (after links and `..`): the second
/// write would replace the first. `outputs` pairs each path with its option's name.
pub fn check_distinct_outputs(outputs: &[(&str, &Path)]) -> Result<()> {
    let mut seen: Vec<(&str, PathBuf)> = Vec::new();
    for (what, p) in outputs {
        let r = resolve_output(p)?;
        if let Some((first, _)) = seen.iter().find(|(_, q)| *q == r) {
            return Err(write_error(
                p,
                format!("{what} is the same file as {first}; give each output its own path"),
            ));
        }
        seen.push((what, r));
    }
    Ok(())
}

/// [`check_output`] for an output whose directory is created when it is written (`eval
/// --json`, `sweep --out-dir`, ...): if the directory is not there yet, its nearest existing
/// ancestor must be a directory that accepts new entries. Nothing is created, so a scan of a
/// data folder that contains the output directory does not see it.
pub fn check_output_creating(output: &Path, inputs: &[&Path]) -> Result<()> {
    check_existing_output(output, output)?;
    let target = resolve_output(output)?;
    let dir = parent_dir(&target);
    if dir.is_dir() {
        return check_output(output, inputs);
    }
    let mut ancestor = dir.as_path();
    while std::fs::symlink_metadata(ancestor).is_err() {
        match ancestor.parent() {
            Some(p) if !p.as_os_str().is_empty() => ancestor = p,
            _ => {
                ancestor = Path::new(".");
                break;
            }
        }
    }
    if !ancestor.is_dir() {
        return Err(write_error(
            output,
            format!(
                "cannot create its directory {}: {} is not a directory",
                dir.display(),
                ancestor.display()
            ),
        ));
    }
    check_output(&ancestor.join(".sret-tome-probe"), &[]).map_err(|_| {
        write_error(
            output,
            format!(
                "cannot create its directory {}: {} does not accept new entries",
                dir.display(),
                ancestor.display()
            ),
        )
    })
}

/// [`check_output_creating`] for a directory the command writes into.
pub fn check_output_dir(dir: &Path, inputs: &[&Path]) -> Result<()> {
    check_output_creating(&dir.join(".sret-tome-probe"), inputs)
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A temporary next to the destination, removed on drop unless committed.
struct TempFile {
    tmp: PathBuf,
    file: Option<File>,
}

impl TempFile {
    fn create(dest: &Path) -> Result<TempFile> {
        let dir = parent_dir(dest);
        let name = dest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "out".into());
        loop {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let tmp = dir.join(format!(".{name}.tmp-{}-{n}", std::process::id()));
            match OpenOptions::new().write(true).create_new(true).open(&tmp) {
                Ok(file) => {
                    return Ok(TempFile {
                        tmp,
                        file: Some(file),
                    })
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(write_error(
                        dest,
                        format!("cannot create a file in {}: {e}", dir.display()),
                    ))
                }
            }
        }
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Writes `path` atomically: `write` fills a buffered temporary in the same directory, which
/// is flushed, `fsync`ed and renamed into place. On any error the previous `path` is intact.
///
/// A symbolic link is kept and its target replaced ([`resolve_output`]); an existing output
/// that is not a regular file (a device, FIFO or socket) is refused, never replaced.
pub fn write_atomic(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<()> {
    check_existing_output(path, path)?;
    let target = resolve_output(path)?;
    check_existing_output(path, &target)?;
    let mut tmp = TempFile::create(&target)?;
    let file = tmp.file.as_ref().expect("open");
    let mut w = BufWriter::with_capacity(1 << 20, file);
    write(&mut w).map_err(|e| write_io_error(path, e))?;
    w.flush().map_err(|e| write_io_error(path, e))?;
    drop(w);
    file.sync_all().map_err(|e| write_io_error(path, e))?;
    std::fs::rename(&tmp.tmp, &target).map_err(|e| write_error(path, e))?;
    tmp.file = None; // renamed: nothing to remove
    if let Ok(d) = File::open(parent_dir(&target)) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// [`write_atomic`] of bytes already in memory.
pub fn write_atomic_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic(path, |w| w.write_all(bytes))
}

/// Writes an RGB image as PNG, atomically.
#[cfg(feature = "images")]
pub fn write_png(path: &Path, img: &image::RgbImage) -> Result<()> {
    let mut bytes = std::io::Cursor::new(Vec::new());
    img.write_to(&mut bytes, image::ImageFormat::Png)
        .map_err(|e| write_error(path, e))?;
    write_atomic_bytes(path, bytes.get_ref())
}

/// Lets writes that pass a file-size limit (`ulimit -f`) fail with `EFBIG` instead of killing
/// the process with `SIGXFSZ`, so the error is reported and the previous file kept.
pub fn ignore_file_size_signal() {
    #[cfg(all(unix, feature = "cli"))]
    // SAFETY: setting a signal's disposition to SIG_IGN has no preconditions.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("sret-tome-files-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn outputs_resolve_through_links_and_never_name_a_directory() {
        let d = tmp("resolve");
        for dir_like in ["x/", "x/.", "..", "."] {
            let e = resolve_output(&d.join(dir_like)).unwrap_err().to_string();
            assert!(e.contains("names a directory"), "{dir_like}: {e}");
        }
        std::os::unix::fs::symlink("sub/t", d.join("l")).unwrap();
        std::fs::create_dir_all(d.join("sub")).unwrap();
        let canon = std::fs::canonicalize(&d).unwrap();
        assert_eq!(resolve_output(&d.join("l")).unwrap(), canon.join("sub/t"));
        std::os::unix::fs::symlink("b", d.join("a")).unwrap();
        std::os::unix::fs::symlink("a", d.join("b")).unwrap();
        let e = resolve_output(&d.join("a")).unwrap_err().to_string();
        assert!(e.contains("symbolic links"), "{e}");
        // Written through the link: the link stays, its target holds the bytes.
        write_atomic_bytes(&d.join("l"), b"new").unwrap();
        assert!(std::fs::symlink_metadata(d.join("l"))
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read(d.join("sub/t")).unwrap(), b"new");
        // Two names of one file are one output.
        let e = check_distinct_outputs(&[("--a", &d.join("l")), ("--b", &d.join("sub/t"))])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--b is the same file as --a"), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }
}
