//! The command-line flags of the fleet's tools for their broker link (feature `cli`: only
//! binaries with a clap command line need them).

use crate::TlsFiles;
use std::path::PathBuf;

/// Command-line TLS flags shared by the fleet's tools (`--tls-ca`, `--tls-cert`, `--tls-key`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsArgs {
    /// PEM file of the fleet CA: connect to the broker with mutual TLS.
    #[arg(long, global = true, requires_all = ["tls_cert", "tls_key"])]
    pub tls_ca: Option<PathBuf>,
    /// PEM file of this client's certificate (with --tls-ca).
    #[arg(long, global = true, requires = "tls_ca")]
    pub tls_cert: Option<PathBuf>,
    /// PEM file of this client's private key (with --tls-ca).
    #[arg(long, global = true, requires = "tls_ca")]
    pub tls_key: Option<PathBuf>,
}

impl TlsArgs {
    /// The files named, or `None` for a plain TCP connection.
    pub fn files(&self) -> Option<TlsFiles> {
        Some(TlsFiles {
            ca: self.tls_ca.clone()?,
            cert: self.tls_cert.clone()?,
            key: self.tls_key.clone(),
        })
    }
}
