//! The plugin's memory allocator on wasm (plugin step, inside the sandbox): a call's
//! allocations are bumped out of a small chunked arena and the arena is reused once the call
//! has freed them, so decoding a webhook costs almost nothing in `malloc` and `free`.
//!
//! Why: every call allocates dozens of short-lived strings (the host's copy of the request,
//! the parsed JSON or form fields, the events returned) and frees all of them before the next
//! call. Measured through the host, wasi-libc's dlmalloc took 19–24 % of a decode (its
//! `malloc`, `free` and Rust's shims around them), against a far cheaper allocator natively.
//!
//! How: the arena is [`CHUNKS`] chunks of [`CHUNK_BYTES`]. An allocation bumps the current
//! chunk; a chunk whose every allocation has been freed starts again from its beginning.
//! When the current chunk is full the next free one becomes current, and when none is free,
//! or a request is bigger than a chunk, the allocation falls back to the system allocator
//! (dlmalloc). Allocations that outlive a call (the plugin's parsed settings, a lazily built
//! table) pin only the chunk they sit in, so a plugin that keeps things keeps working, at
//! worst at dlmalloc's speed. The last allocation of a chunk grows and shrinks in place,
//! which is what a growing `Vec` or `String` does.
//!
//! The bookkeeping ([`Chunks`]) works on offsets and is tested natively; only the
//! `GlobalAlloc` adapter touches memory, and only in single-threaded wasm builds, where the
//! arena's bytes are taken from the system allocator on first use. The `arena` feature (on by
//! default) installs it; turn it off to bring an allocator of your own.

use std::alloc::Layout;

/// Bytes per chunk: a typical webhook's decode allocates a few kilobytes in all.
pub const CHUNK_BYTES: usize = 64 * 1024;
/// Chunks in the arena (512 KiB of the plugin's memory in all).
pub const CHUNKS: usize = 8;

/// The arena's bookkeeping, in offsets from its start.
#[derive(Debug)]
pub struct Chunks {
    /// Per chunk: the next free offset within it, the allocations alive in it, and the
    /// offset of its last allocation (`NONE` when that one was freed or moved).
    next: [usize; CHUNKS],
    live: [usize; CHUNKS],
    top: [usize; CHUNKS],
    current: usize,
}

const NONE: usize = usize::MAX;

impl Default for Chunks {
    fn default() -> Self {
        Self::new()
    }
}

impl Chunks {
    /// An empty arena.
    pub const fn new() -> Self {
        Self {
            next: [0; CHUNKS],
            live: [0; CHUNKS],
            top: [NONE; CHUNKS],
            current: 0,
        }
    }

    /// An offset (from the arena's start, which sits at address `base`) for `layout`, or
    /// `None` when the arena cannot hold it (the caller asks the system allocator).
    #[inline]
    pub fn allocate(&mut self, base: usize, layout: Layout) -> Option<usize> {
        if layout.size() > CHUNK_BYTES || layout.align() > CHUNK_BYTES {
            return None;
        }
        if let Some(offset) = self.bump(self.current, base, layout) {
            return Some(offset);
        }
        // The current chunk is full: move to one that holds nothing alive.
        let free = (1..CHUNKS)
            .map(|step| (self.current + step) % CHUNKS)
            .find(|&chunk| self.live[chunk] == 0)?;
        self.current = free;
        self.next[free] = 0;
        self.top[free] = NONE;
        self.bump(free, base, layout)
    }

    #[inline]
    fn bump(&mut self, chunk: usize, base: usize, layout: Layout) -> Option<usize> {
        let start = chunk * CHUNK_BYTES;
        let address = base + start + self.next[chunk];
        // Alignments are powers of two: round up with a mask, not a division (wasm has
        // no cheap one, and this runs for every allocation).
        let mask = layout.align() - 1;
        let aligned = ((address + mask) & !mask) - base - start;
        let end = aligned + layout.size();
        if end > CHUNK_BYTES {
            return None;
        }
        self.next[chunk] = end;
        self.top[chunk] = aligned;
        self.live[chunk] += 1;
        Some(start + aligned)
    }

    /// Whether `offset` (any integer: addresses outside the arena give `false`) lies in it.
    pub fn contains(offset: usize) -> bool {
        offset < CHUNKS * CHUNK_BYTES
    }

    /// Frees the allocation at `offset` of `size` bytes.
    #[inline]
    pub fn free(&mut self, offset: usize, size: usize) {
        let chunk = offset / CHUNK_BYTES;
        let within = offset % CHUNK_BYTES;
        self.live[chunk] -= 1;
        if self.live[chunk] == 0 {
            // Everything in it is gone: it starts again from its beginning.
            self.next[chunk] = 0;
            self.top[chunk] = NONE;
        } else if self.top[chunk] == within && within + size == self.next[chunk] {
            // The last allocation: its bytes can be handed out again at once.
            self.next[chunk] = within;
            self.top[chunk] = NONE;
        }
    }

