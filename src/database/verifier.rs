//! The server certificate checks of libpq's `sslmode`s, on rustls.
//!
//! webpki is stricter than OpenSSL in two ways that matter to PostgreSQL users: it
//! refuses a certificate with `CA:TRUE` as the server's own (`CaUsedAsEndEntity`),
//! and it never reads a host name from the subject's common name. The PostgreSQL
//! manual's own recipe (`openssl req -new -x509 … -subj "/CN=dbhost"`) makes exactly
//! such a certificate, and `psql` takes it. So a server certificate that is itself
//! one of the trusted roots is trusted as it stands (its validity still checked),
//! and the host name is checked as libpq checks it: the subject alternative names,
//! or the common name when there is no DNS name among them.

use std::{net::IpAddr, sync::Arc};

use rustls::{
    CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme,
    client::{
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
        verify_server_cert_signed_by_trust_anchor, verify_server_name,
    },
    crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature},
    pki_types::{CertificateDer, ServerName, UnixTime},
    server::ParsedCertificate,
};
use x509_cert::{
    Certificate,
    der::{Decode, oid::ObjectIdentifier},
    ext::pkix::{SubjectAltName, name::GeneralName},
};

/// The subject's common name.
const COMMON_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");

/// Trusted roots: as webpki's trust anchors, and whole, to know a server
/// certificate that is one of them.
#[derive(Debug)]
pub(super) struct Roots {
    store: RootCertStore,
    certs: Vec<CertificateDer<'static>>,
}

impl Roots {
    /// The certificates that parse as roots; `None` when none does.
    pub(super) fn new(certs: Vec<CertificateDer<'static>>) -> Result<Roots, String> {
        let mut store = RootCertStore::empty();
        let (_, bad) = store.add_parsable_certificates(certs.iter().cloned());
        if store.is_empty() {
            return Err(format!("none of its {bad} certificates is a usable root"));
        }
        Ok(Roots { store, certs })
    }

    fn holds(&self, cert: &CertificateDer<'_>) -> bool {
        self.certs.iter().any(|c| c.as_ref() == cert.as_ref())
    }
}

/// What a connection checks of the server's certificate.
#[derive(Debug)]
pub(super) struct Verifier {
    /// `verify-ca` and `verify-full`: the chain (or the certificate) must be trusted.
    roots: Option<Roots>,
    /// `verify-full`: the host name must match.
    names: bool,
    provider: Arc<CryptoProvider>,
}

impl Verifier {
    /// `prefer` and `require` take any certificate, as libpq does; the handshake's
    /// own signatures are always checked, so channel binding still means something.
    pub(super) fn any(provider: Arc<CryptoProvider>) -> Verifier {
        Verifier {
            roots: None,
            names: false,
            provider,
        }
    }

    /// `verify-ca` (`names` false) or `verify-full`.
    pub(super) fn trusting(roots: Roots, names: bool, provider: Arc<CryptoProvider>) -> Verifier {
        Verifier {
            roots: Some(roots),
            names,
            provider,
        }
    }

    fn check_chain(
        &self,
        roots: &Roots,
        cert: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        if roots.holds(cert) {
            return check_validity(cert, now);
        }
        let parsed = ParsedCertificate::try_from(cert)?;
        verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &roots.store,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )
    }
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.roots {
            self.check_chain(roots, end_entity, intermediates, now)?;
        }
        if self.names {
            check_name(end_entity, server_name)?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn decode(cert: &CertificateDer<'_>) -> Result<Certificate, rustls::Error> {
    Certificate::from_der(cert.as_ref())
        .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))
}

/// A trusted certificate taken as it stands must still be within its validity.
fn check_validity(cert: &CertificateDer<'_>, now: UnixTime) -> Result<(), rustls::Error> {
    let validity = decode(cert)?.tbs_certificate.validity;
    let now = now.as_secs();
    if now < validity.not_before.to_unix_duration().as_secs() {
        return Err(CertificateError::NotValidYet.into());
    }
    if now > validity.not_after.to_unix_duration().as_secs() {
        return Err(CertificateError::Expired.into());
    }
    Ok(())
}

/// libpq's host name check: webpki's over the subject alternative names, and,
/// when they hold no DNS name, the common name.
fn check_name(cert: &CertificateDer<'_>, name: &ServerName<'_>) -> Result<(), rustls::Error> {
    let parsed = ParsedCertificate::try_from(cert)?;
    let webpki = verify_server_name(&parsed, name);
    if webpki.is_ok() {
        return webpki;
    }
    let decoded = decode(cert)?;
    if has_dns_name(&decoded) {
        return webpki;
    }
    let host = match name {
        ServerName::DnsName(dns) => dns.as_ref().to_owned(),
        ServerName::IpAddress(ip) => IpAddr::from(*ip).to_string(),
        _ => return webpki,
    };
    match common_names(&decoded).any(|cn| matches_host(&cn, &host)) {
        true => Ok(()),
        false => webpki,
    }
}

