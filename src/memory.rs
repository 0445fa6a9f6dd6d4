//! The server's allocator is mimalloc (chosen in `main.rs`). It hands freed memory back to the
//! system lazily, as later allocations come, so a server that goes quiet right after a burst
//! (the start-up load of the hand-out index, a large import) would keep it resident. Purging at
//! every free instead cost a quarter of the import rate.

/// Returns the memory freed so far to the system, now.
pub fn give_back() {
    // SAFETY: a plain call into the allocator, valid at any time on any thread; where mimalloc
    // is linked but not the global allocator (tests, benches) it has little to do.
    unsafe { libmimalloc_sys::mi_collect(true) }
}
