//! A pool of 4 KiB pages in memory shared by all multikernel instances, for data larger than a
//! message.
//!
//! Messages between instances carry at most 256 bytes. Anything bigger goes through pages of a
//! shared pool: the sender allocates a contiguous run of pages, writes them, hands them over to
//! the receiver and sends it `(first, pages, generation)` in a message; the receiver accepts
//! them, reads them, and releases them (or hands them back). Ownership of every page is one
//! `AtomicU64` owner word, changed only by compare-exchange, so a page has at most one owner at
//! every instant. This crate is pure logic (`no_std`, no `alloc`), tested on the host with
//! threads standing in for instances.
//!
//! # Layout
//!
//! All offsets are from the pool base, which must be 4 KiB aligned; nothing in the pool is a
//! pointer, so every instance may map it at its own address. For `n` pages
//! ([`region_size`]`(n)`; `w = ceil(n / 512)` pages of owner words):
//!
//! ```text
//!  offset               size        contents                                written by
//!  0x0000               4 KiB       header page:                            instance 0, once
//!                                     +0x00 magic "MKPOOL01" (u64)          (init)
//!                                     +0x08 version u32, +0x0c pages u32
//!                                     +0x10 page size u32 (4096)
//!                                     +0x14 owner-word pages w u32
//!                                     +0x18 data offset u64, +0x20 total size u64
//!                                     +0x40 next generation u64             fetch_add, anyone
//!                                           (a cache line of its own)
//!                                     rest unused
//!  0x1000               w x 4 KiB   owner words: n x AtomicU64, word i      compare-exchange
//!                                   for data page i (512 per page), rest
//!                                   of the last page unused
//!  0x1000 + w x 4 KiB   n x 4 KiB   data pages 0 .. n                       their owner only
//!  total = (1 + w + n) x 4 KiB, e.g. n = 512: 0x202000, n = 1024: 0x403000
//! ```
//!
//! [`Pool::page_phys_offset`] gives the byte offset of a data page from the base (the kernel
//! adds the pool's physical base to get a frame); [`Pool::page_from_phys_offset`] turns an
//! offset received from a peer back into a page index, checked.
//!
//! # Owner words
//!
//! Each word encodes an [`Owner`] (`Free`, `Owned(by)`, `InTransit { from, to }`) and a 28-bit
//! generation (layout in the `word` module: tag bits 0..4, owner/from 4..20, to 20..36,
//! generation 36..64). Generations come from one pool-wide counter in the header, drawn afresh
//! by every [`Pool::alloc`] and every [`Pool::hand_over`]; all pages of a run get the same one,
//! which is the [`Lease::generation`]. Every operation on a lease checks it, so a stale lease
//! or a stale or forged message (a second accept, an accept after the sender cancelled or the
//! pool reclaimed, a release of a run that was since reallocated) fails with
//! [`Error::WrongGeneration`] or [`Error::NotInTransit`] instead of taking someone else's pages.
//! (A stale triple could only match again after exactly a multiple of 2^28 allocations and
//! hand-overs pool-wide while it lay around, with the same pages in transit to the same
//! receiver.)
//!
//! # Protocol
//!
//! ```text
//!  sender S                                   receiver R
//!  l = alloc(S, k)          Free -> Owned(S, g1)
//!  checked_write(l, ..)     (S only)
//!  l' = hand_over(l, S, R)  Owned(S, g1) -> InTransit{S, R, g2}      [CAS Release]
//!  S never touches the pages again
//!  message (l'.first, k, g2) ---------------> accept(first, k, R, g2)     [CAS Acquire]
//!                                             InTransit{S, R, g2} -> Owned(R, g2)
//!                                             read checked_bytes / bytes (R only)
//!                                             release(l', R) Owned(R, g2) -> Free  [Release]
//!                                             or hand_over(l', R, S) to give them back
//! ```
//!
//! Operations on a run of pages go page by page in ascending order and are all-or-nothing, so a
//! failed operation leaves no page half-claimed: [`Pool::hand_over`], [`Pool::accept`],
//! [`Pool::cancel`] and [`Pool::release`] first check every page (a wrong lease or a message
//! naming too many pages changes nothing), then change them by CAS; [`Pool::alloc`] claims by
//! CAS directly. If a CAS fails anyway (a concurrent allocation, or [`Pool::reclaim_from`]), the
//! pages already changed are undone (and `alloc` goes on searching). The one exception keeps
//! reclaim complete: an `accept` or `cancel` that finds a page of its run freed by a concurrent
//! reclaim frees the pages it took as well, rather than recreating a transfer with a dead
//! instance behind the reclaim's back. [`Pool::cancel`] lets a sender whose receiver does not
//! answer take an in-transit run back; since cancel and accept both start at the first page,
//! whoever wins that page wins the run.
//!
//! # Memory ordering
//!
//! * **Format / attach.** [`Pool::init`] writes everything Relaxed, then the magic with
//!   **Release**; [`Pool::attach`] loads the magic with **Acquire** before reading anything
//!   else.
//! * **Owner words** change only by `compare_exchange` with **AcqRel** on success and
//!   **Acquire** on failure; plain reads are **Acquire**. Hence the sender's writes to the pages
//!   happen-before the receiver's reads: the sender writes, then `hand_over`'s CAS
//!   (Release) publishes `InTransit`; `accept`'s CAS (Acquire) reads exactly that value. In the
//!   same way `release` (Release) and a later `alloc` (Acquire) order the previous owner's last
//!   access before the next owner's first, and a receiver's reads before a sender's rewrite
//!   after handing back.
//! * The **generation counter** is a Relaxed `fetch_add`: it only needs to be unique, which
//!   every read-modify-write guarantees; it orders nothing.
//!
//! # Trust
//!
//! A receiver never trusts what a message says: [`Pool::accept`] range-checks `(first, pages)`
//! (never UB or a panic from a bad index: [`Error::OutOfRange`]) and checks every page's owner
//! word before granting anything. [`Pool::checked_bytes`] checks that every page is
//! `Owned(owner)` and returns `&[AtomicU8]`, so even a buggy peer that keeps writing pages it no
//! longer owns (through its own mapping, which no check here can stop) causes no undefined
//! behaviour, only data that changes under the reader. That residual race is why the receiver
//! copies the data out ([`Pool::checked_copy`]) and validates the copy (checksum, lengths)
//! instead of parsing the shared pages in place; [`Pool::checked_write`] is the sender's side of
//! the same. For plain slices, [`Pool::data`] gives the run's window as an [`mk_raw::Raw`],
//! whose `unsafe` [`mk_raw::Raw::bytes`] / [`mk_raw::Raw::bytes_mut`] leave exclusivity to the
//! caller.
//!
//! # Failure recovery
//!
//! [`Pool::reclaim_from`]`(dead)` is run (by instance 0, or whoever handles the failure) once
//! `dead` is known to have stopped executing. Every page `Owned(dead)`, `InTransit{dead, _}` or
//! `InTransit{_, dead}` becomes `Free`, keeping its generation. Nothing goes "back to the live
//! side": a live receiver has not accepted (holds nothing; its pending `accept` fails with
//! [`Error::NotInTransit`]) and a live sender gave its pages away (its `cancel` fails with
//! `NotInTransit`), so freeing is the only outcome that loses no page and never leaves one
//! with an owner who does not know it owns it. Pages of live instances are untouched; reclaim
//! may run while they keep working (each page is one CAS).
//!
//! This crate has no `unsafe` (`forbid(unsafe_code)`): the pool comes in as an
//! [`mk_raw::Raw`] view, which does the checked casts.

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