fn has_dns_name(cert: &Certificate) -> bool {
    let Ok(Some((_, SubjectAltName(names)))) = cert.tbs_certificate.get::<SubjectAltName>() else {
        return false;
    };
    names.iter().any(|n| matches!(n, GeneralName::DnsName(_)))
}

fn common_names(cert: &Certificate) -> impl Iterator<Item = String> + '_ {
    let rdns = cert.tbs_certificate.subject.0.iter();
    rdns.flat_map(|rdn| rdn.0.iter())
        .filter(|attr| attr.oid == COMMON_NAME)
        .filter_map(|attr| {
            std::str::from_utf8(attr.value.value())
                .ok()
                .map(str::to_owned)
        })
}

/// A common name against the host, as libpq compares them: case-insensitive, and a
/// leading `*.` stands for exactly one label.
fn matches_host(common_name: &str, host: &str) -> bool {
    if common_name.eq_ignore_ascii_case(host) {
        return true;
    }
    let Some(suffix) = common_name.strip_prefix("*.") else {
        return false;
    };
    match host.split_once('.') {
        Some((label, rest)) => !label.is_empty() && rest.eq_ignore_ascii_case(suffix),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

    use super::*;

    fn provider() -> Arc<CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    /// A self-signed `CA:TRUE` certificate with only a common name, as the
    /// PostgreSQL manual's `openssl req -x509` makes, valid from `from` for `days`.
    fn self_signed_ca(cn: &str, from: time::OffsetDateTime, days: i64) -> CertificateDer<'static> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.not_before = from;
        params.not_after = from + time::Duration::days(days);
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    fn verify(
        roots: Vec<CertificateDer<'static>>,
        cert: &CertificateDer<'_>,
        host: &str,
        now: time::OffsetDateTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verifier = Verifier::trusting(Roots::new(roots).unwrap(), true, provider());
        let name = ServerName::try_from(host.to_owned()).unwrap();
        let now = UnixTime::since_unix_epoch(Duration::from_secs(now.unix_timestamp() as u64));
        verifier.verify_server_cert(cert, &[], &name, &[], now)
    }

    #[test]
    fn a_trusted_self_signed_ca_is_the_server_certificate_within_its_validity() {
        let now = time::OffsetDateTime::now_utc();
        let cert = self_signed_ca("dbhost", now - time::Duration::days(1), 365);
        assert!(verify(vec![cert.clone()], &cert, "dbhost", now).is_ok());
        assert!(verify(vec![cert.clone()], &cert, "DBHOST", now).is_ok());
        let wrong = verify(vec![cert.clone()], &cert, "otherhost", now).unwrap_err();
        assert!(wrong.to_string().contains("not valid for name"), "{wrong}");
        let later = now + time::Duration::days(400);
        let expired = verify(vec![cert.clone()], &cert, "dbhost", later).unwrap_err();
        let is = |e: &rustls::Error, want: CertificateError| matches!(e, rustls::Error::InvalidCertificate(got) if *got == want);
        assert!(is(&expired, CertificateError::Expired), "{expired}");
        let early = now - time::Duration::days(2);
        let not_yet = verify(vec![cert.clone()], &cert, "dbhost", early).unwrap_err();
        assert!(is(&not_yet, CertificateError::NotValidYet), "{not_yet}");
    }

    #[test]
    fn a_self_signed_ca_that_is_not_a_root_is_still_refused() {
        let now = time::OffsetDateTime::now_utc();
        let from = now - time::Duration::days(1);
        let (cert, other) = (
            self_signed_ca("dbhost", from, 9),
            self_signed_ca("x", from, 9),
        );
        assert!(verify(vec![other], &cert, "dbhost", now).is_err());
    }

    #[test]
    fn common_names_match_as_in_libpq() {
        assert!(matches_host("db.example.com", "DB.Example.com"));
        assert!(matches_host("*.example.com", "db.example.com"));
        assert!(!matches_host("*.example.com", "a.db.example.com"));
        assert!(!matches_host("*.example.com", "example.com"));
        assert!(!matches_host("*.example.com", ".example.com"));
        assert!(!matches_host("db.example.com", "db.example.org"));
    }
}
