//! The `roomcast` command line: `serve`, `token`, `check-config`, `admin`. The only place errors
//! become exit codes; everything else lives in the library.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use roomcast::auth::{self, MintRequest};
use roomcast::config::{self, Config};
use roomcast::server::{self, Overrides};

#[derive(Parser)]
#[command(name = "roomcast", version, about = "Real-time rooms over WebSocket, ordered and durable")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (embedded defaults when no --config is given).
    Serve {
        /// TOML configuration file.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Listen address, overriding server.listen (e.g. 127.0.0.1:0 for any free port).
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Mint a JWT signed with the first configured key.
    Token {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The user id (`sub` claim).
        #[arg(long)]
        sub: String,
        /// Room patterns the token may join, comma-separated (exact names or prefix*).
        #[arg(long, value_delimiter = ',')]
        rooms: Option<Vec<String>>,
        /// `server` for the HTTP API, `admin` to delete any message.
        #[arg(long)]
        role: Option<String>,
        /// Display name (`name` claim).
        #[arg(long)]
        name: Option<String>,
        /// Lifetime, like 30m, 1h or 7d.
        #[arg(long, default_value = "1h", value_parser = parse_ttl)]
        ttl: Duration,
    },
    /// Validate a configuration file; exits non-zero with FILE:LINE:COL and the reason.
    CheckConfig { file: PathBuf },
    /// Send one command to a running daemon's admin socket and print the reply.
    Admin {
        /// Find the socket through this configuration file (admin.socket).
        #[arg(long, short, conflicts_with = "socket")]
        config: Option<PathBuf>,
        /// The admin socket itself.
        #[arg(long)]
        socket: Option<PathBuf>,
        /// The command and its arguments (`help` lists them).
        #[arg(required = true, trailing_var_arg = true)]
        command: Vec<String>,
    },
}

fn parse_ttl(s: &str) -> Result<Duration, String> {
    config::parse_duration(s)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config, listen } => server::serve(config, Overrides { listen }).map_err(|e| e.to_string()),
        Command::Token { config, sub, rooms, role, name, ttl } => {
            mint_token(config, &sub, rooms.as_deref(), role.as_deref(), name.as_deref(), ttl)
        }
        Command::CheckConfig { file } => check_config(&file),
        Command::Admin { config, socket, command } => return admin(config, socket, &command.join(" ")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("roomcast: {message}");
            ExitCode::FAILURE
        }
    }
}

fn mint_token(
    config: Option<PathBuf>,
    sub: &str,
    rooms: Option<&[String]>,
    role: Option<&str>,
    name: Option<&str>,
    ttl: Duration,
) -> Result<(), String> {
    if !roomcast::names::is_valid_user_id(sub) {
        return Err(format!("--sub {sub:?} is not a valid user id ([A-Za-z0-9_.@+-], 1 to 128 bytes)"));
    }
    let config = server::load_config(config.as_deref(), &Overrides::default()).map_err(|e| e.to_string())?;
    let key = config.auth.keys.first().ok_or("no key configured")?;
    let now_unix =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_err(|e| e.to_string())?.as_secs();
    let request = MintRequest { sub, name, rooms, role, ttl: Some(ttl), now_unix };
    println!("{}", auth::mint(key, &request));
    Ok(())
}

/// Exit status: 0 when the reply says `"ok": true`, 1 otherwise.
fn admin(config: Option<PathBuf>, socket: Option<PathBuf>, command: &str) -> ExitCode {
    let socket = match (socket, config) {
        (Some(socket), _) => socket,
        (None, Some(file)) => match Config::load(&file) {
            Ok(config) => config.admin.socket,
            Err(e) => {
                eprintln!("roomcast: {e}");
                return ExitCode::FAILURE;
            }
        },
        (None, None) => Config::default().admin.socket,
    };
    let reply = match roomcast::admin::send_command(&socket, command) {
        Ok(reply) => reply,
        Err(e) => {
            eprintln!("roomcast: {e}");
            return ExitCode::FAILURE;
        }
    };
    let text = if std::io::stdout().is_terminal() {
        serde_json::to_string_pretty(&reply).unwrap_or_else(|_| reply.to_string())
    } else {
        reply.to_string()
    };
    println!("{text}");
    if reply["ok"] == true { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

fn check_config(file: &std::path::Path) -> Result<(), String> {
    let config = Config::load(file).map_err(|e| e.to_string())?;
    // The certificate and key are read too, so ExecStartPre/ExecReload catch a bad PEM.
    if let Some(tls) = &config.tls {
        roomcast::tls::load(tls).map_err(|e| format!("{}: {e}", file.display()))?;
    }
    println!("{}: ok", file.display());
    Ok(())
}
