//! `syncd`, the command line.

mod cli;
mod cmd;

use std::process::ExitCode;

// A sync allocates per record and per field (CDM maps, base snapshots,
// cache entries) on several runtime threads; glibc's malloc spent a fifth of
// a lookup benchmark in malloc, free and consolidation. See BENCHMARKS.md.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    no_transparent_huge_pages();
    cli::main()
}

/// mimalloc asks Linux for transparent huge pages, and each 2 MiB region it
/// takes afresh is then zeroed in full on its first touch: a fifth of
/// `bench sync`'s samples in syncd were the kernel clearing pages. A page of
/// records is allocated and freed again and again, so huge pages buy
/// nothing here; without them `bench sync` spends 0.8 -> 0.3 s in the
/// kernel and peaks at 138 instead of 175 MiB.
fn no_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE takes plain integers and only sets a flag
    // of this process; a kernel without it returns an error we can ignore.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}
