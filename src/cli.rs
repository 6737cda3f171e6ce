//! The `authgate` command.

use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::auth::password::hash_blocking;
use crate::config::{Config, SessionsBackend, UsersBackend};
use crate::gateway::Gateway;
use crate::observe::audit::{Audit, AuditEvent, Record};
use crate::users::{self, User, UserStoreError};

#[derive(Debug, Parser)]
#[command(
    name = "authgate",
    version,
    about = "A reverse-proxy authentication gateway"
)]
pub struct Cli {
    /// The configuration file.
    #[arg(
        short = 'c',
        long = "config",
        global = true,
        env = "AUTHGATE_CONFIG",
        default_value = "gateway.toml"
    )]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway (the default).
    Serve(ServeArgs),
    /// Validate the configuration and print a summary.
    CheckConfig,
    /// Make the running gateway reload its configuration (SIGHUP through
    /// the pid file), after validating the file here.
    Reload,
    /// Read a password from stdin and print its bcrypt hash.
    HashPassword {
        /// bcrypt cost (default: `[users] bcrypt_cost`, else 12).
        #[arg(long)]
        cost: Option<u32>,
    },
    /// Manage users in the configured user store.
    #[command(subcommand)]
    Users(UsersCommand),
    /// Inspect and revoke refresh-token sessions (Redis backend).
    #[command(subcommand)]
    Sessions(SessionsCommand),
}

#[derive(Debug, Default, clap::Args)]
pub struct ServeArgs {
    /// Development mode: no files, a memory store, a random secret and a
    /// `dev` user; loopback only.
    #[arg(long)]
    pub dev: bool,
    /// Listen address (overrides `[server] listen`).
    #[arg(long)]
    pub listen: Option<std::net::SocketAddr>,
}

#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Add a user.
    Add {
        username: String,
        #[arg(long)]
        email: Option<String>,
        #[arg(long = "role")]
        roles: Vec<String>,
        /// Read the password from stdin instead of prompting.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Change a user's password.
    Passwd {
        username: String,
        #[arg(long)]
        password_stdin: bool,
    },
    /// Delete a user.
    Del { username: String },
    /// List users.
    List,
    /// Create or upgrade the PostgreSQL schema (backend = "postgres").
    Migrate,
    /// A user's second factor (TOTP).
    #[command(subcommand)]
    Totp(TotpCommand),
}

#[derive(Debug, Subcommand)]
pub enum TotpCommand {
    /// Generate a secret, show it (URI and QR code), confirm a code, save it.
    Enroll { username: String },
    /// Remove a user's second factor.
    Remove { username: String },
}

#[derive(Debug, Subcommand)]
pub enum SessionsCommand {
    /// List a user's sessions (refresh-token families).
    List { username: String },
    /// Revoke every session of a user ("log out everywhere").
    Revoke { username: String },
}

pub fn main() -> ExitCode {
    // `.env` first: it may set AUTHGATE_CONFIG and the secrets.
    let _ = dotenvy::dotenv();
    let cli = Cli::parse();
    let result = run(cli);
    // The log's writer gathers lines for a moment: the last ones are
    // written before the process ends (and before its error, in order).
    crate::observe::logs::flush(std::time::Duration::from_secs(2));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// One worker (`worker_threads = 1`, or one CPU to run on) gets tokio's
/// current-thread scheduler: the same work without the multi-thread
/// scheduler's queues and cross-thread wakeups (bench/results/history.md, second round).
fn runtime(worker_threads: Option<usize>) -> anyhow::Result<tokio::runtime::Runtime> {
    let workers = worker_threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(workers);
        builder
    };
    builder.enable_all();
    if let Some(&release) = RELEASE_MEMORY.get() {
        builder.on_thread_park(move || release_memory_if_due(release));
    }
    Ok(builder.build()?)
}

/// Set by the binary: gives freed memory back to the system (its
/// allocator's collect, and the C library's trim for C code's memory).
/// Run by each worker thread as it goes idle, at most once a second: an
/// allocator returns freed pages lazily, when it allocates again, and a
/// gateway idling with 10,000 open connections does not, so what a burst
/// of requests freed would otherwise stay resident.
pub static RELEASE_MEMORY: std::sync::OnceLock<fn()> = std::sync::OnceLock::new();

