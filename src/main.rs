// mimalloc over glibc's malloc: fewer instructions per request on the proxy
// path, and memory freed by closed connections goes back to the system
// (glibc keeps it in its arenas). See README "Performance".
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    authgate::cli::main()
}