mod word;

use core::ops::Range;
use core::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};

pub use mk_raw::Raw;
pub use word::{GENERATION_BITS, GENERATION_MASK, Owner};
use word::{decode, encode};

/// Bytes per page (header, owner-word and data pages alike).
pub const PAGE: usize = 4096;
/// `b"MKPOOL01"` as a little-endian `u64`, the first word of a formatted pool.
pub const MAGIC: u64 = u64::from_le_bytes(*b"MKPOOL01");
/// Layout version; [`Pool::attach`] refuses any other.
pub const VERSION: u32 = 1;
/// Owner words per page.
pub const WORDS_PER_PAGE: usize = PAGE / core::mem::size_of::<u64>();

/// Everything that can go wrong. Never a panic: every check of shared memory or of a number
/// from a peer returns one of these.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The first word is not [`MAGIC`]: not a formatted pool.
    BadMagic,
    /// The header is of another layout version, or its derived fields (page size, owner-word
    /// pages, data offset, total size) disagree with this build's layout for its page count.
    VersionMismatch,
    /// The memory given is shorter than the layout needs.
    RegionTooSmall {
        /// Bytes needed.
        need: usize,
        /// Bytes given.
        have: usize,
    },
    /// Null or not 4 KiB-aligned base, or an offset that is not a page boundary.
    Misaligned,
    /// A page range outside `0..pages` (or an offset outside the data pages).
    OutOfRange,
    /// No free contiguous run of the requested length (possibly only for the moment, while
    /// other allocations hold or roll back pages).
    Exhausted,
    /// A page is not in the state the operation needs for this instance.
    WrongOwner {
        /// The first page that did not match.
        page: u32,
        /// What it held.
        found: Owner,
    },
    /// A page has the right owner but another generation: a stale lease or message.
    WrongGeneration {
        /// The first page that did not match.
        page: u32,
        /// The generation given.
        given: u32,
        /// The generation found.
        found: u32,
    },
    /// `accept` or `cancel` found a page that is not in transit.
    NotInTransit {
        /// The first page that did not match.
        page: u32,
        /// What it held.
        found: Owner,
    },
    /// A run of zero pages (or a pool of zero pages).
    ZeroPages,
    /// `instance` would hold more than its quota: it holds `held` pages (owned, or handed
    /// over and not yet accepted), asked for `asked` more, and may hold `quota`. The fault is
    /// `instance`'s: it keeps too many pages (a leak, or a peer sending it more than it
    /// releases).
    OverQuota {
        instance: u16,
        held: u32,
        asked: u32,
        quota: u32,
    },
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            Self::BadMagic => f.write_str("not a formatted pool (bad magic)"),
            Self::VersionMismatch => f.write_str("the pool's header is of another layout"),
            Self::RegionTooSmall { need, have } => {
                write!(f, "the pool needs {need} bytes, {have} given")
            }
            Self::Misaligned => f.write_str("misaligned base or offset"),
            Self::OutOfRange => f.write_str("pages outside the pool (the caller's numbers)"),
            Self::Exhausted => f.write_str("no free run of that many pages"),
            Self::WrongOwner { page, found } => write!(f, "page {page} is {found:?}"),
            Self::WrongGeneration { page, given, found } => write!(
                f,
                "page {page} has generation {found}, the lease or message says {given} (stale or forged)"
            ),
            Self::NotInTransit { page, found } => {
                write!(f, "page {page} is not in transit (it is {found:?})")
            }
            Self::ZeroPages => f.write_str("a run of zero pages"),
            Self::OverQuota {
                instance,
                held,
                asked,
                quota,
            } => write!(
                f,
                "instance {instance} holds {held} pages and asked for {asked} more: over its quota of {quota}"
            ),
        }
    }
}

