//! Command-line arguments.

use clap::{Args, Parser, Subcommand};
use rigd_protocol::{GpuUuid, RigId};
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

const EXIT_CODES: &str = "\
Exit codes:
  0    success (commands: every rig did it)
  1    other failure (commands: a rig refused, failed or did not answer in time)
  2    usage or argument error
  3    broker unreachable: connection refused, or no MQTT session within --wait-ms";

/// rigctl: look at a rigd fleet over MQTT 5 (rig status, cards, earnings) and command it.
#[derive(Debug, Parser)]
#[command(name = "rigctl", version, after_help = EXIT_CODES)]
pub struct Cli {
    /// MQTT broker, HOST:PORT.
    #[arg(long, global = true, default_value = "127.0.0.1:1883")]
    pub broker: BrokerAddr,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// How long to collect retained messages, ms; collection ends early once the broker has
    /// been quiet for about 300 ms.
    #[arg(long, global = true, default_value_t = 1500,
          value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub wait_ms: u64,
    /// Mutual TLS to the broker (an operator certificate, CN `operator:NAME`).
    #[command(flatten)]
    pub tls: rigd_client::TlsArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Every rig's retained status, with the coordinator's progress above it.
    Status,
    /// The cards of one rig: inventory and latest telemetry.
    Gpus {
        /// The rig.
        rig: RigId,
    },
    /// Earnings per rig and card as the coordinator's ledger credited them; with --owner,
    /// one owner's earnings from the owners' dashboard (no broker needed).
    Earnings {
        /// Only this rig.
        rig: Option<RigId>,
        /// Read this owner's earnings from the dashboard instead of the broker.
        #[command(flatten)]
        owner: OwnerArgs,
    },
    /// Signed work receipts.
    Receipts {
        /// What to do with them.
        #[command(subcommand)]
        action: ReceiptsCommand,
    },
    /// Claim tokens for zero-touch provisioning, through the provisioner (needs an operator
    /// certificate: --tls-ca, --tls-cert, --tls-key).
    Claims {
        /// What to do.
        #[command(subcommand)]
        action: ClaimsCommand,
    },
    /// Owner accounts, through the provisioner (needs an operator certificate): the people
    /// rigs belong to and are paid for.
    Owners {
        /// What to do; none lists the owners.
        #[command(subcommand)]
        action: Option<OwnersCommand>,
    },
    /// The fleet: every rig's retained status as a table; `rigs revoke` and `rigs registry`
    /// go to the provisioner's registry (they need an operator certificate).
    Rigs {
        /// What to do; none prints the fleet table.
        #[command(subcommand)]
        action: Option<RigsCommand>,
    },
    /// The operator's Ed25519 key that signs commands.
    Operator {
        /// What to do.
        #[command(subcommand)]
        action: OperatorCommand,
    },
    /// Drain rigs: running units finish and their receipts flush, no new unit starts; waits
    /// until each rig reports it has drained.
    Drain(SendArgs),
    /// Pause rigs (running units go back to the queue), or one card with --gpu.
    Pause(CardSendArgs),
    /// Resume rigs after a drain or pause, or one card with --gpu.
    Resume(CardSendArgs),
    /// Card limits.
    Limits {
        /// What to do.
        #[command(subcommand)]
        action: LimitsCommand,
    },
    /// Quarantine a card: its running unit goes back to the queue, it takes no more.
    Quarantine(OneCardArgs),
    /// Lift a card's quarantine.
    Release(OneCardArgs),
    /// Kill a card's worker process; a fresh one takes the next unit.
    RestartWorker(OneCardArgs),
    /// Diagnostics of rigs: versions, cards, governor levels, journal figures.
    Diag(SendArgs),
    /// Asks rigs to rotate their logs (rigd answers that journald rotates them).
    RotateLogs(SendArgs),
    /// Updates rigs to a signed image bundle (RAUC, A/B slots): each drains, fetches the
    /// bundle, installs it into its other slot and reboots into it; an update counts once the
    /// rig reports the new slot marked good. With --canary N, N rigs go first and the rest
    /// only if all of them came back on the new version.
    Update(UpdateArgs),
    /// Per rig: image version, root slot, update state and how the last update ended.
    UpdateStatus {
        /// Only this rig.
        rig: Option<RigId>,
    },
}

/// `rigctl update` options.
#[derive(Debug, Clone, Args)]
#[command(group(clap::ArgGroup::new("digest").required(true).args(["sha256", "file"])))]
pub struct UpdateArgs {
    /// Rigs and signing (--timeout-ms: each rig's install, default 1800000).
    #[command(flatten)]
    pub send: SendArgs,
    /// Where rigs fetch the bundle: an https:// URL.
    #[arg(long)]
    pub bundle: String,
    /// The image version the bundle holds.
    #[arg(long)]
    pub version: String,
    /// The bundle's SHA-256, 64 hex digits.
    #[arg(long)]
    pub sha256: Option<String>,
    /// The bundle file, to take its SHA-256 from.
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Update this many rigs first; the others follow only if every one of them comes back
    /// on the new version.
    #[arg(long)]
    pub canary: Option<usize>,
    /// How long a rig may take from its reboot to reporting the new slot good, ms.
    #[arg(long, default_value_t = 1_200_000, value_parser = clap::value_parser!(u64).range(1..=7_200_000))]
    pub confirm_timeout_ms: u64,
}

