//! `rig-provisioner`: the fleet CA, the broker configuration and the claim service.

use anyhow::Context;
use clap::{Parser, Subcommand};
use rigd_provisioning::broker::{self, BrokerSettings};
use rigd_provisioning::ca::{self, Ca, Role};
use rigd_provisioning::provisioner::Provisioner;
use rigd_provisioning::registry::Registry;
use rigd_provisioning::service::{self, ServiceSettings};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

/// rig-provisioner: fleet CA, broker mTLS + ACL configuration, rig registry and claims.
/// Exit codes: 0 done, 1 failure, 2 bad arguments.
#[derive(Parser)]
#[command(version)]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Creates the fleet CA (ca.pem, ca-key.pem) in DIR.
    CaInit {
        /// CA directory.
        #[arg(long)]
        ca: PathBuf,
        /// Common name of the CA.
        #[arg(long, default_value = "rigd fleet CA")]
        name: String,
    },
    /// Issues a client certificate and key (coordinator, provisioner, operator, claim).
    Issue {
        /// CA directory.
        #[arg(long)]
        ca: PathBuf,
        /// Common name: `fleet:coordinator`, `fleet:provisioner`, `fleet:claim`,
        /// `operator:NAME` (or a rig id, for rigs with a fixed identity).
        #[arg(long)]
        name: String,
        /// Writes OUT.pem (certificate) and OUT-key.pem (key, mode 0600).
        #[arg(long)]
        out: PathBuf,
        /// Issue for this public key instead of a new key pair: `p256:HEX`, as `rigd keys
        /// show` prints it (a rig with a fixed rig_id whose TLS key stays in its key store).
        #[arg(long)]
        public_key: Option<String>,
    },
    /// Writes mosquitto.conf, the ACL, the server certificate and an empty CRL into OUT.
    BrokerConfig {
        /// CA directory.
        #[arg(long)]
        ca: PathBuf,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// TLS listener port.
        #[arg(long, default_value_t = 8883)]
        port: u16,
        /// Address to bind.
        #[arg(long, default_value = "0.0.0.0")]
        bind: String,
        /// Host names or addresses clients use (server certificate SANs); repeatable.
        #[arg(long = "host", default_values_t = ["localhost".to_owned(), "127.0.0.1".to_owned()])]
        hosts: Vec<String>,
        /// Operator names allowed to control the fleet (certificate CN `operator:NAME`).
        #[arg(long = "operator")]
        operators: Vec<String>,
        /// Directory for mosquitto's persistence file (none when left out).
        #[arg(long)]
        persistence: Option<PathBuf>,
        /// User mosquitto drops root privileges to; it must be able to read the server key.
        #[arg(long, default_value = "mosquitto")]
        run_as: String,
    },
    /// Serves claims and operator requests over MQTT 5 until SIGTERM or SIGINT.
    Serve {
        /// CA directory.
        #[arg(long)]
        ca: PathBuf,
        /// Registry database (SQLite).
        #[arg(long)]
        db: PathBuf,
        /// Broker, HOST:PORT.
        #[arg(long, default_value = "127.0.0.1:8883")]
        broker: String,
        #[command(flatten)]
        tls: rigd_client::TlsArgs,
        /// The broker's CRL file (its `crlfile`), rewritten on every revocation.
        #[arg(long)]
        crl: Option<PathBuf>,
        /// The broker's ACL file: revoked rigs are denied every topic there, which cuts off
        /// a revoked rig that is still connected once the broker reloads.
        #[arg(long)]
        acl: Option<PathBuf>,
        /// Command that makes the broker reload the CRL, e.g. "systemctl reload mosquitto"
        /// (split on spaces, run without a shell).
        #[arg(long)]
        reload_command: Option<String>,
        /// Ed25519 public key (64 hex digits) of an operator whose commands rigs obey;
        /// repeatable. Sent to every rig in its ClaimResponse.
        #[arg(long = "operator-key")]
        operator_keys: Vec<String>,
        /// The deployment rigs sign their receipts for, sent in every ClaimResponse.
        #[command(flatten)]
        domain: rigd_client::DomainArgs,
    },
}