/// A run of pages held under one generation: what a sender tells its receiver (three numbers,
/// well within a message). Just numbers: holding one grants nothing, every use is checked
/// against the owner words.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Lease {
    /// First data page.
    pub first: u32,
    /// Number of pages (at least 1).
    pub pages: u32,
    /// Generation every page of the run carries.
    pub generation: u32,
}

impl Lease {
    /// Bytes covered by the run.
    pub const fn len_bytes(&self) -> usize {
        self.pages as usize * PAGE
    }
}

mk_raw::atomic_struct! {
    #[repr(C)]
    /// The header page (first 128 bytes used). Only atomics, so sharing it is sound.
    pub(crate) struct Header {
        magic: AtomicU64,
        version: AtomicU32,
        pages: AtomicU32,
        page_size: AtomicU32,
        word_pages: AtomicU32,
        data_offset: AtomicU64,
        total_size: AtomicU64,
        _reserved: [AtomicU64; 3],
        /// Own cache line: the one header word written after `init`.
        next_generation: AtomicU64,
        _reserved2: [AtomicU64; 7],
    }
}

const _: () = assert!(core::mem::size_of::<Header>() == 128);
const _: () = assert!(core::mem::offset_of!(Header, next_generation) == 64);

/// Pages of owner words for `pages` data pages.
const fn word_pages(pages: u32) -> usize {
    (pages as usize).div_ceil(WORDS_PER_PAGE)
}

/// Byte offset of data page 0.
const fn data_offset(pages: u32) -> usize {
    PAGE + word_pages(pages) * PAGE
}

/// Bytes a pool of `pages` data pages occupies: header page, owner-word pages, data pages
/// (saturating, so an absurd count just fails the size check).
pub const fn region_size(pages: u32) -> usize {
    data_offset(pages).saturating_add((pages as usize).saturating_mul(PAGE))
}

/// A view of a formatted pool: `Copy`, `Send` and `Sync`; any number of them, in any number of
/// threads and instances, may work on the same pool at once.
#[derive(Clone, Copy)]
pub struct Pool<'a> {
    raw: Raw<'a>,
    header: &'a Header,
    words: &'a [AtomicU64],
    pages: u32,
    data_offset: usize,
    /// Most pages one instance may hold through this view ([`Pool::with_quota`]).
    quota: u32,
}

