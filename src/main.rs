// mimalloc over glibc's malloc: fewer instructions per request on the proxy
// path, and memory freed by closed connections goes back to the system
// (glibc keeps it in its arenas). See bench/results/history.md (second round).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    // No transparent huge pages: a 2 MiB page per sparsely used region
    // costs more resident memory than the TLB misses it saves (measured:
    // no throughput change, bench/results/history.md, third round).
    // SAFETY: a prctl on this process, with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    let _ = authgate::cli::RELEASE_MEMORY.set(|| {
        // Forced: purges free pages now rather than after mimalloc's delay,
        // which would only run on a later allocation.
        // SAFETY: collects the calling thread's heap; no pointer is passed.
        unsafe { libmimalloc_sys::mi_collect(true) }
        // aws-lc (the TLS crypto, C) allocates with the C library's malloc,
        // which keeps what a flood of handshakes freed: 18-25 MiB more than
        // before one at twice the handshakes a core takes, against 4 with
        // the trim (bench/results/history.md, ninth round).
        // SAFETY: glibc's malloc_trim takes no pointer and only returns
        // free memory to the system.
        #[cfg(target_env = "gnu")]
        unsafe {
            libc::malloc_trim(0);
        }
    });
    authgate::cli::main()
}