fn release_memory_if_due(release: fn()) {
    const EVERY: std::time::Duration = std::time::Duration::from_secs(1);
    thread_local!(static LAST: std::cell::Cell<Option<std::time::Instant>> = const { std::cell::Cell::new(None) });
    let now = std::time::Instant::now();
    if LAST
        .get()
        .is_some_and(|last| now.duration_since(last) < EVERY)
    {
        return;
    }
    LAST.set(Some(now));
    release();
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let command = cli.command.unwrap_or(Command::Serve(ServeArgs::default()));
    match command {
        Command::Serve(args) if args.dev => {
            let listen = args.listen.unwrap_or_else(|| {
                crate::config::defaults::LISTEN
                    .parse()
                    .expect("valid default")
            });
            crate::dev::prepare_secret();
            runtime(None)?.block_on(crate::dev::serve(listen))
        }
        Command::Serve(args) => {
            let mut config = Config::load(&cli.config)?;
            if let Some(listen) = args.listen {
                config.server.listen = listen;
            }
            crate::observe::logs::init(config.server.log_format, config.access_log.log_queue());
            runtime(config.server.worker_threads)?.block_on(serve(config))
        }
        Command::CheckConfig => check_config(&cli.config),
        Command::Reload => reload(&cli.config),
        Command::HashPassword { cost } => {
            let cost = match cost {
                Some(c) => c,
                None => Config::load(&cli.config)
                    .map_or(crate::config::defaults::BCRYPT_COST, |c| {
                        c.users.bcrypt_cost
                    }),
            };
            let password = read_password(true, false)?;
            println!("{}", hash_blocking(&password, cost)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Users(command) => {
            let config = Config::load(&cli.config)?;
            runtime(Some(1))?.block_on(users_command(&config, command))
        }
        Command::Sessions(command) => {
            let config = Config::load(&cli.config)?;
            runtime(Some(1))?.block_on(sessions_command(&config, command))
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<ExitCode> {
    let listen = config.server.listen;
    let pid_file = config.server.pid_file.clone();
    let shared = crate::gateway::shared(Gateway::build(config).await?);
    let gw = shared.load_full();
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
    tracing::info!(event = "listening", address = %listener.local_addr()?, scheme = gw.scheme, routes = gw.routes.iter().count());
    if let Some(admin) = gw.config.admin.listen {
        let admin_listener = crate::admin::bind(admin).await?;
        tracing::info!(event = "admin_listening", address = %admin_listener.local_addr()?);
        crate::admin::spawn(admin_listener, shared.clone());
    }
    if let Some(redirect) = gw.config.server.tls.as_ref().and_then(|t| t.redirect_http) {
        let plain = tokio::net::TcpListener::bind(redirect).await.map_err(|e| {
            anyhow::anyhow!("cannot listen on {redirect} (server.tls.redirect_http): {e}")
        })?;
        tracing::info!(event = "redirect_listening", address = %plain.local_addr()?);
        tokio::spawn(crate::tls::redirect_to_https(
            plain,
            listener.local_addr()?.port(),
        ));
    }
    let _pid = pid_file.map(PidFile::write);
    drop(gw);
    spawn_reload_on_hangup(shared.clone());
    crate::server::serve(shared.clone(), listener, crate::server::shutdown_signal()).await?;
    // The log writers gather lines for a moment: the last ones are written
    // before the process ends.
    let gw = shared.load();
    gw.access_log.flush();
    gw.audit.flush();
    Ok(ExitCode::SUCCESS)
}

/// The pid file `authgate reload` signals through; removed on exit.
struct PidFile(Option<PathBuf>);

impl PidFile {
    fn write(path: PathBuf) -> PidFile {
        match std::fs::write(&path, format!("{}\n", std::process::id())) {
            Ok(()) => PidFile(Some(path)),
            Err(e) => {
                tracing::warn!(event = "pid_file_failed", path = %path.display(), error = %e, "`authgate reload` will not find this process");
                PidFile(None)
            }
        }
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        if let Some(path) = &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn reload(path: &Path) -> anyhow::Result<ExitCode> {
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{e}\nnot reloaded: the running gateway keeps its configuration");
            return Ok(ExitCode::FAILURE);
        }
    };
    let Some(pid_file) = &config.server.pid_file else {
        anyhow::bail!("[server] pid_file is empty: no way to find the running gateway");
    };
    let text = std::fs::read_to_string(pid_file).map_err(|e| {
        anyhow::anyhow!(
            "cannot read {} ({e}): is authgate running with this configuration?",
            pid_file.display()
        )
    })?;
    let pid: i32 = text
        .trim()
        .parse()
        .map_err(|_| anyhow::anyhow!("{} holds no pid", pid_file.display()))?;
    // SAFETY: kill(2) with a pid read from our own pid file and a constant signal.
    if unsafe { libc::kill(pid, libc::SIGHUP) } != 0 {
        anyhow::bail!(
            "cannot signal pid {pid}: {}",
            std::io::Error::last_os_error()
        );
    }
    println!("sent SIGHUP to authgate (pid {pid}); it logs the outcome (event config_reloaded or config_reload_failed)");
    Ok(ExitCode::SUCCESS)
}

/// SIGHUP re-reads gateway.toml (routes, identity, cookies, JWT keys, TLS
/// material), the users file and the certificate.
fn spawn_reload_on_hangup(shared: crate::gateway::SharedGateway) {
    tokio::spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            return;
        };
        while hup.recv().await.is_some() {
            tracing::info!(event = "sighup", "reloading the configuration");
            // A success is logged by `reload`, with the settings that
            // wait for a restart.
            if let Err(e) = crate::gateway::reload(&shared).await {
                tracing::error!(event = "config_reload_failed", error = %format!("{e:#}"), "configuration not reloaded; keeping the running one");
                if let Some(tls) = &shared.load().tls {
                    tls.reload_logged();
                }
            }
            let gw = shared.load();
            gw.users.reload();
            // logrotate renamed the files: the next lines go to new ones.
            gw.access_log.reopen();
            gw.audit.reopen();
        }
    });
}

fn check_config(path: &Path) -> anyhow::Result<ExitCode> {
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let secrets =
        match crate::gateway::FilesAndSecrets::read(&config, &crate::clock::Clock::system()) {
            Ok(secrets) => secrets,
            Err(e) => {
                eprintln!("{e}");
                return Ok(ExitCode::FAILURE);
            }
        };
    // The database's rows are checked as they are read, at login; the
    // file is checked whole, as `serve` does before it starts.
    let totp_env = &config.users.totp_key_env;
    let second_factors = match config.users.backend {
        UsersBackend::File => match users::file::read_users_file(&config.users.path) {
            Ok(users) => {
                let mut users: Vec<User> = users.into_values().collect();
                users.sort_by(|a, b| a.username.cmp(&b.username));
                Some(users)
            }
            Err(e) => {
                eprintln!("{e}");
                return Ok(ExitCode::FAILURE);
            }
        },
        // Second factors in the database are checked when it answers.
        UsersBackend::Postgres => match runtime(Some(1))?
            .block_on(async { anyhow::Ok(users::open(&config).await?.list().await?) })
        {
            Ok(users) => Some(users),
            Err(e) => {
                println!("second factors: not checked ({e:#})");
                None
            }
        },
    };
    if let Some(Err(message)) = second_factors
        .as_ref()
        .map(|users| crate::totp::check_users(users, secrets.totp.as_ref(), &totp_env.value))
    {
        let problem = totp_env.problem(message);
        eprintln!(
            "{}",
            crate::config::ConfigError {
                file: config.file.clone(),
                problems: vec![problem],
            }
        );
        return Ok(ExitCode::FAILURE);
    }
    println!("configuration {} is valid", path.display());
    match &config.server.tls {
        Some(tls) => {
            println!(
                "listen: https://{} (TLS {}+)",
                config.server.listen,
                tls.min_version.as_str()
            );
            if let Some(plain) = tls.redirect_http {
                println!("redirect: http://{plain} -> https");
            }
        }
        None => println!("listen: http://{}", config.server.listen),
    }
    println!(
        "jwt: {:?}, access {}s, refresh {}s",
        config.jwt.algorithm,
        config.jwt.access_ttl.as_secs(),
        config.jwt.refresh_ttl.as_secs()
    );
    if let Some(assertion) = &config.identity.assertion {
        println!(
            "identity assertion: {} signed with {}, valid {}s",
            config.identity.assertion_header,
            assertion.key.value.display(),
            assertion.ttl.as_secs()
        );
    }
    println!(
        "users: {:?}; sessions: {:?}",
        config.users.backend, config.sessions.backend
    );
    println!("routes:");
    for route in &config.routes {
        println!(
            "  {}{} -> {} (auth {:?}{}{}{}{}{})",
            route.host.as_deref().unwrap_or(""),
            route.prefix,
            route
                .upstream
                .as_ref()
                .map_or("(forward auth only)".to_string(), ToString::to_string),
            route.auth,
            if route.strip_prefix {
                ", strip_prefix"
            } else {
                ""
            },
            if route.upstream_http2 { ", http2" } else { "" },
            if route.upstream_ca.is_some() {
                ", own CA"
            } else {
                ""
            },
            if route.websocket {
                ""
            } else {
                ", no websocket"
            },
            if route.roles.is_empty() {
                String::new()
            } else {
                format!(", roles {}", route.roles.join("|"))
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Reads a password: from a terminal without echo, else from stdin with
/// one trailing newline stripped.
fn read_password(from_stdin: bool, confirm: bool) -> anyhow::Result<String> {
    let stdin = std::io::stdin();
    let password = if stdin.is_terminal() {
        let first = rpassword::prompt_password("Password: ")?;
        if confirm && rpassword::prompt_password("Repeat: ")? != first {
            anyhow::bail!("the passwords differ");
        }
        first
    } else if from_stdin {
        let mut text = String::new();
        stdin.lock().read_to_string(&mut text)?;
        let text = text
            .strip_suffix("\r\n")
            .or_else(|| text.strip_suffix('\n'))
            .unwrap_or(&text)
            .to_string();
        text
    } else {
        anyhow::bail!(
            "stdin is not a terminal: pass --password-stdin to read the password from it"
        );
    };
    if password.is_empty() {
        anyhow::bail!("the password is empty");
    }
    Ok(password)
}

async fn users_command(config: &Config, command: UsersCommand) -> anyhow::Result<ExitCode> {
    if let UsersCommand::Migrate = command {
        if config.users.backend != UsersBackend::Postgres {
            anyhow::bail!(
                "users.backend is \"file\": only the postgres backend has a schema to migrate"
            );
        }
        println!("{}", users::postgres::migrate(config).await?);
        return Ok(ExitCode::SUCCESS);
    }
    if let UsersCommand::Totp(command) = command {
        return totp_command(config, command).await;
    }
    let store = users::open(config).await?;
    let audit = Audit::open_for_cli(&config.audit)?;
    if !matches!(command, UsersCommand::List) {
        // Before any password prompt.
        store.writable()?;
    }
    let cost = config.users.bcrypt_cost;
    let hash = |password: String| async move {
        tokio::task::spawn_blocking(move || hash_blocking(&password, cost)).await?
    };
    let result = match command {
        UsersCommand::Add {
            username,
            email,
            roles,
            password_stdin,
        } => {
            let mut user = User {
                username: username.clone(),
                email,
                roles,
                ..User::default()
            };
            // Before the password prompt, which would be typed in vain.
            users::validate_user(&user)?;
            let password = read_password(password_stdin, true)?;
            user.password_hash = hash(password).await?;
            store.add(user).await.map(|()| {
                audit.record(Record::new(AuditEvent::UserCreated).user(&username));
                println!("added user {username}");
            })
        }
        UsersCommand::Passwd {
            username,
            password_stdin,
        } => {
            if store.find(&username).await?.is_none() {
                return Err(UserStoreError::NotFound(username).into());
            }
            let password = read_password(password_stdin, true)?;
            let hash = hash(password).await?;
            store.set_password(&username, &hash).await.map(|()| {
                audit.record(
                    Record::new(AuditEvent::UserChanged)
                        .user(&username)
                        .reason("password"),
                );
                println!("changed the password of {username}");
            })
        }
        UsersCommand::Del { username } => store.delete(&username).await.map(|()| {
            audit.record(Record::new(AuditEvent::UserDeleted).user(&username));
            println!("deleted user {username}");
        }),
        UsersCommand::List => store.list().await.map(|users| {
            for user in users {
                println!(
                    "{}\t{}\t{}{}{}",
                    user.username,
                    user.email.as_deref().unwrap_or("-"),
                    user.roles.join(","),
                    if user.disabled { "\tdisabled" } else { "" },
                    if user.totp.is_some() { "\ttotp" } else { "" }
                );
            }
        }),
        UsersCommand::Migrate | UsersCommand::Totp(_) => {
            unreachable!("handled before the store is opened")
        }
    };
    audit.flush();
    result?;
    Ok(ExitCode::SUCCESS)
}

/// `users totp enroll` and `users totp remove`.
async fn totp_command(config: &Config, command: TotpCommand) -> anyhow::Result<ExitCode> {
    if let (UsersBackend::Postgres, Some(table)) =
        (config.users.backend, &config.users.postgres.table)
    {
        anyhow::bail!(
            "users.table maps the existing table {table}, which has no place for a second factor: \
             TOTP needs authgate's own table (users.table unset, `authgate users migrate`)"
        );
    }
    let store = users::open(config).await?;
    store.writable()?;
    let audit = Audit::open_for_cli(&config.audit)?;
    match command {
        TotpCommand::Enroll { username } => {
            let env = &config.users.totp_key_env;
            let key = crate::totp::TotpKey::from_env(env)
                .map_err(|p| anyhow::anyhow!("{}", p.message))?
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "environment variable {} (or its .env entry) is not set: it must hold the key \
                         second-factor secrets are sealed with, 32 random bytes in base64 \
                         (e.g. `head -c 32 /dev/urandom | base64`)",
                        env.value
                    )
                })?;
            let user = store
                .find(&username)
                .await?
                .ok_or_else(|| UserStoreError::NotFound(username.clone()))?;
            if user.totp.is_some() {
                anyhow::bail!(
                    "{username} already has a second factor: remove it first (`authgate users totp remove {username}`)"
                );
            }
            let secret = crate::totp::Secret::generate();
            let uri = secret.uri(&config.jwt.issuer, &username);
            if let Some(qr) = crate::totp::qr_text(&uri) {
                println!("{qr}");
            }
            println!("{uri}");
            use std::io::Write;
            std::io::stdout().flush()?;
            let code = read_code()?;
            let now = crate::clock::Clock::system().unix_secs();
            let Some(step) = secret.verify(&code, now) else {
                anyhow::bail!(
                    "the code does not match: nothing saved (is the phone's clock right?); run enroll again"
                );
            };
            // The confirming code was typed where others may see it: it is
            // used up before the secret is saved, as a login would use it.
            // The memory store lives inside the running gateway, out of
            // reach from here (docs/second-factor.md says so).
            if config.sessions.backend == SessionsBackend::Redis {
                let used: anyhow::Result<bool> = async {
                    let sessions =
                        crate::sessions::open(&config.sessions, crate::clock::Clock::system())
                            .await?;
                    Ok(
                        crate::auth::second_factor::use_step(sessions.as_ref(), &username, step)
                            .await?,
                    )
                }
                .await;
                if let Err(e) = used {
                    anyhow::bail!(
                        "the session store could not record the code as used ({e}): nothing saved; \
                         run enroll again once it answers"
                    );
                }
            }
            store
                .set_totp(&username, Some(&key.seal(&username, &secret)))
                .await?;
            audit.record(Record::new(AuditEvent::TotpEnrolled).user(&username));
            println!("enrolled a second factor for {username}");
        }
        TotpCommand::Remove { username } => {
            store.set_totp(&username, None).await?;
            audit.record(Record::new(AuditEvent::TotpRemoved).user(&username));
            println!("removed the second factor of {username}");
        }
    }
    audit.flush();
    Ok(ExitCode::SUCCESS)
}

/// The confirming code: asked for on a terminal, else one line of stdin.
fn read_code() -> anyhow::Result<String> {
    use std::io::BufRead;
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("Code from the authenticator app: ");
    }
    let mut line = String::new();
    stdin.lock().read_line(&mut line)?;
    let code = line.trim().to_string();
    if code.is_empty() {
        anyhow::bail!("no code given: nothing saved");
    }
    Ok(code)
}

async fn sessions_command(config: &Config, command: SessionsCommand) -> anyhow::Result<ExitCode> {
    if config.sessions.backend == SessionsBackend::Memory {
        eprintln!(
            "sessions.backend is \"memory\": the sessions live inside the running authgate process \
             and cannot be reached from here (restarting it ends them all). Use the redis backend \
             to manage sessions from the command line."
        );
        return Ok(ExitCode::FAILURE);
    }
    let store = crate::sessions::open(&config.sessions, crate::clock::Clock::system()).await?;
    match command {
        SessionsCommand::List { username } => {
            let families = store.list_user(&username).await?;
            if families.is_empty() {
                println!("no sessions for {username}");
            }
            for f in families {
                println!(
                    "{}\tcreated {}\tlast used {}{}",
                    f.family,
                    format_ms(f.created_ms),
                    format_ms(f.last_used_ms),
                    if f.revoked { "\trevoked" } else { "" }
                );
            }
        }
        SessionsCommand::Revoke { username } => {
            let n = store.revoke_user(&username).await?;
            let audit = Audit::open_for_cli(&config.audit)?;
            audit.record(
                Record::new(AuditEvent::SessionsRevoked)
                    .user(&username)
                    .reason(&format!("{n} session(s)")),
            );
            audit.flush();
            println!("revoked {n} session(s) of {username}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn format_ms(ms: u64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(time).to_string()
}