impl core::fmt::Debug for Pool<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Pool")
            .field("pages", &self.pages)
            .field("data_offset", &self.data_offset)
            .field("len", &self.raw.len())
            .finish()
    }
}

impl<'a> Pool<'a> {
    /// Formats `raw` (4 KiB aligned) as a pool of `pages` data pages, all `Free`, and returns a
    /// view of it. Done once, by instance 0, before anyone attaches (nobody else may attach
    /// until `init` returns). Afterwards every instance follows the ownership protocol: data
    /// pages are read or written only by their owner.
    pub fn init(raw: Raw<'a>, pages: u32) -> Result<Self, Error> {
        if pages == 0 {
            return Err(Error::ZeroPages);
        }
        raw.ensure_aligned(PAGE)?;
        let need = region_size(pages);
        raw.ensure_len(need)?;
        let pool = Self::view(raw, pages)?;
        let (header, words) = (pool.header, pool.words);
        header.magic.store(0, Ordering::Relaxed);
        for w in words {
            w.store(encode(Owner::Free, 0), Ordering::Relaxed);
        }
        header.version.store(VERSION, Ordering::Relaxed);
        header.pages.store(pages, Ordering::Relaxed);
        header.page_size.store(PAGE as u32, Ordering::Relaxed);
        header
            .word_pages
            .store(word_pages(pages) as u32, Ordering::Relaxed);
        header
            .data_offset
            .store(data_offset(pages) as u64, Ordering::Relaxed);
        header.total_size.store(need as u64, Ordering::Relaxed);
        header.next_generation.store(1, Ordering::Relaxed);
        // Publishes everything above to whoever loads the magic with Acquire.
        header.magic.store(MAGIC, Ordering::Release);
        Ok(pool)
    }

    /// Attaches to a pool formatted by [`Pool::init`] (possibly mapped at another address):
    /// checks the magic, the version, the layout fields and that `raw` covers the pool.
    pub fn attach(raw: Raw<'a>) -> Result<Self, Error> {
        raw.ensure_aligned(PAGE)?;
        let header: &Header = raw.at(0)?;
        if header.magic.load(Ordering::Acquire) != MAGIC {
            return Err(Error::BadMagic);
        }
        if header.version.load(Ordering::Relaxed) != VERSION {
            return Err(Error::VersionMismatch);
        }
        let pages = header.pages.load(Ordering::Relaxed);
        if pages == 0 {
            return Err(Error::ZeroPages);
        }
        let need = region_size(pages);
        if header.page_size.load(Ordering::Relaxed) as usize != PAGE
            || header.word_pages.load(Ordering::Relaxed) as usize != word_pages(pages)
            || header.data_offset.load(Ordering::Relaxed) != data_offset(pages) as u64
            || header.total_size.load(Ordering::Relaxed) != need as u64
        {
            return Err(Error::VersionMismatch);
        }
        raw.ensure_len(need)?;
        Self::view(raw, pages)
    }

    /// Instance 0 only: writes the header's layout words back as [`Pool::init`] wrote them,
    /// from this view's page count (a stray or hostile write into them would make every later
    /// [`Pool::attach`], a respawned instance's among them, fail). The generation counter is
    /// left as it is. Returns how many words had changed (0: intact).
    pub fn restore_header(&self) -> usize {
        use mk_raw::{put_back_u32, put_back_u64};
        let h = self.header;
        let fixed = put_back_u32(&h.version, VERSION)
            + put_back_u32(&h.pages, self.pages)
            + put_back_u32(&h.page_size, PAGE as u32)
            + put_back_u32(&h.word_pages, word_pages(self.pages) as u32)
            + put_back_u64(&h.data_offset, data_offset(self.pages) as u64)
            + put_back_u64(&h.total_size, region_size(self.pages) as u64);
        // Release, last, as in `init`: an attacher that sees the magic sees the words above.
        fixed + usize::from(h.magic.swap(MAGIC, Ordering::Release) != MAGIC)
    }

    /// The typed parts of a pool of `pages` pages at `raw`.
    fn view(raw: Raw<'a>, pages: u32) -> Result<Self, Error> {
        Ok(Self {
            raw,
            header: raw.at(0)?,
            words: raw.slice(PAGE, pages as usize)?,
            pages,
            data_offset: data_offset(pages),
            quota: pages,
        })
    }

