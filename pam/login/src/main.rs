//! `blockhost-login`: wallet SSH login for people and programs without a browser.
//!
//! - `sign --key-file KEY`: signs the login message read from stdin (the whole prompt
//!   may be pasted; the message is found between its marker lines).
//! - `verify --address 0x… --signature 0x…`: checks a signature of the message on stdin.
//! - `extract`: prints the exact message found in a prompt on stdin (to sign it with
//!   another tool, e.g. `cast wallet sign`).
//! - `askpass PROMPT`: an `SSH_ASKPASS` program; `ssh` runs it with each
//!   keyboard-interactive prompt, it answers with a signature made with the key file
//!   named by `BLOCKHOST_KEY_FILE`. Invoked through a symlink named
//!   `blockhost-login-askpass`, the program is that helper directly.
//!
//! Only messages that parse as BlockHost's Sign-In-with-Ethereum layout are signed:
//! a key used for logins must never sign arbitrary text (a transaction-like message
//! slipped into a prompt would otherwise be signed blindly). The key is read from a
//! file (never argv), which must not be readable by group or others.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use blockhost_access::WalletAddress;
use blockhost_access::eip191::{self, Signature};
use clap::{Parser, Subcommand};
use k256::ecdsa::SigningKey;
use pam_blockhost::siwe::{self, MESSAGE_MAX, SiweMessage};

#[derive(Debug, Parser)]
#[command(
    name = "blockhost-login",
    version,
    about = "Sign and verify BlockHost wallet-login messages"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Sign the login message (or whole prompt) read from stdin; prints the signature.
    Sign {
        /// File holding the wallet's private key as hex (mode 0600 or stricter).
        #[arg(long)]
        key_file: PathBuf,
    },
    /// Verify a signature of the login message read from stdin; exit 0 if valid.
    Verify {
        /// The wallet expected to have signed.
        #[arg(long)]
        address: WalletAddress,
        /// The signature, 0x + 130 hex digits.
        #[arg(long)]
        signature: String,
    },
    /// Print the exact login message found in a prompt read from stdin.
    Extract,
    /// SSH_ASKPASS mode: answer PROMPT with a signature (key file from BLOCKHOST_KEY_FILE).
    Askpass {
        /// The prompt ssh passes.
        prompt: String,
    },
}

/// Why a command failed; printed as one line with its causes.
#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error("cannot read {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} is readable by group or others; chmod 600 it")]
    KeyFileMode(String),
    #[error("{0} does not hold a secp256k1 private key as 64 hex digits")]
    BadKey(String),
    #[error("input holds no BlockHost sign-in message")]
    NoMessage,
    #[error("not a BlockHost sign-in message")]
    Message(#[from] siwe::SiweError),
    #[error("the message asks for wallet {asked}, but the key file is wallet {ours}")]
    WrongWallet { asked: String, ours: String },
    #[error("signature")]
    Signature(#[from] eip191::Eip191Error),
    #[error("BLOCKHOST_KEY_FILE is not set")]
    NoKeyFile,
}

fn read_stdin() -> Result<String, CliError> {
    let mut text = String::new();
    std::io::stdin()
        .take(64 * 1024)
        .read_to_string(&mut text)
        .map_err(|source| CliError::Read {
            path: "stdin".into(),
            source,
        })?;
    Ok(text)
}

fn load_key(path: &Path) -> Result<SigningKey, CliError> {
    let shown = path.display().to_string();
    let read = |source| CliError::Read {
        path: shown.clone(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read)?;
    let mode = file.metadata().map_err(read)?.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(CliError::KeyFileMode(shown));
    }
    let mut text = String::new();
    file.take(256).read_to_string(&mut text).map_err(read)?;
    let digits = text.trim();
    let digits = digits.strip_prefix("0x").unwrap_or(digits);
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(digits, &mut bytes).map_err(|_| CliError::BadKey(shown.clone()))?;
    let key = SigningKey::from_slice(&bytes).map_err(|_| CliError::BadKey(shown.clone()));
    bytes.fill(0);
    key
}

/// The message inside `input`: between the markers if present, else the whole input
/// without a trailing newline. It must parse as a BlockHost SIWE message.
fn message_in(input: &str) -> Result<(String, SiweMessage), CliError> {
    let text = match siwe::extract_from_prompt(input) {
        Some(m) => m,
        None if input.contains(siwe::BEGIN_MARKER) => return Err(CliError::NoMessage),
        None => input.strip_suffix('\n').unwrap_or(input),
    };
    if text.len() > MESSAGE_MAX {
        return Err(CliError::NoMessage);
    }
    let parsed = SiweMessage::parse(text)?;
    Ok((text.to_owned(), parsed))
}

fn sign(key: &SigningKey, input: &str) -> Result<Signature, CliError> {
    let (text, parsed) = message_in(input)?;
    let ours = eip191::address_of(key.verifying_key());
    if parsed.address != ours {
        return Err(CliError::WrongWallet {
            asked: parsed.address.to_checksum(),
            ours: ours.to_checksum(),
        });
    }
    Ok(eip191::sign(key, text.as_bytes())?)
}

fn run(cli: Cli) -> Result<String, CliError> {
    match cli.command {
        Command::Sign { key_file } => {
            let key = load_key(&key_file)?;
            Ok(sign(&key, &read_stdin()?)?.to_hex())
        }
        Command::Verify { address, signature } => {
            let (text, _) = message_in(&read_stdin()?)?;
            let sig: Signature = signature.parse()?;
            eip191::verify(text.as_bytes(), &sig, &address)?;
            Ok(format!("valid signature by {}", address.to_checksum()))
        }
        Command::Extract => Ok(message_in(&read_stdin()?)?.0),
        Command::Askpass { prompt } => {
            let path = std::env::var_os("BLOCKHOST_KEY_FILE").ok_or(CliError::NoKeyFile)?;
            let key = load_key(Path::new(&path))?;
            if prompt.contains(siwe::BEGIN_MARKER) {
                Ok(sign(&key, &prompt)?.to_hex())
            } else {
                // The module's only other prompt asks which wallet will sign.
                Ok(eip191::address_of(key.verifying_key()).to_checksum())
            }
        }
    }
}

/// Parses the command line; invoked as `blockhost-login-askpass` (a symlink), the
/// program is an `SSH_ASKPASS` helper and its one argument is the prompt.
fn parse_cli() -> Cli {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let invoked_as_askpass = args
        .first()
        .and_then(|a| Path::new(a).file_name())
        .is_some_and(|n| n.to_string_lossy().ends_with("-askpass"));
    if invoked_as_askpass {
        args.insert(1, "askpass".into());
    }
    Cli::parse_from(args)
}

fn main() -> ExitCode {
    match run(parse_cli()) {
        Ok(out) => {
            #[allow(clippy::print_stdout)] // the command's output
            {
                println!("{out}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            let mut line = format!("blockhost-login: {e}");
            let mut cur = std::error::Error::source(&e);
            while let Some(inner) = cur {
                line.push_str(&format!(": {inner}"));
                cur = inner.source();
            }
            eprintln!("{line}");
            ExitCode::from(1)
        }
    }
}
