//! The boot ramdisk, read: a tar archive (POSIX ustar) that `cargo xtask` packs and the
//! bootloader loads, holding the user programs as `bin/<name>` and, when the image carries a
//! partition plan, the plan as `plan` (text). See `docs/user-programs.md`.
//!
//! The archive is validated once by [`Archive::parse`] (every header's checksum, type and size,
//! and the end-of-archive blocks, by `tar-no-std`); lookups after that cannot fail on corrupt
//! data. Only regular files are seen. Names are a header's `name` field (up to 100 bytes):
//! entries whose path continues in the ustar `prefix` field are not found by their full path
//! (the xtask never writes them: program names are at most [`MAX_NAME`] bytes).
//!
//! ```
//! # fn archive() -> Vec<u8> {
//! #     let mut b = tar::Builder::new(Vec::new());
//! #     let mut h = tar::Header::new_ustar();
//! #     h.set_size(5);
//! #     h.set_mode(0o755);
//! #     h.set_entry_type(tar::EntryType::Regular);
//! #     b.append_data(&mut h, "bin/hello", &b"\x7fELF."[..]).unwrap();
//! #     b.into_inner().unwrap()
//! # }
//! let bytes = archive();
//! let disk = mk_ramdisk::Archive::parse(&bytes).unwrap();
//! assert_eq!(disk.program("hello"), Some(&b"\x7fELF."[..]));
//! assert_eq!(disk.programs().collect::<Vec<_>>(), ["hello"]);
//! ```

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

use tar_no_std::TarArchiveRef;

/// The tar block size: every header and every file's data start on one.
const BLOCKSIZE: usize = 512;

/// Where the programs are in the archive: `bin/<name>`.
pub const PROGRAM_DIR: &str = "bin/";
/// The path of the partition plan in the archive.
pub const PLAN_PATH: &str = "plan";
/// Longest program name (the system call ABI's limit on a name, `mk_abi::MAX_NAME`).
pub const MAX_NAME: usize = 64;

/// Why bytes are not a ramdisk archive. It is always the archive's fault (the image was built
/// with something else in its ramdisk, or the bytes were damaged).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveError {
    /// The bytes are not a well-formed tar archive (`tar-no-std`'s reason).
    Corrupt(tar_no_std::CorruptDataError),
}

impl core::fmt::Display for ArchiveError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Corrupt(e) => write!(f, "not a well-formed tar archive: {e:?}"),
        }
    }
}

/// A validated archive over borrowed bytes.
#[derive(Debug, Clone, Copy)]
pub struct Archive<'a> {
    bytes: &'a [u8],
}

/// One regular file of the archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct File<'a> {
    /// Its path in the archive, e.g. `bin/hello`.
    pub path: &'a str,
    pub data: &'a [u8],
}