/// `rigctl earnings --owner NAME --dashboard URL`.
#[derive(Debug, Clone, Args)]
pub struct OwnerArgs {
    /// The owner's name.
    #[arg(long, requires = "dashboard")]
    pub owner: Option<String>,
    /// The owners' dashboard, e.g. https://dashboard.example.net.
    #[arg(long, requires = "owner")]
    pub dashboard: Option<String>,
    /// A file whose first line is the owner's password (otherwise RIGD_OWNER_PASSWORD).
    #[arg(long, requires = "owner")]
    pub password_file: Option<PathBuf>,
}

/// `rigctl operator ...`.
#[derive(Debug, Subcommand)]
pub enum OperatorCommand {
    /// Creates an Ed25519 key in FILE (PKCS#8, mode 0600) and prints its public key for
    /// rig.conf's `operator_keys`.
    Keygen {
        /// Where to write it (an existing file is not overwritten).
        file: PathBuf,
    },
    /// Prints the public key of --operator-key (or RIGCTL_OPERATOR_KEY).
    Show {
        /// The key file.
        #[arg(long)]
        operator_key: Option<PathBuf>,
    },
}

/// Which rigs a command goes to, and how it is signed and waited for.
#[derive(Debug, Clone, Args)]
pub struct SendArgs {
    /// The rigs.
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    pub rigs: Vec<RigId>,
    /// Every rig whose retained status is not offline.
    #[arg(long)]
    pub all: bool,
    /// The operator's key file (default: RIGCTL_OPERATOR_KEY).
    #[arg(long, value_name = "FILE")]
    pub operator_key: Option<PathBuf>,
    /// How long to wait for each rig's final reply, ms (default 10000; 120000 for drain).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub timeout_ms: Option<u64>,
    /// How long the signed command stays valid, ms.
    #[arg(long, default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub ttl_ms: u64,
}

/// A command for whole rigs or one card.
#[derive(Debug, Clone, Args)]
pub struct CardSendArgs {
    /// Rigs and signing.
    #[command(flatten)]
    pub send: SendArgs,
    /// Only this card.
    #[arg(long)]
    pub gpu: Option<GpuUuid>,
}

/// A command for one card.
#[derive(Debug, Clone, Args)]
pub struct OneCardArgs {
    /// Rigs and signing.
    #[command(flatten)]
    pub send: SendArgs,
    /// The card.
    #[arg(long)]
    pub gpu: GpuUuid,
}

/// `rigctl limits ...`.
#[derive(Debug, Subcommand)]
pub enum LimitsCommand {
    /// Sets a power cap and/or thermal limits (whole degrees C) on every card, or one with --gpu.
    Set(LimitsSetArgs),
}

/// `rigctl limits set` options.
#[derive(Debug, Clone, Args)]
#[command(group(clap::ArgGroup::new("limit").required(true).multiple(true)
    .args(["power_w", "target_c", "critical_c", "hysteresis_c", "mem_limit_c", "mem_critical_c"])))]
pub struct LimitsSetArgs {
    /// Rigs, card and signing.
    #[command(flatten)]
    pub card: CardSendArgs,
    /// Power cap, W (the governor may go lower).
    #[arg(long)]
    pub power_w: Option<u32>,
    /// Core target temperature, C.
    #[arg(long)]
    pub target_c: Option<u8>,
    /// Core critical temperature, C.
    #[arg(long)]
    pub critical_c: Option<u8>,
    /// Cool-down below critical before work resumes, C.
    #[arg(long)]
    pub hysteresis_c: Option<u8>,
    /// Memory target temperature, C.
    #[arg(long)]
    pub mem_limit_c: Option<u8>,
    /// Memory critical temperature, C.
    #[arg(long)]
    pub mem_critical_c: Option<u8>,
}

/// `rigctl receipts ...`.
#[derive(Debug, Subcommand)]
pub enum ReceiptsCommand {
    /// Checks every receipt of a saved batch (the payload of a `rig/{rig}/receipts` message),
    /// or of every batch a rig publishes within --wait-ms: inclusion proof, batch header
    /// digest and signature under the rig's key. Exits 1 when any receipt fails, or when a
    /// rig published no batch in that time.
    Verify {
        /// A saved frame, or (when no such file exists) the id of a rig to listen to.
        target: PathBuf,
        /// The rig's key (`secp256k1:HEX` or `p256:HEX`, as `rigd keys show` prints it);
        /// without it, the key in the rig's retained status on the broker.
        #[arg(long)]
        key: Option<String>,
        /// The deployment the receipts must be signed for; without it, the one each batch
        /// names is shown but not checked.
        #[command(flatten)]
        domain: rigd_client::DomainArgs,
    },
}

