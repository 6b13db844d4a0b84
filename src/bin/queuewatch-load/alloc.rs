//! The counting allocator: the system allocator, counting allocations and
//! bytes while counting is switched on (never during timed passes, which pay
//! one relaxed load per call for it).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static ALLOCATED_BYTES: AtomicU64 = AtomicU64::new(0);
static FREES: AtomicU64 = AtomicU64::new(0);
static FREED_BYTES: AtomicU64 = AtomicU64::new(0);

/// The system allocator, counting calls and bytes while `COUNTING` is on.
/// A `realloc` counts as one allocation of the new size and a free of the old.
pub struct CountingAllocator;

unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
            ALLOCATED_BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        }
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
            ALLOCATED_BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        }
        System.alloc_zeroed(layout)
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        if COUNTING.load(Ordering::Relaxed) {
            FREES.fetch_add(1, Ordering::Relaxed);
            FREED_BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        }
        System.dealloc(pointer, layout)
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
            ALLOCATED_BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
            FREES.fetch_add(1, Ordering::Relaxed);
            FREED_BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        }
        System.realloc(pointer, layout, new_size)
    }
}

/// What was allocated and freed between `start` and `stop`.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllocCounts {
    pub allocations: u64,
    pub allocated_bytes: u64,
    pub frees: u64,
    pub freed_bytes: u64,
}

impl AllocCounts {
    fn read() -> AllocCounts {
        AllocCounts {
            allocations: ALLOCATIONS.load(Ordering::Relaxed),
            allocated_bytes: ALLOCATED_BYTES.load(Ordering::Relaxed),
            frees: FREES.load(Ordering::Relaxed),
            freed_bytes: FREED_BYTES.load(Ordering::Relaxed),
        }
    }

    /// Switches counting on and returns the counts so far.
    pub fn start() -> AllocCounts {
        let counts = AllocCounts::read();
        COUNTING.store(true, Ordering::SeqCst);
        counts
    }

    /// Switches counting off and returns what happened since `self`.
    pub fn stop(self) -> AllocCounts {
        COUNTING.store(false, Ordering::SeqCst);
        let now = AllocCounts::read();
        AllocCounts {
            allocations: now.allocations - self.allocations,
            allocated_bytes: now.allocated_bytes - self.allocated_bytes,
            frees: now.frees - self.frees,
            freed_bytes: now.freed_bytes - self.freed_bytes,
        }
    }

    /// What happened since `self`, counting on.
    pub fn so_far(&self) -> AllocCounts {
        let now = AllocCounts::read();
        AllocCounts {
            allocations: now.allocations - self.allocations,
            allocated_bytes: now.allocated_bytes - self.allocated_bytes,
            frees: now.frees - self.frees,
            freed_bytes: now.freed_bytes - self.freed_bytes,
        }
    }

    pub fn live_bytes(&self) -> i64 {
        self.allocated_bytes as i64 - self.freed_bytes as i64
    }

    pub fn live_allocations(&self) -> i64 {
        // A realloc counts once on each side, so it cancels out.
        self.allocations as i64 - self.frees as i64
    }
}

pub fn count_allocations(work: impl FnOnce()) -> AllocCounts {
    let before = AllocCounts::start();
    work();
    before.stop()
}
