//! The boot ramdisk of this instance: a tar archive of the user programs (`bin/<name>`) and,
//! in images for real machines, the partition plan (`plan`); see `docs/user-programs.md`.
//!
//! Instance 0 gets it from the bootloader (`BootInfo::ramdisk_*`); every other instance gets
//! its own copy, which instance 0 places in the instance's memory when it builds it
//! (`super::launch`) and describes in its boot descriptor. Either way [`init`] records it once
//! at boot, validated; the lookups below read this instance's copy only. No `unsafe` here:
//! getting the bytes is (`super::boot_ramdisk`, `BootDescriptor::archive`), parsing is not.

use mk_ramdisk::{Archive, ArchiveError};

static ARCHIVE: spin::Once<Option<Archive<'static>>> = spin::Once::new();

/// Records this instance's ramdisk (`None`: it has none), once; later calls change nothing.
/// Bytes that are not an archive are refused (the image's fault): the instance then runs
/// without programs.
pub fn init(bytes: Option<&'static [u8]>) -> Result<(), ArchiveError> {
    let parsed = bytes.map(Archive::parse).transpose();
    let result = parsed.map(|_| ());
    ARCHIVE.call_once(|| parsed.ok().flatten());
    result
}

fn get() -> Option<Archive<'static>> {
    ARCHIVE.get().copied().flatten()
}

/// The whole archive, as this instance holds it.
pub fn archive() -> Option<&'static [u8]> {
    get().map(|a| a.bytes())
}

/// The ELF file of program `name` (`bin/<name>` in the archive).
pub fn program(name: &str) -> Option<&'static [u8]> {
    get()?.program(name)
}

/// The file at `path` in the archive.
pub fn file(path: &str) -> Option<&'static [u8]> {
    get()?.file(path)
}

/// The names of the programs in the archive, in archive order.
pub fn programs() -> impl Iterator<Item = &'static str> {
    get().into_iter().flat_map(|a| a.programs())
}

/// The partition plan the archive carries (`plan`), if any.
pub fn plan() -> Option<&'static str> {
    get()?.plan()
}