    /// Resizes the allocation at `offset` in place when it is its chunk's last one and the
    /// new size fits (or when it shrinks); `false` when it must move.
    pub fn resize_in_place(&mut self, offset: usize, old_size: usize, new_size: usize) -> bool {
        let chunk = offset / CHUNK_BYTES;
        let within = offset % CHUNK_BYTES;
        if self.top[chunk] == within && within + old_size == self.next[chunk] {
            if within + new_size > CHUNK_BYTES {
                return false;
            }
            self.next[chunk] = within + new_size;
            return true;
        }
        new_size <= old_size
    }
}

#[cfg(all(
    target_family = "wasm",
    not(target_feature = "atomics"),
    feature = "arena"
))]
mod global {
    //! The `GlobalAlloc` adapter: the arena's address and its bookkeeping in statics.
    #![allow(unsafe_code)]

    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::UnsafeCell;

    use super::{CHUNK_BYTES, CHUNKS, Chunks};

    /// The arena's bytes come from the system allocator on the first allocation, not from a
    /// static: half a megabyte of zeroed data in the component made every instantiation
    /// 0.3 ms slower (measured with the plugin benchmark's cold start).
    struct Arena {
        /// The arena's address; 0 until first used, `usize::MAX` when it could not be had
        /// (everything then goes to the system allocator).
        base: UnsafeCell<usize>,
        chunks: UnsafeCell<Chunks>,
    }

    // SAFETY: this module is compiled only for wasm without the `atomics` feature, where a
    // component instance runs on one thread and is never re-entered during an allocation.
    unsafe impl Sync for Arena {}

    static ARENA: Arena = Arena {
        base: UnsafeCell::new(0),
        chunks: UnsafeCell::new(Chunks::new()),
    };

    const UNAVAILABLE: usize = usize::MAX;

    impl Arena {
        /// The arena's address, reserving it on first use; `None` when it is unavailable.
        fn base(&self) -> Option<usize> {
            // SAFETY: single-threaded and never re-entered (see `Sync` above).
            let base = unsafe { &mut *self.base.get() };
            if *base == 0 {
                let layout = Layout::from_size_align(CHUNKS * CHUNK_BYTES, 16)
                    .expect("a constant, valid layout");
                // SAFETY: a non-zero size.
                let bytes = unsafe { System.alloc(layout) };
                *base = if bytes.is_null() {
                    UNAVAILABLE
                } else {
                    bytes as usize
                };
            }
            (*base != UNAVAILABLE).then_some(*base)
        }

        /// The offset of `ptr` in the arena, if it is one of the arena's.
        fn offset(&self, ptr: *mut u8) -> Option<usize> {
            // SAFETY: as in `base`; a read only.
            let base = unsafe { *self.base.get() };
            if base == 0 || base == UNAVAILABLE {
                return None;
            }
            let offset = (ptr as usize).wrapping_sub(base);
            Chunks::contains(offset).then_some(offset)
        }

        /// Where `layout` goes in the arena, if it fits.
        fn allocate(&self, layout: Layout) -> Option<*mut u8> {
            let base = self.base()?;
            let offset = self.chunks().allocate(base, layout)?;
            Some((base + offset) as *mut u8)
        }

        #[allow(clippy::mut_from_ref)]
        fn chunks(&self) -> &mut Chunks {
            // SAFETY: single-threaded and never re-entered (see `Sync` above), so no other
            // reference to the bookkeeping is alive while an allocator method runs.
            unsafe { &mut *self.chunks.get() }
        }
    }

    /// Installed by the SDK for every plugin built with it (feature `arena`).
    #[global_allocator]
    static ALLOCATOR: CallArena = CallArena;

    struct CallArena;

    // SAFETY: arena offsets come from `Chunks`, which never hands out overlapping live
    // ranges and keeps them within the arena and aligned as asked; everything else is
    // the system allocator's, told apart by address.
    unsafe impl GlobalAlloc for CallArena {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            match ARENA.allocate(layout) {
                Some(ptr) => ptr,
                // SAFETY: forwarded as received.
                None => unsafe { System.alloc(layout) },
            }
        }

        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            match ARENA.allocate(layout) {
                Some(ptr) => {
                    // SAFETY: `layout.size()` bytes from `ptr` are the arena's and this
                    // allocation's; a reused chunk holds old bytes, so zero them.
                    unsafe { ptr.write_bytes(0, layout.size()) };
                    ptr
                }
                // SAFETY: forwarded as received.
                None => unsafe { System.alloc_zeroed(layout) },
            }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            match ARENA.offset(ptr) {
                Some(offset) => ARENA.chunks().free(offset, layout.size()),
                // SAFETY: not the arena's, so the system allocator's, with this layout.
                None => unsafe { System.dealloc(ptr, layout) },
            }
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            let Some(offset) = ARENA.offset(ptr) else {
                // SAFETY: the system allocator's block, forwarded as received.
                return unsafe { System.realloc(ptr, layout, new_size) };
            };
            if ARENA
                .chunks()
                .resize_in_place(offset, layout.size(), new_size)
            {
                return ptr;
            }
            // SAFETY: `new_size` with the old alignment is a valid layout (the caller's
            // contract); the old block is live for `layout.size()` bytes and the new one for
            // `new_size`, so copying the smaller stays in both, and they do not overlap.
            unsafe {
                let new_layout = Layout::from_size_align_unchecked(new_size, layout.align());
                let moved = self.alloc(new_layout);
                if !moved.is_null() {
                    std::ptr::copy_nonoverlapping(ptr, moved, layout.size().min(new_size));
                    self.dealloc(ptr, layout);
                }
                moved
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn layout(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).unwrap()
    }