/// `rigctl claims ...`.
#[derive(Debug, Subcommand)]
pub enum ClaimsCommand {
    /// Creates a claim token; prints it once (the provisioner keeps only its hash).
    Create {
        /// Owner the rigs are credited to.
        #[arg(long)]
        owner: String,
        /// How many rigs may use it.
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// How long it stays valid: a number with s, m, h or d (e.g. 7d).
        #[arg(long, default_value = "7d", value_parser = parse_duration)]
        expires: std::time::Duration,
    },
    /// Revokes a claim token: rigs not yet provisioned with it are refused.
    Revoke {
        /// The token.
        token: String,
    },
}

/// `rigctl owners ...`.
#[derive(Debug, Subcommand)]
pub enum OwnersCommand {
    /// Adds an owner; prints their generated password once (the provisioner keeps only its
    /// hash). Claims are then created for them with `claims create --owner NAME`.
    Add {
        /// Login name: 1 to 64 letters, digits, '.', '_' or '-'.
        name: String,
        /// Ethereum address payouts go to.
        #[arg(long)]
        payout: String,
    },
    /// Gives an owner a new generated password; the old one stops working.
    ResetPassword {
        /// The owner.
        name: String,
    },
}

/// `rigctl rigs ...`.
#[derive(Debug, Subcommand)]
pub enum RigsCommand {
    /// Revokes a rig: its certificate goes on the broker's CRL and it cannot connect again.
    Revoke {
        /// The rig.
        rig: RigId,
    },
    /// Lists the rigs the provisioner registered (id, owner, state, certificate serial).
    Registry,
}

/// `30s`, `15m`, `24h`, `7d`.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?}: expected a number and s, m, h or d"))?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{s:?}: the unit must be s, m, h or d")),
    };
    n.checked_mul(secs)
        .filter(|&t| t > 0)
        .map(std::time::Duration::from_secs)
        .ok_or_else(|| format!("{s:?}: out of range"))
}

/// A broker address, `HOST:PORT` (`[v6]:PORT` for IPv6 literals).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerAddr {
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl FromStr for BrokerAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("{s:?} is not HOST:PORT"))?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if host.is_empty() {
            return Err(format!("{s:?} has no host"));
        }
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("{port:?} is not a port (1-65535)"))?;
        Ok(Self {
            host: host.to_string(),
            port,
        })
    }
}

impl fmt::Display for BrokerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn broker_addresses_parse() {
        let ok = |s: &str| BrokerAddr::from_str(s).map(|a| (a.host, a.port));
        assert_eq!(ok("127.0.0.1:1883"), Ok(("127.0.0.1".into(), 1883)));
        assert_eq!(ok("broker.lan:8883"), Ok(("broker.lan".into(), 8883)));
        assert_eq!(ok("[::1]:1883"), Ok(("::1".into(), 1883)));
        for bad in [
            "",
            "host",
            ":1883",
            "host:",
            "host:0",
            "host:70000",
            "host:x",
        ] {
            assert!(BrokerAddr::from_str(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn defaults_and_global_flags() {
        let cli = Cli::try_parse_from(["rigctl", "earnings", "--json", "--wait-ms", "200"]);
        let Ok(cli) = cli else { panic!("{cli:?}") };
        assert!(cli.json);
        assert_eq!(cli.wait_ms, 200);
        assert_eq!(cli.broker.to_string(), "127.0.0.1:1883");
        assert!(matches!(
            cli.command,
            Command::Earnings {
                rig: None,
                owner: OwnerArgs { owner: None, .. }
            }
        ));
    }

    #[test]
    fn an_owner_needs_a_dashboard_and_a_dashboard_an_owner() {
        for args in [
            &["rigctl", "earnings", "--owner", "alice"][..],
            &["rigctl", "earnings", "--dashboard", "http://127.0.0.1:8480"],
        ] {
            assert!(Cli::try_parse_from(args).is_err(), "{args:?}");
        }
        let cli = Cli::try_parse_from([
            "rigctl",
            "earnings",
            "--owner",
            "alice",
            "--dashboard",
            "http://127.0.0.1:8480",
        ]);
        assert!(cli.is_ok(), "{cli:?}");
    }

    #[test]
    fn bad_arguments_are_usage_errors() {
        for args in [
            &["rigctl", "gpus"][..],
            &["rigctl", "gpus", "bad/rig"],
            &["rigctl", "status", "--broker", "nope"],
            &["rigctl", "status", "--wait-ms", "0"],
        ] {
            let err = Cli::try_parse_from(args).err();
            assert_eq!(err.map(|e| e.exit_code()), Some(2), "{args:?}");
        }
    }

    #[test]
    fn help_documents_the_exit_codes() {
        let help = Cli::command().render_long_help().to_string();
        for code in ["0 ", "1 ", "2 ", "3 "] {
            assert!(help.contains(&format!("  {code}")), "{code}: {help}");
        }
    }
}
