// mimalloc over glibc's malloc: fewer instructions per request on the proxy
// path, and memory freed by closed connections goes back to the system
// (glibc keeps it in its arenas). See README "Performance".
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `purge_delay` option (`mi_option_purge_delay`).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() -> std::process::ExitCode {
    // Give freed pages back at once instead of 10 ms later: a delayed purge
    // only runs when the process allocates again, and a gateway holding
    // 10,000 idle connections does not, so what a burst of requests freed
    // would stay resident. Pages in use are reused before they are freed,
    // so a steady load does not pay for it (README "Performance").
    // SAFETY: sets a process-wide option; mimalloc reads it on each purge.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
    // No transparent huge pages: a 2 MiB page per sparsely used region
    // costs more resident memory than the TLB misses it saves here.
    // SAFETY: a prctl on this process with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    authgate::cli::main()
}