    #[test]
    fn a_call_that_frees_everything_leaves_its_chunk_to_start_again() {
        let mut chunks = Chunks::new();
        let a = chunks.allocate(0, layout(100, 8)).unwrap();
        let b = chunks.allocate(0, layout(10, 1)).unwrap();
        assert_eq!((a, b), (0, 100));
        chunks.free(a, 100);
        chunks.free(b, 10);
        assert_eq!(chunks.allocate(0, layout(5, 1)), Some(0));
    }

    #[test]
    fn the_last_allocation_grows_in_place_and_others_move() {
        let mut chunks = Chunks::new();
        let a = chunks.allocate(0, layout(16, 8)).unwrap();
        assert!(chunks.resize_in_place(a, 16, 4096));
        let b = chunks.allocate(0, layout(16, 8)).unwrap();
        assert_eq!(b, 4096);
        assert!(
            !chunks.resize_in_place(a, 4096, 8192),
            "a is no longer last"
        );
        assert!(
            chunks.resize_in_place(a, 4096, 100),
            "shrinking never moves"
        );
        assert!(
            !chunks.resize_in_place(b, 16, CHUNK_BYTES),
            "past the chunk's end"
        );
    }

    #[test]
    fn a_kept_allocation_pins_only_its_chunk_and_the_system_takes_over_when_all_are_pinned() {
        let mut chunks = Chunks::new();
        // A plugin keeps one small allocation per chunk-full of traffic.
        for chunk in 0..CHUNKS {
            let kept = chunks.allocate(0, layout(8, 8)).unwrap();
            assert_eq!(kept / CHUNK_BYTES, chunk);
            let call = chunks.allocate(0, layout(CHUNK_BYTES - 8, 1)).unwrap();
            assert_eq!(call / CHUNK_BYTES, chunk);
        }
        assert_eq!(chunks.allocate(0, layout(64, 8)), None);
        assert_eq!(chunks.allocate(0, layout(CHUNK_BYTES + 1, 1)), None);
    }

    #[test]
    fn alignment_follows_the_real_address() {
        let mut chunks = Chunks::new();
        let base = 0x1003;
        let a = chunks.allocate(base, layout(1, 1)).unwrap();
        let b = chunks.allocate(base, layout(8, 64)).unwrap();
        assert_eq!(a, 0);
        assert_eq!((base + b) % 64, 0);
    }

    proptest! {
        /// Random allocations, frees and resizes: live blocks never overlap, stay inside
        /// their chunk, and are aligned.
        #[test]
        fn live_blocks_never_overlap(
            steps in proptest::collection::vec((0u8..3, 1usize..20_000, 0u32..7, any::<prop::sample::Index>()), 1..400),
        ) {
            let base = 0x10_0000usize;
            let mut chunks = Chunks::new();
            let mut live: Vec<(usize, usize)> = Vec::new();
            for (operation, size, align_log, pick) in steps {
                match operation {
                    0 => {
                        let align = 1usize << align_log;
                        if let Some(offset) = chunks.allocate(base, layout(size, align)) {
                            prop_assert_eq!((base + offset) % align, 0);
                            prop_assert_eq!(offset / CHUNK_BYTES, (offset + size - 1) / CHUNK_BYTES);
                            for &(other, other_size) in &live {
                                prop_assert!(offset + size <= other || other + other_size <= offset);
                            }
                            live.push((offset, size));
                        }
                    }
                    1 if !live.is_empty() => {
                        let (offset, size) = live.swap_remove(pick.index(live.len()));
                        chunks.free(offset, size);
                    }
                    2 if !live.is_empty() => {
                        let index = pick.index(live.len());
                        let (offset, old) = live[index];
                        if chunks.resize_in_place(offset, old, size) {
                            prop_assert_eq!(offset / CHUNK_BYTES, (offset + size - 1) / CHUNK_BYTES);
                            for (other_index, &(other, other_size)) in live.iter().enumerate() {
                                prop_assert!(other_index == index || offset + size <= other || other + other_size <= offset);
                            }
                            live[index].1 = size;
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}
