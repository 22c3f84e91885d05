//! What every fuzz target shares: an allocator that refuses any single allocation larger than
//! the input warrants, so a decoder that sizes a buffer by a length field it was sent (before
//! the bytes arrive) fails the run instead of passing unnoticed.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Largest single allocation allowed while the current input runs.
static LIMIT: AtomicUsize = AtomicUsize::new(usize::MAX);

/// Allocations up to this size are always allowed, whatever the input.
const BASE: usize = 1 << 20;
/// Beyond that, this many bytes per input byte.
const PER_INPUT_BYTE: usize = 64;

pub struct Bounded;

// SAFETY: forwards to the system allocator; refusing an allocation by returning null is
// allowed by `GlobalAlloc`, and the standard library then aborts with
// "memory allocation of N bytes failed", which libFuzzer reports as a crash with the input.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Bounded {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > LIMIT.load(Ordering::Relaxed) {
            return std::ptr::null_mut();
        }
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() > LIMIT.load(Ordering::Relaxed) {
            return std::ptr::null_mut();
        }
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > LIMIT.load(Ordering::Relaxed) {
            return std::ptr::null_mut();
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Runs `target` on `data` with allocations bounded by the input's size.
pub fn run(target: fn(&[u8]), data: &[u8]) {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        // A panic's report (its backtrace) allocates freely: the bound is for the decoders.
        let report = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            LIMIT.store(usize::MAX, Ordering::Relaxed);
            report(info);
        }));
    });
    let limit = BASE.saturating_add(data.len().saturating_mul(PER_INPUT_BYTE));
    LIMIT.store(limit, Ordering::Relaxed);
    target(data);
    LIMIT.store(usize::MAX, Ordering::Relaxed);
}

/// A fuzz target for the harness `$name` in `dormouse_proxy::fuzzing`.
#[macro_export]
macro_rules! target {
    ($name:ident) => {
        #[global_allocator]
        static ALLOC: dormouse_fuzz::Bounded = dormouse_fuzz::Bounded;

        libfuzzer_sys::fuzz_target!(|data: &[u8]| {
            dormouse_fuzz::run(dormouse_proxy::fuzzing::$name, data);
        });
    };
}
