/// mimalloc instead of glibc's malloc: the proxy allocates and frees a few
/// dozen small objects per request, and an idle connection keeps hyper's
/// buffers. mimalloc is faster on the first and touches fewer pages for the
/// second, and it returns freed memory to the system when connections close
/// (README "Performance").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    authgate::cli::main()
}
