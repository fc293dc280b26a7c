//! A global allocator that counts: how many allocations each kind of thread
//! made, and how many bytes are live. Test binaries that need it install it
//! with `#[global_allocator]`; the others keep the system allocator as is.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Whose allocations a thread's count towards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Threads nobody marked: the SFT's own threads.
    Other,
    /// A thread that marked itself to have its own work counted.
    Marked,
    /// A thread whose allocations are left out (e.g. a test's clients).
    Ignored,
}

pub struct Counting;

static LIVE_BYTES: AtomicI64 = AtomicI64::new(0);
static OTHER: AtomicU64 = AtomicU64::new(0);
static MARKED: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static SCOPE: Cell<Scope> = const { Cell::new(Scope::Other) };
}

/// Sets whose allocations the calling thread's count towards.
pub fn set_thread_scope(scope: Scope) {
    SCOPE.with(|s| s.set(scope));
}

/// Allocations (and reallocations) so far by threads of `scope`.
pub fn allocations(scope: Scope) -> u64 {
    match scope {
        Scope::Other => OTHER.load(Ordering::Relaxed),
        Scope::Marked => MARKED.load(Ordering::Relaxed),
        Scope::Ignored => 0,
    }
}

/// Bytes allocated and not yet freed, by every thread.
pub fn live_bytes() -> i64 {
    LIVE_BYTES.load(Ordering::Relaxed)
}

fn count() {
    // `try_with`: a thread's last deallocations may run after its locals are gone.
    match SCOPE.try_with(Cell::get).unwrap_or(Scope::Other) {
        Scope::Other => OTHER.fetch_add(1, Ordering::Relaxed),
        Scope::Marked => MARKED.fetch_add(1, Ordering::Relaxed),
        Scope::Ignored => 0,
    };
}

// SAFETY: every method forwards its arguments unchanged to `System`, which
// upholds `GlobalAlloc`'s contract; the bookkeeping touches only atomics and
// a const-initialised thread-local `Cell`, neither of which allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same layout the caller gave us, as `System::alloc` requires.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            count();
            LIVE_BYTES.fetch_add(layout.size() as i64, Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        // SAFETY: `ptr` came from `alloc`/`realloc` above, i.e. from `System`, with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as for `dealloc`; `new_size` is passed on as given.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            count();
            LIVE_BYTES.fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
        }
        new
    }
}
