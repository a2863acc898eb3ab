//! The process's allocator: mimalloc, told to keep the memory it frees.
//!
//! A price crash is decided in one tick that allocates and frees a lot at once (sled
//! copies a page per write, every decision builds a PSBT). Under glibc's malloc about
//! half of a profile around such a tick (it also took in the bench's teardown) was
//! malloc's free lists (`malloc_consolidate`, `unlink_chunk`) beside sled's page cache
//! of a large book; under mimalloc with its default purging,
//! memory freed while the service was quiet had gone back to the kernel, and the tick
//! spent a fifth of its engine thread faulting zeroed pages back in. Kept, a tick
//! liquidating 10,000 of a million loans took about 0.5 s instead of 0.75-0.9 s
//! (`cargo bench --bench engine`, mass breach). The price: the process's resident size
//! stays at its high-water mark (freed memory is reused, not returned).
//!
//! Each binary that runs the service's code declares the allocator and calls
//! [`configure`] first thing in `main` (src/main.rs; the in-process benches do the
//! same, so they measure what the service runs):
//!
//! ```ignore
//! #[global_allocator]
//! static ALLOCATOR: btc_escrow::alloc::Allocator = btc_escrow::alloc::ALLOCATOR;
//! ```

/// The allocator type to declare as `#[global_allocator]`.
pub type Allocator = mimalloc::MiMalloc;

/// Its value.
pub const ALLOCATOR: Allocator = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc.h's `mi_option_e` (the Rust bindings do not
/// name it; a test checks its default, 1,000 ms in the vendored options.c, at this
/// number).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Never purge freed memory (see the module doc). Call it at the start of `main`,
/// before any thread is started: mimalloc's option setters are not thread safe.
pub fn configure() {
    // SAFETY: a plain option store in mimalloc, made before other threads exist.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The option number is the purge delay: mimalloc's default for it is 1,000 (ms;
    /// mimalloc.h's comment says 10, options.c sets 1,000).
    /// Fails if an upgrade renumbers mimalloc's options (or MIMALLOC_PURGE_DELAY is
    /// set in the test's environment).
    #[test]
    fn the_option_number_is_the_purge_delay() {
        // SAFETY: reads an option.
        let default = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        assert_eq!(default, 1_000, "mimalloc option {MI_OPTION_PURGE_DELAY}");
        configure();
        // SAFETY: reads an option.
        let set = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        assert_eq!(set, -1, "freed memory is never purged once configured");
    }
}
