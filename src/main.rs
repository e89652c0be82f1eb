use std::process::ExitCode;

// A sync allocates per record and per field (CDM maps, base snapshots,
// cache entries) on several runtime threads; glibc's malloc spent a fifth of
// a lookup benchmark in malloc, free and consolidation. See BENCHMARKS.md.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    syncd::cli::main()
}