    /// This view with a per-instance quota: [`Pool::alloc`] and [`Pool::accept`] refuse
    /// ([`Error::OverQuota`]) to let one instance hold more than `quota` pages, counting the
    /// pages it owns and those it handed over that are not accepted yet. The quota is each
    /// instance's own setting (every instance passes the same one): it bounds what a buggy
    /// instance takes through this API and what a peer can make a receiver hold, not what a
    /// hostile instance writes into the owner words directly.
    pub fn with_quota(self, quota: u32) -> Self {
        Self { quota, ..self }
    }

    /// The per-instance quota of this view (the page count when none was set).
    pub fn quota(&self) -> u32 {
        self.quota
    }

    /// Pages `instance` holds right now: owned, or handed over by it and not yet accepted (a
    /// snapshot).
    pub fn held_by(&self, instance: u16) -> u32 {
        self.words
            .iter()
            .filter(|w| match decode(w.load(Ordering::Acquire)).0 {
                Owner::Owned(o) => o == instance,
                Owner::InTransit { from, .. } => from == instance,
                Owner::Free | Owner::Invalid(_) => false,
            })
            .count() as u32
    }

    /// [`Error::OverQuota`] if `instance` may not take `asked` more pages.
    fn check_quota(&self, instance: u16, asked: u32) -> Result<(), Error> {
        if self.quota >= self.pages {
            return Ok(());
        }
        let held = self.held_by(instance);
        if held.saturating_add(asked) > self.quota {
            return Err(Error::OverQuota {
                instance,
                held,
                asked,
                quota: self.quota,
            });
        }
        Ok(())
    }

    /// Number of data pages.
    pub fn pages(&self) -> u32 {
        self.pages
    }

    /// Bytes the pool occupies ([`region_size`] of its page count).
    pub fn size(&self) -> usize {
        region_size(self.pages)
    }

    /// Byte offset of data page `page` from the pool base (add the pool's physical base and
    /// shift by 12 for a frame number). [`Error::OutOfRange`] unless `page < pages`.
    pub fn page_phys_offset(&self, page: u32) -> Result<usize, Error> {
        if page >= self.pages {
            return Err(Error::OutOfRange);
        }
        Ok(self.data_offset + page as usize * PAGE)
    }

    /// The data page at byte offset `offset` from the pool base (the inverse of
    /// [`Pool::page_phys_offset`], for numbers received from a peer): [`Error::Misaligned`]
    /// unless a page boundary, [`Error::OutOfRange`] unless inside the data pages.
    pub fn page_from_phys_offset(&self, offset: usize) -> Result<u32, Error> {
        if !offset.is_multiple_of(PAGE) {
            return Err(Error::Misaligned);
        }
        let page = offset
            .checked_sub(self.data_offset)
            .ok_or(Error::OutOfRange)?
            / PAGE;
        if page >= self.pages as usize {
            return Err(Error::OutOfRange);
        }
        Ok(page as u32)
    }

    /// Current state and generation of `page` (a snapshot, Acquire).
    pub fn owner(&self, page: u32) -> Result<(Owner, u32), Error> {
        let w = self.words.get(page as usize).ok_or(Error::OutOfRange)?;
        Ok(decode(w.load(Ordering::Acquire)))
    }

    /// Counts pages that are `Free` right now (a snapshot, for statistics and tests).
    pub fn free_pages(&self) -> u32 {
        self.words
            .iter()
            .filter(|w| decode(w.load(Ordering::Acquire)).0 == Owner::Free)
            .count() as u32
    }

    /// The pages `first .. first + pages`, checked against the pool.
    fn range(&self, first: u32, pages: u32) -> Result<Range<u32>, Error> {
        if pages == 0 {
            return Err(Error::ZeroPages);
        }
        match first.checked_add(pages) {
            Some(end) if end <= self.pages => Ok(first..end),
            _ => Err(Error::OutOfRange),
        }
    }