fn main() -> ExitCode {
    rigd_client::init_logging("info");
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rig-provisioner: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        Cmd::CaInit { ca, name } => {
            Ca::init(&ca, &name).context("creating the CA")?;
            println!("CA written to {}", ca.display());
        }
        Cmd::Issue {
            ca,
            name,
            out,
            public_key,
        } => {
            let ca = Ca::load(&ca).context("loading the CA")?;
            let issued = match public_key {
                Some(k) => {
                    let sec1 = k
                        .strip_prefix("p256:")
                        .and_then(|h| hex::decode(h).ok())
                        .context("--public-key must be p256:HEX (TLS has no secp256k1)")?;
                    ca.issue_for(&name, &ca::P256Public::from_sec1(&sec1)?)?
                }
                None => ca.issue(&name, Role::Client, &[])?,
            };
            write_pair(&out, &issued)?;
            println!("{name}: serial {}", issued.serial);
        }
        Cmd::BrokerConfig {
            ca,
            out,
            port,
            bind,
            hosts,
            operators,
            persistence,
            run_as,
        } => {
            let ca = Ca::load(&ca).context("loading the CA")?;
            let settings = BrokerSettings {
                bind,
                port,
                hosts,
                persistence_dir: persistence,
                run_as,
            };
            let conf = broker::write(&ca, &settings, &operators, &out)?;
            println!(
                "broker configuration written: mosquitto -c {}",
                conf.display()
            );
        }
        Cmd::Serve {
            ca,
            db,
            broker,
            tls,
            crl,
            acl,
            reload_command,
            operator_keys,
            domain,
        } => serve(
            &ca,
            &db,
            &broker,
            &tls,
            [crl, acl],
            reload_command,
            (&operator_keys, domain.domain()),
        )?,
    }
    Ok(())
}

fn serve(
    ca: &Path,
    db: &Path,
    broker: &str,
    tls: &rigd_client::TlsArgs,
    [crl, acl]: [Option<PathBuf>; 2],
    reload_command: Option<String>,
    (operator_keys, domain): (&[String], rigd_protocol::Domain),
) -> anyhow::Result<()> {
    let (host, port) = broker
        .rsplit_once(':')
        .context("--broker must be HOST:PORT")?;
    let port: u16 = port.parse().context("--broker port")?;
    let keys = operator_keys
        .iter()
        .map(|k| {
            hex::decode(k)
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .with_context(|| format!("--operator-key {k:?} is not 64 hex digits"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let tls = match tls.files() {
        Some(f) => Some(rigd_client::client_config_from_files(&f)?),
        None => None,
    };
    let ca = Ca::load(ca).context("loading the CA")?;
    let registry = Registry::open(db).context("opening the registry")?;
    let mut provisioner = Provisioner::new(ca, registry, keys, crl, acl)?.with_domain(domain);
    tracing::info!(%domain, "rigs are told to sign their receipts for this deployment");
    provisioner.write_revocations()?;
    let settings = ServiceSettings {
        host: host.to_owned(),
        port,
        tls,
        reload_command: reload_command.map(|c| c.split_whitespace().map(str::to_owned).collect()),
    };
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let stop = CancellationToken::new();
        let s = stop.clone();
        tokio::spawn(async move {
            let _ = tokio::signal::ctrl_c().await;
            s.cancel();
        });
        let s = stop.clone();
        if let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            tokio::spawn(async move {
                term.recv().await;
                s.cancel();
            });
        }
        service::serve(settings, provisioner, stop).await;
    });
    Ok(())
}

fn write_pair(out: &Path, issued: &ca::Issued) -> anyhow::Result<()> {
    let cert = out.with_extension("pem");
    let key = PathBuf::from(format!("{}-key.pem", out.display()));
    ca::write_file(&cert, issued.cert_pem.as_bytes(), 0o644)?;
    if let Some(k) = &issued.key_pem {
        ca::write_file(&key, k.as_bytes(), 0o600)?;
    }
    Ok(())
}