impl<'a> Archive<'a> {
    /// Validates `bytes` as a tar archive.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ArchiveError> {
        TarArchiveRef::new(bytes).map_err(ArchiveError::Corrupt)?;
        Ok(Self { bytes })
    }

    /// The bytes of the whole archive.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Every regular file, in archive order. Entries whose name is not UTF-8 are skipped.
    pub fn files(&self) -> impl Iterator<Item = File<'a>> + use<'a> {
        let bytes = self.bytes;
        // Validated in `parse`: building the reference again cannot fail.
        let headers = TarArchiveRef::new(bytes).map(|t| t.headers()).ok();
        headers
            .into_iter()
            .flatten()
            .filter_map(move |(block, hdr)| {
                let kind = hdr.typeflag.try_to_type_flag().ok()?;
                if !kind.is_regular_file() {
                    return None;
                }
                let size: usize = hdr.size.as_number().ok()?;
                let start = (block + 1).checked_mul(BLOCKSIZE)?;
                let data = bytes.get(start..start.checked_add(size)?)?;
                let path = hdr.name.as_str().ok()?;
                Some(File { path, data })
            })
    }

    /// The file at `path` (the first one, if the archive repeats a path).
    pub fn file(&self, path: &str) -> Option<&'a [u8]> {
        self.files().find(|f| f.path == path).map(|f| f.data)
    }

    /// The program `name` (the file `bin/<name>`). A name with a `/` names no program.
    pub fn program(&self, name: &str) -> Option<&'a [u8]> {
        if !valid_name(name) {
            return None;
        }
        self.files()
            .find(|f| f.path.strip_prefix(PROGRAM_DIR) == Some(name))
            .map(|f| f.data)
    }

    /// The names of the programs (files directly under `bin/`), in archive order.
    pub fn programs(&self) -> impl Iterator<Item = &'a str> + use<'a> {
        self.files()
            .filter_map(|f| f.path.strip_prefix(PROGRAM_DIR))
            .filter(|name| valid_name(name))
    }

    /// The partition plan the image carries (the file `plan`, trimmed), if any and if UTF-8.
    pub fn plan(&self) -> Option<&'a str> {
        let text = core::str::from_utf8(self.file(PLAN_PATH)?).ok()?.trim();
        (!text.is_empty()).then_some(text)
    }
}

/// Whether `name` can be a program's name: 1 to [`MAX_NAME`] bytes, no `/`, no space (spaces
/// separate the words of an argument string, whose first word is the name).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && !name
            .bytes()
            .any(|b| b == b'/' || b.is_ascii_whitespace() || b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, data) in files {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, path, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn finds_programs_files_and_plan() {
        let big = vec![0xA5u8; 5000];
        let bytes = archive(&[
            ("bin/hello", b"hello-elf"),
            ("bin/spin", &big),
            ("plan", b"1,3\n"),
            ("etc/motd", b""),
        ]);
        let a = Archive::parse(&bytes).unwrap();
        assert_eq!(a.program("hello"), Some(&b"hello-elf"[..]));
        assert_eq!(a.program("spin"), Some(&big[..]));
        assert_eq!(a.program("plan"), None);
        assert_eq!(a.program("bin/hello"), None);
        assert_eq!(a.program(""), None);
        assert_eq!(a.file("plan"), Some(&b"1,3\n"[..]));
        assert_eq!(a.file("etc/motd"), Some(&b""[..]));
        assert_eq!(a.file("nothing"), None);
        assert_eq!(a.plan(), Some("1,3"));
        assert_eq!(a.programs().collect::<Vec<_>>(), ["hello", "spin"]);
        assert_eq!(a.files().count(), 4);
    }

    #[test]
    fn directories_are_not_files() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_size(0);
        h.set_mode(0o755);
        b.append_data(&mut h, "bin/", &b""[..]).unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_size(2);
        h.set_mode(0o755);
        b.append_data(&mut h, "bin/init", &b"ok"[..]).unwrap();
        let bytes = b.into_inner().unwrap();
        let a = Archive::parse(&bytes).unwrap();
        assert_eq!(a.programs().collect::<Vec<_>>(), ["init"]);
        assert_eq!(a.plan(), None);
    }

    #[test]
    fn corrupt_archives_are_refused() {
        assert!(Archive::parse(&[]).is_err());
        assert!(
            Archive::parse(b"2,2\n").is_err(),
            "a raw plan is no archive"
        );
        let mut bytes = archive(&[("bin/hello", b"x")]);
        bytes[0] ^= 1; // the header's checksum no longer matches
        assert!(Archive::parse(&bytes).is_err());
        let bytes = archive(&[("bin/hello", b"x")]);
        assert!(Archive::parse(&bytes[..1024]).is_err(), "cut short");
    }

    #[test]
    fn names() {
        assert!(valid_name("hello"));
        assert!(!valid_name("a/b"));
        assert!(!valid_name("a b"));
        assert!(!valid_name(&"x".repeat(MAX_NAME + 1)));
    }
}
