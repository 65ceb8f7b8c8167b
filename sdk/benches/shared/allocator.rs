//! The global allocator of a bench binary: mimalloc with the `mimalloc`
//! feature, the system allocator (glibc here) without. Included by every
//! bench with `#[path]`, since each bench is a binary of its own and must
//! declare its allocator itself.

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The global allocator of this build, for the bench's headings.
pub const ALLOCATOR: &str = if cfg!(feature = "mimalloc") {
    "mimalloc"
} else {
    "the system allocator (glibc)"
};
