//! Hooks: how a lower layer of the kernel calls code of an upper one without importing it.
//!
//! The timer interrupt calls the heartbeat, the doorbell interrupt drains the mailboxes, the
//! serve loop runs the shell between drains: in each case the lower layer owns a [`Hook`] (one
//! function at a time) or a [`HookList`] (several), and the upper layer installs its function
//! when it starts. Dependencies then run one way, and no function pointer is ever forged from an
//! integer.
//!
//! Both types are lock-free and never block, so they may be read in interrupt handlers while
//! another CPU installs a function. They hold at most `N` distinct functions over their whole
//! life (a function installed again reuses its slot), which bounds them without allocation:
//!
//! ```text
//!  Hook<F, N>:  slots [Once<F>; N]   filled once each, never cleared
//!               current: AtomicUsize 0 = none, i = slots[i - 1]
//! ```
//!
//! ```
//! use mk_hook::Hook;
//! static ON_TICK: Hook<fn() -> u32> = Hook::new();
//! fn seven() -> u32 { 7 }
//! assert_eq!(ON_TICK.get().map(|f| f()), None);
//! ON_TICK.set(seven).unwrap();
//! assert_eq!(ON_TICK.get().map(|f| f()), Some(7));
//! ```

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

use core::sync::atomic::{AtomicUsize, Ordering};

use spin::Once;

/// Every slot of a hook holds another function already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full {
    /// The hook's capacity in distinct functions.
    pub capacity: usize,
}

impl core::fmt::Display for Full {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "the hook already held {} different functions",
            self.capacity
        )
    }
}

/// The slot holding `f` in `slots`, filling a free one if `f` is in none.
fn slot_of<F: Copy + PartialEq>(slots: &[Once<F>], f: F) -> Result<usize, Full> {
    if let Some(i) = slots.iter().position(|s| s.get() == Some(&f)) {
        return Ok(i);
    }
    for (i, slot) in slots.iter().enumerate() {
        // Another CPU may fill this slot first, with another function: then try the next.
        if *slot.call_once(|| f) == f {
            return Ok(i);
        }
    }
    Err(Full {
        capacity: slots.len(),
    })
}

/// One function at a time, replaceable, that a lower layer calls if it is installed.
pub struct Hook<F: Copy + PartialEq + 'static, const N: usize = 8> {
    slots: [Once<F>; N],
    current: AtomicUsize,
}

impl<F: Copy + PartialEq + 'static, const N: usize> Hook<F, N> {
    /// A hook with no function installed.
    pub const fn new() -> Self {
        Self {
            slots: [const { Once::new() }; N],
            current: AtomicUsize::new(0),
        }
    }

    /// Installs `f` in place of the current function (if any).
    pub fn set(&self, f: F) -> Result<(), Full> {
        let i = slot_of(&self.slots, f)?;
        self.current.store(i + 1, Ordering::Release);
        Ok(())
    }

    /// Removes the current function: `get` returns `None` until the next `set`.
    pub fn clear(&self) {
        self.current.store(0, Ordering::Release);
    }

    /// The current function, if one is installed.
    pub fn get(&self) -> Option<F> {
        match self.current.load(Ordering::Acquire) {
            0 => None,
            i => self.slots.get(i - 1).and_then(Once::get).copied(),
        }
    }
}

impl<F: Copy + PartialEq + 'static, const N: usize> Default for Hook<F, N> {
    fn default() -> Self {
        Self::new()
    }
}

/// Several functions, each called in turn; they stay installed for good.
pub struct HookList<F: Copy + PartialEq + 'static, const N: usize = 4> {
    slots: [Once<F>; N],
}

impl<F: Copy + PartialEq + 'static, const N: usize> HookList<F, N> {
    /// An empty list.
    pub const fn new() -> Self {
        Self {
            slots: [const { Once::new() }; N],
        }
    }

    /// Adds `f` (once: adding it again changes nothing).
    pub fn add(&self, f: F) -> Result<(), Full> {
        slot_of(&self.slots, f).map(|_| ())
    }

    /// The functions added so far, in the order they were added.
    pub fn iter(&self) -> impl Iterator<Item = F> + '_ {
        self.slots.iter().map_while(|s| s.get().copied())
    }
}

impl<F: Copy + PartialEq + 'static, const N: usize> Default for HookList<F, N> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn one() -> u32 {
        1
    }
    fn two() -> u32 {
        2
    }
    fn three() -> u32 {
        3
    }

    #[test]
    fn set_replace_clear() {
        let h: Hook<fn() -> u32, 2> = Hook::new();
        assert!(h.get().is_none());
        h.set(one).unwrap();
        assert_eq!(h.get().unwrap()(), 1);
        h.set(two).unwrap();
        assert_eq!(h.get().unwrap()(), 2);
        // Installing a function again reuses its slot: no capacity is used up.
        for _ in 0..10 {
            h.set(one).unwrap();
            h.set(two).unwrap();
        }
        assert_eq!(h.get().unwrap()(), 2);
        h.clear();
        assert!(h.get().is_none());
        assert_eq!(h.set(three), Err(Full { capacity: 2 }));
        assert!(h.get().is_none(), "a refused set leaves the hook as it was");
    }

    #[test]
    fn list_keeps_order_and_refuses_when_full() {
        let l: HookList<fn() -> u32, 2> = HookList::new();
        assert_eq!(l.iter().count(), 0);
        l.add(two).unwrap();
        l.add(one).unwrap();
        l.add(two).unwrap();
        assert_eq!(l.iter().map(|f| f()).collect::<Vec<_>>(), [2, 1]);
        assert_eq!(l.add(three), Err(Full { capacity: 2 }));
        assert_eq!(l.iter().map(|f| f()).collect::<Vec<_>>(), [2, 1]);
    }

    #[test]
    fn racing_installers_and_readers_see_only_installed_functions() {
        let h: Arc<Hook<fn() -> u32, 3>> = Arc::new(Hook::new());
        let l: Arc<HookList<fn() -> u32, 3>> = Arc::new(HookList::new());
        let mut threads = Vec::new();
        for f in [one as fn() -> u32, two, three] {
            let (h, l) = (h.clone(), l.clone());
            threads.push(std::thread::spawn(move || {
                for _ in 0..1000 {
                    h.set(f).unwrap();
                    l.add(f).unwrap();
                }
            }));
        }
        let reader = {
            let h = h.clone();
            std::thread::spawn(move || {
                for _ in 0..10_000 {
                    if let Some(f) = h.get() {
                        assert!((1..=3).contains(&f()));
                    }
                }
            })
        };
        for t in threads {
            t.join().unwrap();
        }
        reader.join().unwrap();
        let mut all: Vec<u32> = l.iter().map(|f| f()).collect();
        all.sort();
        assert_eq!(all, [1, 2, 3], "every function added exactly once");
        assert!(h.get().is_some());
    }
}