    fn word(&self, page: u32) -> &'a AtomicU64 {
        // Callers pass pages from `range`, which checked them; indexing would panic otherwise.
        &self.words[page as usize]
    }

    fn cas(&self, page: u32, current: u64, new: u64) -> Result<u64, u64> {
        self.word(page)
            .compare_exchange(current, new, Ordering::AcqRel, Ordering::Acquire)
    }

    /// A generation no other allocation or hand-over got (modulo `1 << GENERATION_BITS`).
    fn fresh_generation(&self) -> u32 {
        (self.header.next_generation.fetch_add(1, Ordering::Relaxed) as u32) & GENERATION_MASK
    }

    /// The error for a page that should have been `Owned(by)` with `generation`.
    fn not_owned(page: u32, found: u64, by: u16, generation: u32) -> Error {
        match decode(found) {
            (Owner::Owned(o), g) if o == by => Error::WrongGeneration {
                page,
                given: generation,
                found: g,
            },
            (found, _) => Error::WrongOwner { page, found },
        }
    }

    /// Undoes `pages` (already changed to `new`): `new -> old`. A failing CAS means
    /// `reclaim_from` freed the page meanwhile; then the page is free and stays so.
    fn undo(&self, pages: Range<u32>, new: u64, old: u64) {
        for p in pages {
            let _ = self.cas(p, new, old);
        }
    }

    /// Claims the first free run of `pages` contiguous pages for `by`, each page by CAS
    /// `Free -> Owned(by)` under one fresh generation. A page found taken (or taken between the
    /// look and the CAS) makes it undo the pages of this attempt and search on after it.
    /// [`Error::Exhausted`] if no run is free (possibly only transiently, under contention).
    pub fn alloc(&self, by: u16, pages: u32) -> Result<Lease, Error> {
        if pages == 0 {
            return Err(Error::ZeroPages);
        }
        if pages > self.pages {
            return Err(Error::Exhausted);
        }
        self.check_quota(by, pages)?;
        let generation = self.fresh_generation();
        let owned = encode(Owner::Owned(by), generation);
        let freed = encode(Owner::Free, generation);
        let mut start = 0u32;
        'search: while start <= self.pages - pages {
            let run = start..start + pages;
            for p in run.clone() {
                let cur = self.word(p).load(Ordering::Acquire);
                if decode(cur).0 != Owner::Free || self.cas(p, cur, owned).is_err() {
                    self.undo(run.start..p, owned, freed);
                    start = p + 1;
                    continue 'search;
                }
            }
            return Ok(Lease {
                first: start,
                pages,
                generation,
            });
        }
        Err(Error::Exhausted)
    }

    /// Hands `lease` from `from` to `to`: every page `Owned(from)` with the lease's generation
    /// becomes `InTransit { from, to }` under a fresh generation, which the returned lease
    /// carries (send its three numbers to `to`). All or nothing: every page is checked first,
    /// and if a CAS still fails the pages already changed go back to `Owned(from)`. The CAS is
    /// Release: `from`'s writes to the pages happen-before the receiver's reads after its
    /// `accept`. `from` must not touch the pages afterwards (unless it takes them back with
    /// [`Pool::cancel`]).
    pub fn hand_over(&self, lease: Lease, from: u16, to: u16) -> Result<Lease, Error> {
        let range = self.range(lease.first, lease.pages)?;
        let old = encode(Owner::Owned(from), lease.generation);
        // Check first, so a wrong lease changes nothing even transiently.
        for p in range.clone() {
            let found = self.word(p).load(Ordering::Acquire);
            if found != old {
                return Err(Self::not_owned(p, found, from, lease.generation));
            }
        }
        let generation = self.fresh_generation();
        let new = encode(Owner::InTransit { from, to }, generation);
        for p in range.clone() {
            if let Err(found) = self.cas(p, old, new) {
                self.undo(range.start..p, new, old);
                return Err(Self::not_owned(p, found, from, lease.generation));
            }
        }
        Ok(Lease {
            generation,
            ..lease
        })
    }

    /// Shared by accept (`to` takes the run) and cancel (`from` takes it back): every page must
    /// be `InTransit` between the same pair as the first page, `party` on the right side, with
    /// `generation`; it becomes `Owned(party)` with the same generation. All or nothing.
    fn finish(
        &self,
        first: u32,
        pages: u32,
        party: u16,
        generation: u32,
        accepting: bool,
    ) -> Result<Lease, Error> {
        let range = self.range(first, pages)?;
        let check = |page: u32, w: u64| -> Result<(u16, u16), Error> {
            match decode(w) {
                (Owner::InTransit { from, to }, g) => {
                    let me = if accepting { to } else { from };
                    if me != party {
                        Err(Error::WrongOwner {
                            page,
                            found: Owner::InTransit { from, to },
                        })
                    } else if g != generation {
                        Err(Error::WrongGeneration {
                            page,
                            given: generation,
                            found: g,
                        })
                    } else {
                        Ok((from, to))
                    }
                }
                (found, _) => Err(Error::NotInTransit { page, found }),
            }
        };
        let (from, to) = check(first, self.word(first).load(Ordering::Acquire))?;
        let old = encode(Owner::InTransit { from, to }, generation);
        let new = encode(Owner::Owned(party), generation);
        // Check every page first, so a message naming too many pages changes nothing.
        for p in range.clone() {
            let found = self.word(p).load(Ordering::Acquire);
            if found != old {
                return Err(check(p, found).err().unwrap_or(Error::WrongOwner {
                    page: p,
                    found: decode(found).0,
                }));
            }
        }
        for p in range.clone() {
            if let Err(found) = self.cas(p, old, new) {
                // Failing after the first page (whose CAS decides between a racing accept and
                // cancel) means `reclaim_from` freed this transfer's pages meanwhile (`Free`
                // with its generation): then free the pages taken, too, as the reclaim would
                // have, instead of recreating a transfer involving a dead instance behind it.
                let back = if found == encode(Owner::Free, generation) {
                    encode(Owner::Free, generation)
                } else {
                    old
                };
                self.undo(range.start..p, new, back);
                // A page of the right shape but another pair is the wrong owner, too.
                return Err(check(p, found).err().unwrap_or(Error::WrongOwner {
                    page: p,
                    found: decode(found).0,
                }));
            }
        }
        Ok(Lease {
            first,
            pages,
            generation,
        })
    }

    /// `to` accepts the run `first .. first + pages` handed over with `generation` (the three
    /// numbers from the sender's message, not trusted: range and every owner word are
    /// checked): every page `InTransit { from, to }` with that generation (one `from` for the
    /// whole run) becomes `Owned(to)`. All or nothing. The CAS is Acquire: the sender's writes
    /// happen-before `to`'s reads of the pages. Errors: [`Error::OutOfRange`],
    /// [`Error::ZeroPages`], [`Error::NotInTransit`] (not handed over, already accepted,
    /// cancelled or reclaimed), [`Error::WrongOwner`] (in transit to someone else),
    /// [`Error::WrongGeneration`] (a stale message).
    pub fn accept(&self, first: u32, pages: u32, to: u16, generation: u32) -> Result<Lease, Error> {
        self.range(first, pages)?;
        self.check_quota(to, pages)?;
        self.finish(first, pages, to, generation, true)
    }

    /// [`Pool::accept`], and the run must come from `from` (the instance the message came
    /// from): a run in transit to `to` from anyone else is [`Error::WrongOwner`], untouched.
    /// This is what a receiver should use: the three numbers come from the message, the
    /// sender from the channel it arrived on.
    pub fn accept_from(
        &self,
        first: u32,
        pages: u32,
        from: u16,
        to: u16,
        generation: u32,
    ) -> Result<Lease, Error> {
        self.range(first, pages)?;
        match self.owner(first)?.0 {
            Owner::InTransit { from: f, to: t } if f == from && t == to => {
                self.accept(first, pages, to, generation)
            }
            found @ Owner::InTransit { .. } => Err(Error::WrongOwner { page: first, found }),
            found => Err(Error::NotInTransit { page: first, found }),
        }
    }

    /// The sender takes back a run it handed over and the receiver has not accepted (e.g. the
    /// receiver does not answer): every page `InTransit { from, _ }` with the lease's generation
    /// becomes `Owned(from)` again. All or nothing; the receiver's later `accept` fails with
    /// [`Error::NotInTransit`].
    pub fn cancel(&self, lease: Lease, from: u16) -> Result<Lease, Error> {
        self.finish(lease.first, lease.pages, from, lease.generation, false)
    }

    /// Frees a run `by` owns under the lease's generation (`Owned(by) -> Free`, CAS Release:
    /// `by`'s accesses happen-before the next owner's). Every page is checked before any is
    /// freed, so a wrong lease changes nothing. Only `by` itself (and `reclaim_from(by)`) can
    /// change pages `Owned(by)`; if the second check, the CAS, still fails (reclaim declared `by`
    /// dead meanwhile), the remaining pages are freed anyway and the error returned.
    pub fn release(&self, lease: Lease, by: u16) -> Result<(), Error> {
        let range = self.range(lease.first, lease.pages)?;
        let owned = encode(Owner::Owned(by), lease.generation);
        let free = encode(Owner::Free, lease.generation);
        for p in range.clone() {
            let found = self.word(p).load(Ordering::Acquire);
            if found != owned {
                return Err(Self::not_owned(p, found, by, lease.generation));
            }
        }
        let mut result = Ok(());
        for p in range {
            if let Err(found) = self.cas(p, owned, free)
                && result.is_ok()
            {
                result = Err(Self::not_owned(p, found, by, lease.generation));
            }
        }
        result
    }

    /// Failure recovery, once `dead` has stopped executing (its CPUs halted: otherwise it could
    /// still write pages that become free): every page `Owned(dead)`, `InTransit { from: dead,
    /// .. }` or `InTransit { to: dead, .. }` becomes `Free` (generation kept); see the crate
    /// docs for why nothing goes back to the live side. Pages of live instances are untouched,
    /// and they may keep working meanwhile. Returns the number of pages freed.
    pub fn reclaim_from(&self, dead: u16) -> u32 {
        let mut freed = 0;
        for w in self.words {
            let mut cur = w.load(Ordering::Acquire);
            loop {
                let (owner, generation) = decode(cur);
                let involved = match owner {
                    Owner::Owned(o) => o == dead,
                    Owner::InTransit { from, to } => from == dead || to == dead,
                    Owner::Free | Owner::Invalid(_) => false,
                };
                if !involved {
                    break;
                }
                match w.compare_exchange(
                    cur,
                    encode(Owner::Free, generation),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => {
                        freed += 1;
                        break;
                    }
                    Err(now) => cur = now,
                }
            }
        }
        freed
    }

    /// Verifies that every page of `first .. first + pages` is `Owned(owner)` right now and
    /// returns their bytes as atomics (sound whatever anyone writes; Relaxed loads compile to
    /// plain moves). Residual race: a buggy peer may still write pages it no longer owns, so
    /// the contents may change while read; copy out ([`Pool::checked_copy`]) and validate the
    /// copy instead of parsing in place.
    pub fn checked_bytes(
        &self,
        first: u32,
        pages: u32,
        owner: u16,
    ) -> Result<&'a [AtomicU8], Error> {
        let range = self.range(first, pages)?;
        for p in range {
            let (found, _) = decode(self.word(p).load(Ordering::Acquire));
            if found != Owner::Owned(owner) {
                return Err(Error::WrongOwner { page: p, found });
            }
        }
        Ok(self.raw.slice(
            self.data_offset + first as usize * PAGE,
            pages as usize * PAGE,
        )?)
    }

    /// [`Pool::checked_bytes`], then copies the first `dst.len()` bytes of the run into `dst`
    /// ([`Error::OutOfRange`] if `dst` is longer than the run). Validate the copy (it is
    /// stable; the shared pages need not be).
    pub fn checked_copy(
        &self,
        first: u32,
        pages: u32,
        owner: u16,
        dst: &mut [u8],
    ) -> Result<(), Error> {
        let src = self.checked_bytes(first, pages, owner)?;
        let src = src.get(..dst.len()).ok_or(Error::OutOfRange)?;
        for (d, s) in dst.iter_mut().zip(src) {
            *d = s.load(Ordering::Relaxed);
        }
        Ok(())
    }

    /// [`Pool::checked_bytes`], then copies `src` into the start of the run
    /// ([`Error::OutOfRange`] if `src` is longer than the run): the sender filling pages it
    /// owns, without `unsafe`.
    pub fn checked_write(
        &self,
        first: u32,
        pages: u32,
        owner: u16,
        src: &[u8],
    ) -> Result<(), Error> {
        let dst = self.checked_bytes(first, pages, owner)?;
        let dst = dst.get(..src.len()).ok_or(Error::OutOfRange)?;
        for (d, &s) in dst.iter().zip(src) {
            d.store(s, Ordering::Relaxed);
        }
        Ok(())
    }

    /// The window of pages `first .. first + pages` as an [`mk_raw::Raw`] (range-checked:
    /// [`Error::ZeroPages`], [`Error::OutOfRange`]; ownership is not), for callers that want
    /// plain slices: its `unsafe` [`Raw::bytes`] / [`Raw::bytes_mut`] are sound while the
    /// caller's instance owns the pages (`Owned(by)`, e.g. after `alloc` or `accept`), keeps them
    /// (no `release` or `hand_over`) and takes no other slice of them meanwhile.
    pub fn data(&self, first: u32, pages: u32) -> Result<Raw<'a>, Error> {
        self.range(first, pages)?;
        Ok(self.raw.sub(
            self.data_offset + first as usize * PAGE,
            pages as usize * PAGE,
        )?)
    }
}

impl From<mk_raw::Error> for Error {
    fn from(e: mk_raw::Error) -> Self {
        match e {
            mk_raw::Error::Null | mk_raw::Error::Misaligned => Self::Misaligned,
            mk_raw::Error::RegionTooSmall { need, have } => Self::RegionTooSmall { need, have },
        }
    }
}
