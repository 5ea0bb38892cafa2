//! TLS on the public port: the rustls configuration and the handshake.

use std::{net::SocketAddr, path::Path, sync::Arc};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    time::Instant,
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};

/// The rustls configuration for a PEM certificate chain and private key, with the
/// `ring` crypto provider chosen explicitly. Errors name the variable and the file.
pub fn tls_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, String> {
    let read = |var: &str, path: &Path| {
        std::fs::read(path).map_err(|e| format!("{var}: cannot read {}: {e}", path.display()))
    };
    let cert_pem = read("PGWS_CERTIFICATE_FILE", cert)?;
    let key_pem = read("PGWS_KEY_FILE", key)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            format!(
                "PGWS_CERTIFICATE_FILE: {} is not a PEM certificate: {e}",
                cert.display()
            )
        })?;
    if chain.is_empty() {
        return Err(format!(
            "PGWS_CERTIFICATE_FILE: no PEM certificate (BEGIN CERTIFICATE) in {}",
            cert.display()
        ));
    }
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        format!(
            "PGWS_KEY_FILE: no PEM private key in {}: {e}",
            key.display()
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("PGWS_CERTIFICATE_FILE: {e}"))?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| {
            format!(
                "PGWS_KEY_FILE: {} does not go with the certificate in {}: {e}",
                key.display(),
                cert.display()
            )
        })?;
    config.alpn_protocols = alpn(true);
    Ok(Arc::new(config))
}

/// The protocols offered through ALPN, the preferred first.
fn alpn(http2: bool) -> Vec<Vec<u8>> {
    let mut protocols = vec![b"http/1.1".to_vec()];
    if http2 {
        protocols.insert(0, b"h2".to_vec());
    }
    protocols
}

/// The acceptor for `config`, offering `h2` only when HTTP/2 is on.
pub(crate) fn acceptor(config: Arc<rustls::ServerConfig>, http2: bool) -> TlsAcceptor {
    if config.alpn_protocols == alpn(http2) {
        return TlsAcceptor::from(config);
    }
    let mut config = (*config).clone();
    config.alpn_protocols = alpn(http2);
    TlsAcceptor::from(Arc::new(config))
}

/// A client's TLS handshake, done by `deadline`; `None`, logged at DEBUG, when
/// it fails or times out.
pub(crate) async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    tls: &TlsAcceptor,
    stream: S,
    peer: SocketAddr,
    deadline: Instant,
) -> Option<TlsStream<S>> {
    match tokio::time::timeout_at(deadline, tls.accept(stream)).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            None
        }
    }
}
