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

/// The global allocator with a per-thread count of the bytes it holds, so a script call can be
/// stopped when what it allocated passes its budget (see `scripting::engine`). Counting costs
/// one thread-local add per allocation. Where it is not the global allocator (unit tests,
/// benches) the count stays at zero and no budget ever trips.
pub struct Counting<A>(pub A);

thread_local! {
    /// Bytes allocated minus bytes freed on this thread. A block freed on another thread than
    /// the one that allocated it skews both counts; only differences over one call are read.
    static HELD: std::cell::Cell<isize> = const { std::cell::Cell::new(0) };
}

/// Net bytes this thread has allocated so far (see [`Counting`]).
pub fn thread_held() -> isize {
    HELD.with(|held| held.get())
}

fn add_held(delta: isize) {
    // `try_with`: the count is a plain `Cell` with no destructor, but a thread's last frees can
    // still run while its locals are torn down.
    let _ = HELD.try_with(|held| held.set(held.get().wrapping_add(delta)));
}

// SAFETY: every method forwards to the wrapped allocator unchanged; the count has no effect on
// the blocks handed out.
unsafe impl<A: std::alloc::GlobalAlloc> std::alloc::GlobalAlloc for Counting<A> {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        // SAFETY: the caller's contract is passed on unchanged.
        let ptr = unsafe { self.0.alloc(layout) };
        if !ptr.is_null() {
            add_held(layout.size() as isize);
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        // SAFETY: as above.
        let ptr = unsafe { self.0.alloc_zeroed(layout) };
        if !ptr.is_null() {
            add_held(layout.size() as isize);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: as above.
        unsafe { self.0.dealloc(ptr, layout) };
        add_held(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as above.
        let moved = unsafe { self.0.realloc(ptr, layout, new_size) };
        if !moved.is_null() {
            add_held(new_size as isize - layout.size() as isize);
        }
        moved
    }
}
