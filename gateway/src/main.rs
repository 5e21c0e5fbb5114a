//! `gateway`: the space gateway daemon and its tools.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use gateway::auth::{Grant, Minter};
use gateway::config::{Config, LogFormat};
use gateway::connect::{self, ConnectArgs};
use gateway::keys::SigningKey;
use gateway::server::{self, signing_key_path, verifying_key_path};

#[derive(Debug, Parser)]
#[command(
    name = "gateway",
    version,
    about = "The space gateway: links spaces' agents and routes users to them"
)]
struct Cli {
    /// Where generated keys and certificates are kept.
    #[arg(long, global = true, env = "GATEWAY_DATA_DIR")]
    data_dir: Option<PathBuf>,

    #[command(subcommand)]
    command: Option<Command>,

    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway (the default). Its settings may come before or after `run`.
    Run,
    /// Make a new Ed25519 key pair for signing and verifying tokens.
    Keygen {
        /// Directory for signing-key.pem and verify-key.pem (default: the data directory).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Replace existing key files.
        #[arg(long)]
        force: bool,
    },
    /// Mint a token (development and tests; production tokens come from the control plane).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Copy standard input and output over a space's SSH websocket (OpenSSH ProxyCommand).
    Connect(ConnectArgs),
}

#[derive(Debug, Clone, Default, clap::Args)]
struct RunArgs {
    /// TOML configuration file.
    #[arg(long, global = true, env = "GATEWAY_CONFIG")]
    config: Option<PathBuf>,
    /// Agent listener address: UDP for QUIC and TCP for TLS, on the same port.
    #[arg(long, global = true, env = "GATEWAY_AGENT_LISTEN")]
    agent_listen: Option<std::net::SocketAddr>,
    /// Public TLS listener address.
    #[arg(long, global = true, env = "GATEWAY_PUBLIC_LISTEN")]
    public_listen: Option<std::net::SocketAddr>,
    /// Public plain-HTTP listener address (TLS terminated by a load balancer).
    #[arg(long, global = true, env = "GATEWAY_PLAIN_LISTEN")]
    plain_listen: Option<std::net::SocketAddr>,
    /// The domain spaces are reached under.
    #[arg(long, global = true, env = "GATEWAY_DOMAIN")]
    domain: Option<String>,
    /// Admin listener address (metrics, health, admin API).
    #[arg(long, global = true, env = "GATEWAY_ADMIN_LISTEN")]
    admin_listen: Option<std::net::SocketAddr>,
    /// Log format: text or json.
    #[arg(long, global = true, env = "GATEWAY_LOG_FORMAT", value_parser = parse_log_format)]
    log_format: Option<LogFormat>,
    /// The deployment's public key (PEM) for verifying tokens.
    #[arg(long, global = true, env = "GATEWAY_PUBLIC_KEY")]
    public_key: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// A token for a space's agent.
    Agent {
        /// The space owner's user name.
        #[arg(long)]
        user: String,
        /// The space's name.
        #[arg(long)]
        space: String,
        /// The space's id (default: USER--SPACE).
        #[arg(long)]
        space_id: Option<String>,
        /// Lifetime, such as 30m, 12h or 7d (default: no expiry).
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<Duration>,
        /// The signing key (default: signing-key.pem in the data directory).
        #[arg(long)]
        key: Option<PathBuf>,
    },
    /// A token for the admin API.
    Admin {
        /// The operator's name, for logs.
        #[arg(long, default_value = "admin")]
        operator: String,
        /// Lifetime, such as 30m, 12h or 7d.
        #[arg(long, value_parser = parse_duration, default_value = "1h")]
        ttl: Duration,
        /// The signing key (default: signing-key.pem in the data directory).
        #[arg(long)]
        key: Option<PathBuf>,
    },
    /// A token for a person.
    User {
        /// The user's name.
        #[arg(long)]
        user: String,
        /// Spaces it reaches: USER--SPACE, USER--* or * (repeatable; default: USER--*).
        #[arg(long = "space")]
        spaces: Vec<String>,
        /// Services it reaches, comma separated: ssh, vnc, http, tcp (default: all).
        #[arg(long, value_delimiter = ',', value_parser = parse_grant)]
        service: Vec<Grant>,
        /// Lifetime, such as 30m, 12h or 7d.
        #[arg(long, value_parser = parse_duration, default_value = "12h")]
        ttl: Duration,
        /// The signing key (default: signing-key.pem in the data directory).
        #[arg(long)]
        key: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime can be built");
    let result = runtime.block_on(dispatch(cli));
    // `connect` may leave a read of standard input blocked in tokio's blocking pool;
    // waiting for it would keep the process alive after the session has ended.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            #[allow(clippy::print_stderr)]
            {
                eprintln!("gateway: {e:#}");
            }
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    // Every command finds the data directory the same way: flag, then the
    // configuration file, then the default.
    let config = config(cli.run.clone(), cli.data_dir.clone())?;
    agent_link::logging::init_with(match config.log.format {
        LogFormat::Text => agent_link::logging::LogFormat::Text,
        LogFormat::Json => agent_link::logging::LogFormat::Json,
    });
    let data_dir = config.data_dir.clone();
    let (args, dir) = (cli.run, cli.data_dir);
    let reload: server::Reload = Box::new(move || self::config(args.clone(), dir.clone()));
    match cli.command {
        None | Some(Command::Run) => server::run(config, reload).await,
        Some(Command::Keygen { out, force }) => keygen(out.unwrap_or(data_dir), force),
        Some(Command::Token(cmd)) => token(cmd, data_dir),
        Some(Command::Connect(args)) => connect::run(args, data_dir).await,
    }
}

fn config(args: RunArgs, data_dir: Option<PathBuf>) -> anyhow::Result<Config> {
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(dir) = data_dir {
        config.data_dir = dir;
    }
    if let Some(a) = args.agent_listen {
        config.agents.listen = a;
    }
    if let Some(a) = args.public_listen {
        config.public.listen = a;
    }
    if let Some(a) = args.plain_listen {
        config.public.plain_listen = Some(a);
    }
    if let Some(d) = args.domain {
        config.public.domain = d;
    }
    if let Some(k) = args.public_key {
        config.auth.public_key = Some(k);
    }
    if let Some(a) = args.admin_listen {
        config.admin.listen = a;
    }
    if let Some(f) = args.log_format {
        config.log.format = f;
    }
    Ok(config)
}

#[allow(clippy::print_stdout)]
fn keygen(out: PathBuf, force: bool) -> anyhow::Result<()> {
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let (private, public) = (signing_key_path(&out), verifying_key_path(&out));
    if !force && (private.exists() || public.exists()) {
        anyhow::bail!(
            "{} already holds a key pair; pass --force to replace it",
            out.display()
        );
    }
    let key = SigningKey::generate()?;
    key.save(&private)?;
    key.save_public(&public)?;
    println!(
        "signing key (keep it with the control plane): {}",
        private.display()
    );
    println!(
        "verifying key (give it to every gateway):     {}",
        public.display()
    );
    Ok(())
}

#[allow(clippy::print_stdout)]
fn token(cmd: TokenCommand, data_dir: PathBuf) -> anyhow::Result<()> {
    let load = |key: Option<PathBuf>| -> anyhow::Result<Minter> {
        let path = key.unwrap_or_else(|| signing_key_path(&data_dir));
        let key = SigningKey::load(&path).with_context(|| {
            format!(
                "no signing key; run `gateway keygen` or start the gateway once to make {}",
                path.display()
            )
        })?;
        Ok(Minter::new(key))
    };
    let token = match cmd {
        TokenCommand::Agent {
            user,
            space,
            space_id,
            ttl,
            key,
        } => {
            let id = space_id.unwrap_or_else(|| format!("{user}--{space}"));
            load(key)?.agent(&id, &user, &space, ttl)
        }
        TokenCommand::Admin { operator, ttl, key } => load(key)?.admin(&operator, ttl),
        TokenCommand::User {
            user,
            spaces,
            service,
            ttl,
            key,
        } => {
            let spaces = if spaces.is_empty() {
                vec![format!("{user}--*")]
            } else {
                spaces
            };
            let service = if service.is_empty() {
                Grant::ALL.to_vec()
            } else {
                service
            };
            load(key)?.user(&user, spaces, service, ttl)
        }
    };
    println!("{token}");
    Ok(())
}

fn parse_log_format(text: &str) -> Result<LogFormat, String> {
    match text {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        _ => Err(format!("{text:?} is not text or json")),
    }
}

fn parse_grant(text: &str) -> Result<Grant, String> {
    Grant::ALL
        .into_iter()
        .find(|g| g.as_str() == text)
        .ok_or_else(|| format!("{text:?} is not one of ssh, vnc, http, tcp"))
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let (digits, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 90s, 30m, 12h or 7d"))?;
    let secs = match unit {
        "s" | "" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => return Err(format!("{text:?}: the unit is s, m, h or d")),
    };
    Ok(Duration::from_secs(secs))
}
