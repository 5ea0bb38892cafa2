//! How pgws connects to PostgreSQL: the URI's TLS parameters, read as libpq reads
//! them, and the rustls connector that the listener and the write pool share.
//!
//! tokio-postgres knows `sslmode=disable|prefer|require` only, so `sslmode`,
//! `sslrootcert`, `sslcert` and `sslkey` are taken out of the URI here (both the
//! `postgres://` form and the `key=value` form) and the rest goes to tokio-postgres.
//! Files are read when the [`Config`](crate::Config) is built, so a wrong path is a
//! configuration error, not a warning at the first connect.

use std::{
    fmt,
    path::{Path, PathBuf},
    sync::Arc,
};

use percent_encoding::percent_decode_str;
use rustls::{
    ClientConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
};
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::error::{ConfigError, error_chain};

pub(crate) mod listen;
mod screen;
mod verifier;

use verifier::{Roots, Verifier};

/// The TLS in force on pgws's connections to PostgreSQL: the URI's `sslmode`, as
/// libpq (and so `psql`) reads it. Returned by [`Config::database_tls`](crate::Config::database_tls).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DatabaseTls {
    /// `sslmode=disable`: plain TCP.
    Disable,
    /// `sslmode=prefer` (the default): TLS without verification when the server
    /// offers it, plain TCP otherwise.
    Prefer,
    /// `sslmode=require`: TLS or no connection; the certificate is not verified.
    Require,
    /// `sslmode=verify-ca`, or `require` with a root certificate: TLS with the
    /// server's chain verified against the root; the host name is not checked.
    VerifyCa,
    /// `sslmode=verify-full`: TLS with the chain verified and the certificate
    /// valid for the host name.
    VerifyFull,
}

impl DatabaseTls {
    /// The libpq name: `disable`, `prefer`, `require`, `verify-ca` or `verify-full`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }

    fn parse(value: &str) -> Result<Self, String> {
        Ok(match value {
            "disable" => Self::Disable,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            "allow" => {
                return Err("sslmode \"allow\" is not supported (use prefer or disable)".into());
            }
            other => {
                return Err(format!(
                    "sslmode {other:?} is not one of disable, prefer, require, verify-ca, verify-full"
                ));
            }
        })
    }

    fn verifies(self) -> bool {
        matches!(self, Self::VerifyCa | Self::VerifyFull)
    }
}

impl fmt::Display for DatabaseTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `MakeTlsConnect` both the listener and the write pool use.
pub(crate) type Connector = MakeRustlsConnect;

/// Where and how to connect: tokio-postgres's settings (with its `SslMode` set
/// from ours) and the rustls connector for the mode in force.
#[derive(Clone)]
pub(crate) struct Database {
    pub(crate) config: tokio_postgres::Config,
    pub(crate) connector: Connector,
    pub(crate) tls: DatabaseTls,
}

impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // tokio-postgres's `Debug` already hides the password.
        f.debug_struct("Database")
            .field("config", &self.config)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

impl Database {
    /// Parses a URI or `key=value` string and reads the files it names.
    pub(crate) fn parse(uri: &str) -> Result<Database, ConfigError> {
        Self::parse_in(uri, libpq_dir().as_deref())
    }

    /// [`parse`](Self::parse) with libpq's default files looked for in `dir`.
    fn parse_in(uri: &str, dir: Option<&Path>) -> Result<Database, ConfigError> {
        let invalid = ConfigError::InvalidDatabaseUrl;
        let (rest, params) = split_tls_params(uri).map_err(invalid)?;
        let mut config = rest
            .parse::<tokio_postgres::Config>()
            .map_err(|e| invalid(error_chain(&e)))?;
        let settings = params.resolve(&config, dir).map_err(invalid)?;
        let tls = settings.mode;
        config.ssl_mode(match tls {
            DatabaseTls::Disable => SslMode::Disable,
            DatabaseTls::Prefer => SslMode::Prefer,
            _ => SslMode::Require,
        });
        // tokio-postgres names the TLS peer after `host` only; with `hostaddr`
        // alone, libpq uses the address, so do the same.
        if config.get_hosts().is_empty() && tls != DatabaseTls::Disable {
            let addrs: Vec<String> = config
                .get_hostaddrs()
                .iter()
                .map(|a| a.to_string())
                .collect();
            for addr in addrs {
                config.host(&addr);
            }
        }
        let connector = MakeRustlsConnect::new(settings.client_config().map_err(invalid)?);
        Ok(Database {
            config,
            connector,
            tls,
        })
    }
}

/// The TLS parameters as written in the URI; empty file names count as unset.
#[derive(Debug, Default, PartialEq, Eq)]
struct TlsParams {
    sslmode: Option<String>,
    sslrootcert: Option<String>,
    sslcert: Option<String>,
    sslkey: Option<String>,
}

/// The parameters pgws reads itself; tokio-postgres would refuse all but `sslmode`.
const TLS_KEYS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

impl TlsParams {
    /// Sets one of [`TLS_KEYS`]; the last occurrence wins, as in libpq.
    fn set(&mut self, key: &str, value: String) {
        let slot = match key {
            "sslmode" => &mut self.sslmode,
            "sslrootcert" => &mut self.sslrootcert,
            "sslcert" => &mut self.sslcert,
            _ => &mut self.sslkey,
        };
        *slot = Some(value);
    }
}

/// Splits the TLS parameters out of `uri`: the rest, for tokio-postgres, and ours.
/// A string this cannot tokenize is passed on whole, for tokio-postgres to explain.
fn split_tls_params(uri: &str) -> Result<(String, TlsParams), String> {
    let mut params = TlsParams::default();
    let url_body = ["postgres://", "postgresql://"]
        .iter()
        .find_map(|prefix| uri.strip_prefix(prefix));
    let rest = match url_body {
        Some(body) => split_url(uri, body, &mut params)?,
        None => match split_key_values(uri, &mut params) {
            Some(rest) => rest,
            None => return Ok((uri.to_owned(), TlsParams::default())),
        },
    };
    Ok((rest, params))
}

/// The URL form: the query starts at the first `?` after the credentials, as in
/// tokio-postgres's parser.
fn split_url(uri: &str, body: &str, params: &mut TlsParams) -> Result<String, String> {
    let after_credentials = body.find('@').map_or(0, |i| i + 1);
    let Some(q) = body[after_credentials..].find('?') else {
        return Ok(uri.to_owned());
    };
    let query_start = uri.len() - body.len() + after_credentials + q;
    let mut kept = Vec::new();
    for pair in uri[query_start + 1..].split('&') {
        let ours = pair.split_once('=').and_then(|(k, v)| {
            let key = percent_decode_str(k).decode_utf8().ok()?;
            TLS_KEYS
                .contains(&key.as_ref())
                .then(|| (key.into_owned(), v))
        });
        match ours {
            Some((key, raw)) => {
                let value = percent_decode_str(raw)
                    .decode_utf8()
                    .map_err(|_| format!("{key}: not valid UTF-8 once percent-decoded"))?;
                params.set(&key, value.into_owned());
            }
            None => kept.push(pair),
        }
    }
    let mut rest = uri[..query_start].to_owned();
    if !kept.is_empty() {
        rest.push('?');
        rest.push_str(&kept.join("&"));
    }
    Ok(rest)
}

/// The `key=value` form, tokenized as tokio-postgres (and libpq) do: values may be
/// single-quoted, and a backslash escapes the next character. `None` when the
/// string does not tokenize.
fn split_key_values(s: &str, params: &mut TlsParams) -> Option<String> {
    let mut kept = Vec::new();
    let mut it = s.char_indices().peekable();
    let skip_ws = |it: &mut std::iter::Peekable<std::str::CharIndices<'_>>| {
        while it.next_if(|(_, c)| c.is_whitespace()).is_some() {}
    };
    loop {
        skip_ws(&mut it);
        let Some(&(start, _)) = it.peek() else {
            break;
        };
        while it
            .next_if(|&(_, c)| !c.is_whitespace() && c != '=')
            .is_some()
        {}
        let key_end = it.peek().map_or(s.len(), |&(i, _)| i);
        let key = &s[start..key_end];
        skip_ws(&mut it);
        it.next_if(|&(_, c)| c == '=')?;
        skip_ws(&mut it);
        let mut value = String::new();
        let quoted = it.next_if(|&(_, c)| c == '\'').is_some();
        loop {
            match it.peek() {
                None if quoted => return None,
                None => break,
                Some(&(_, '\'')) if quoted => {
                    it.next();
                    break;
                }
                Some(&(_, c)) if !quoted && c.is_whitespace() => break,
                Some(_) => {}
            }
            let (_, c) = it.next()?;
            if c == '\\' {
                if let Some((_, escaped)) = it.next() {
                    value.push(escaped);
                }
            } else {
                value.push(c);
            }
        }
        if !quoted && value.is_empty() {
            return None;
        }
        let end = it.peek().map_or(s.len(), |&(i, _)| i);
        if TLS_KEYS.contains(&key) {
            params.set(key, value);
        } else {
            kept.push(&s[start..end]);
        }
    }
    Some(kept.join(" "))
}

/// What the parameters mean once defaults and files are applied.
struct TlsSettings {
    mode: DatabaseTls,
    roots: Option<Roots>,
    client: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
}

impl TlsParams {
    /// libpq's rules: `sslrootcert=system` means `verify-full`; `require` with a root
    /// certificate (given, or `~/.postgresql/root.crt`) verifies the chain; verify-*
    /// without one is an error. Files are read now.
    fn resolve(
        self,
        config: &tokio_postgres::Config,
        dir: Option<&Path>,
    ) -> Result<TlsSettings, String> {
        let rootcert = self.sslrootcert.filter(|v| !v.is_empty());
        let system = rootcert.as_deref() == Some("system");
        let mut mode = match self.sslmode.as_deref() {
            None if system => DatabaseTls::VerifyFull,
            None => DatabaseTls::Prefer,
            Some(v) => DatabaseTls::parse(v)?,
        };
        if system && mode != DatabaseTls::VerifyFull {
            return Err(format!(
                "sslmode \"{mode}\" may not be used with sslrootcert=system (use verify-full)"
            ));
        }
        match mode {
            DatabaseTls::Disable => {
                return Ok(TlsSettings {
                    mode,
                    roots: None,
                    client: None,
                });
            }
            // Never verified, so no root is read; a client certificate still goes.
            DatabaseTls::Prefer => {
                return Ok(TlsSettings {
                    mode,
                    roots: None,
                    client: client_identity(self.sslcert, self.sslkey, dir)?,
                });
            }
            _ => {}
        }
        let roots = match rootcert {
            Some(_) if system => Some(system_roots()?),
            Some(path) => Some(pem_roots(Path::new(&path))?),
            None => match dir.map(|d| d.join("root.crt")) {
                Some(path) if path.exists() => Some(pem_roots(&path)?),
                default if mode.verifies() => {
                    let hint = default.map_or(String::new(), |p| {
                        format!(", or put one at {}", p.display())
                    });
                    return Err(format!(
                        "sslmode \"{mode}\" needs a root certificate: set sslrootcert=<file> \
                         or sslrootcert=system{hint}"
                    ));
                }
                _ => None,
            },
        };
        if mode == DatabaseTls::Require && roots.is_some() {
            mode = DatabaseTls::VerifyCa;
        }
        if mode == DatabaseTls::VerifyFull && config.get_hosts().is_empty() {
            return Err("sslmode \"verify-full\" needs a host name to check (host=)".into());
        }
        Ok(TlsSettings {
            mode,
            roots,
            client: client_identity(self.sslcert, self.sslkey, dir)?,
        })
    }
}

impl TlsSettings {
    fn client_config(mut self) -> Result<ClientConfig, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        // A verifying mode without roots is refused here too, never run unverified.
        let mut roots = || {
            self.roots
                .take()
                .ok_or_else(|| format!("sslmode \"{}\" needs a root certificate", self.mode))
        };
        let verifier = match self.mode {
            DatabaseTls::VerifyFull => Verifier::trusting(roots()?, true, provider.clone()),
            DatabaseTls::VerifyCa => Verifier::trusting(roots()?, false, provider.clone()),
            _ => Verifier::any(provider.clone()),
        };
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier));
        let mut config = match self.client {
            Some((certs, key)) => builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| format!("sslkey: does not go with sslcert: {e}"))?,
            None => builder.with_no_client_auth(),
        };
        // What libpq 17 sends; required by servers that take direct TLS.
        config.alpn_protocols = vec![b"postgresql".to_vec()];
        Ok(config)
    }
}

/// Where libpq looks for its default files: `~/.postgresql`
/// (`%APPDATA%\postgresql` on Windows).
fn libpq_dir() -> Option<PathBuf> {
    let (var, dir) = if cfg!(windows) {
        ("APPDATA", "postgresql")
    } else {
        ("HOME", ".postgresql")
    };
    let home = std::env::var_os(var).filter(|h| !h.is_empty())?;
    Some(PathBuf::from(home).join(dir))
}

fn read(param: &str, path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{param}: cannot read {}: {e}", path.display()))
}

fn pem_certs(param: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read(param, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{param}: {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{param}: {} holds no PEM certificate",
            path.display()
        ));
    }
    Ok(certs)
}

fn pem_roots(path: &Path) -> Result<Roots, String> {
    let certs = pem_certs("sslrootcert", path)?;
    Roots::new(certs).map_err(|e| format!("sslrootcert: {}: {e}", path.display()))
}

fn system_roots() -> Result<Roots, String> {
    let found = rustls_native_certs::load_native_certs();
    Roots::new(found.certs).map_err(|e| {
        let why: Vec<String> = found.errors.iter().map(ToString::to_string).collect();
        format!(
            "sslrootcert=system: no certificate in the platform's store ({e}; {})",
            why.join("; ")
        )
    })
}

/// The client certificate and key: `sslcert`/`sslkey`, or libpq's defaults
/// `~/.postgresql/postgresql.crt` and `.key` when that certificate exists.
fn client_identity(
    sslcert: Option<String>,
    sslkey: Option<String>,
    dir: Option<&Path>,
) -> Result<Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>, String> {
    let given = |v: Option<String>| v.filter(|v| !v.is_empty()).map(PathBuf::from);
    let (cert_path, key_path) = (given(sslcert), given(sslkey));
    let cert_path = match cert_path {
        Some(path) => path,
        None => match dir.map(|d| d.join("postgresql.crt")) {
            Some(path) if path.exists() => path,
            _ if key_path.is_some() => return Err("sslkey is set but sslcert is not".into()),
            _ => return Ok(None),
        },
    };
    let certs = pem_certs("sslcert", &cert_path)?;
    let Some(key_path) = key_path.or_else(|| dir.map(|d| d.join("postgresql.key"))) else {
        return Err("sslcert is set but sslkey is not".into());
    };
    let key = PrivateKeyDer::from_pem_slice(&read("sslkey", &key_path)?)
        .map_err(|e| format!("sslkey: {}: {e}", key_path.display()))?;
    Ok(Some((certs, key)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory with these files, removed on drop.
    struct Dir(PathBuf);

    impl Dir {
        fn new(files: &[(&str, &str)]) -> Dir {
            use std::sync::atomic::{AtomicU32, Ordering};
            static N: AtomicU32 = AtomicU32::new(0);
            let name = format!(
                "pgws_db_{}_{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            );
            let dir = std::env::temp_dir().join(name);
            std::fs::create_dir_all(&dir).unwrap();
            for (name, text) in files {
                std::fs::write(dir.join(name), text).unwrap();
            }
            Dir(dir)
        }

        fn path(&self, name: &str) -> String {
            self.0.join(name).display().to_string()
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A certificate and its key, PEM.
    fn cert() -> (String, String) {
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        (made.cert.pem(), made.signing_key.serialize_pem())
    }

    fn split(uri: &str) -> (String, TlsParams) {
        split_tls_params(uri).unwrap()
    }

    /// Parses with no libpq directory, so nothing of this machine's home counts.
    fn parse(uri: &str) -> Result<Database, String> {
        Database::parse_in(uri, None).map_err(|e| e.to_string())
    }

    fn mode(uri: &str) -> DatabaseTls {
        parse(uri).unwrap().tls
    }

    #[test]
    fn the_url_form_loses_only_the_tls_parameters() {
        let (rest, p) = split(
            "postgres://u:p@h:5432/db?sslmode=verify-full&application_name=x\
             &sslrootcert=%2Fetc%2Fca%20x.pem&connect_timeout=3&sslcert=c&sslkey=k",
        );
        assert_eq!(
            rest,
            "postgres://u:p@h:5432/db?application_name=x&connect_timeout=3"
        );
        assert_eq!(
            p,
            TlsParams {
                sslmode: Some("verify-full".into()),
                sslrootcert: Some("/etc/ca x.pem".into()),
                sslcert: Some("c".into()),
                sslkey: Some("k".into()),
            }
        );
        let (rest, p) = split("postgresql://h/db?sslmode=require");
        assert_eq!(rest, "postgresql://h/db");
        assert_eq!(p.sslmode.as_deref(), Some("require"));
        // A `?` in the password is not the query.
        let (rest, p) = split("postgres://u:p?sslmode=x@h/db?sslmode=disable&sslmode=require");
        assert_eq!(rest, "postgres://u:p?sslmode=x@h/db");
        assert_eq!(p.sslmode.as_deref(), Some("require"), "the last one wins");
        let (rest, p) = split("postgres://h/db");
        assert_eq!(
            (rest.as_str(), p),
            ("postgres://h/db", TlsParams::default())
        );
    }

    #[test]
    fn the_key_value_form_loses_only_the_tls_parameters() {
        let (rest, p) = split(
            "host=h  sslmode = 'verify-ca' password=a\\ b sslrootcert='/x/it\\'s a.pem' \
             dbname='my db' sslkey=k\\'ey",
        );
        assert_eq!(rest, "host=h password=a\\ b dbname='my db'");
        assert_eq!(p.sslmode.as_deref(), Some("verify-ca"));
        assert_eq!(p.sslrootcert.as_deref(), Some("/x/it's a.pem"));
        assert_eq!(p.sslkey.as_deref(), Some("k'ey"));
        let config: tokio_postgres::Config = rest.parse().unwrap();
        assert_eq!(config.get_password(), Some(&b"a b"[..]));
        assert_eq!(config.get_dbname(), Some("my db"));
    }

    #[test]
    fn a_string_that_does_not_tokenize_is_left_for_tokio_postgres_to_explain() {
        for bad in ["host=h sslmode", "host=h sslmode='x", "host=h sslmode= "] {
            let (rest, p) = split(bad);
            assert_eq!((rest.as_str(), p), (bad, TlsParams::default()));
            assert!(parse(bad).unwrap_err().starts_with("invalid database URI"));
        }
    }

    #[test]
    fn sslmode_maps_onto_tokio_postgres() {
        let cases = [
            ("postgres://h/db", DatabaseTls::Prefer, SslMode::Prefer),
            (
                "postgres://h/db?sslmode=disable",
                DatabaseTls::Disable,
                SslMode::Disable,
            ),
            (
                "host=h sslmode=prefer",
                DatabaseTls::Prefer,
                SslMode::Prefer,
            ),
            (
                "host=h sslmode=require",
                DatabaseTls::Require,
                SslMode::Require,
            ),
        ];
        for (uri, tls, ssl) in cases {
            let db = parse(uri).unwrap();
            assert_eq!((db.tls, db.config.get_ssl_mode()), (tls, ssl), "{uri}");
        }
        assert_eq!(DatabaseTls::VerifyCa.to_string(), "verify-ca");
    }

    #[test]
    fn verification_needs_a_root_and_reads_it_at_build_time() {
        let (ca, _) = cert();
        let dir = Dir::new(&[("ca.pem", &ca), ("junk.pem", "not a certificate")]);
        let ca = dir.path("ca.pem");
        for m in ["verify-ca", "verify-full"] {
            let db = parse(&format!("host=localhost sslmode={m} sslrootcert={ca}")).unwrap();
            assert_eq!(db.tls.as_str(), m);
            assert_eq!(db.config.get_ssl_mode(), SslMode::Require);
            let e = parse(&format!("host=localhost sslmode={m}")).unwrap_err();
            assert!(
                e.contains("needs a root certificate: set sslrootcert"),
                "{e}"
            );
        }
        // As in libpq, `require` with a root verifies the chain.
        assert_eq!(
            mode(&format!(
                "postgres://localhost/db?sslmode=require&sslrootcert={ca}"
            )),
            DatabaseTls::VerifyCa
        );
        // `prefer` never verifies, so its root is not even read.
        assert_eq!(mode("host=h sslrootcert=/nowhere.pem"), DatabaseTls::Prefer);
        let e = parse("host=h sslmode=verify-ca sslrootcert=/nowhere/ca.pem").unwrap_err();
        assert!(
            e.contains("sslrootcert: cannot read /nowhere/ca.pem"),
            "{e}"
        );
        let junk = dir.path("junk.pem");
        let e = parse(&format!("host=h sslmode=require sslrootcert={junk}")).unwrap_err();
        assert!(
            e.contains("sslrootcert: ") && e.contains("no PEM certificate"),
            "{e}"
        );
    }

    #[test]
    fn libpq_default_files_count_when_present() {
        let (ca, _) = cert();
        let home = Dir::new(&[("root.crt", &ca)]);
        let db = Database::parse_in("host=h sslmode=require", Some(&home.0)).unwrap();
        assert_eq!(db.tls, DatabaseTls::VerifyCa);
        let db = Database::parse_in("host=h sslmode=verify-full", Some(&home.0)).unwrap();
        assert_eq!(db.tls, DatabaseTls::VerifyFull);
        let empty = Dir::new(&[]);
        let e = Database::parse_in("host=h sslmode=verify-full", Some(&empty.0)).unwrap_err();
        let missing = empty.path("root.crt");
        assert!(
            e.to_string().contains(&format!("or put one at {missing}")),
            "{e}"
        );
        let db = Database::parse_in("host=h sslmode=require", Some(&empty.0)).unwrap();
        assert_eq!(db.tls, DatabaseTls::Require);
    }

    #[test]
    fn sslrootcert_system_means_verify_full() {
        assert_eq!(mode("host=h sslrootcert=system"), DatabaseTls::VerifyFull);
        assert_eq!(
            mode("postgres://h/db?sslmode=verify-full&sslrootcert=system"),
            DatabaseTls::VerifyFull
        );
        let e = parse("host=h sslmode=require sslrootcert=system").unwrap_err();
        assert!(
            e.contains("\"require\" may not be used with sslrootcert=system"),
            "{e}"
        );
    }

    #[test]
    fn bad_values_name_their_parameter() {
        let e = parse("postgres://h/db?sslmode=verify").unwrap_err();
        assert!(e.contains("sslmode \"verify\" is not one of"), "{e}");
        // tokio-postgres's own refusals keep their cause.
        let e = parse("host=h sslpassword=x").unwrap_err();
        assert!(e.ends_with("unknown option `sslpassword`"), "{e}");
        let e = parse("host=h sslmode=allow").unwrap_err();
        assert!(e.contains("sslmode \"allow\" is not supported"), "{e}");
        let e = parse("postgres://h/db?sslrootcert=%FF&sslmode=require").unwrap_err();
        assert!(e.contains("sslrootcert: not valid UTF-8"), "{e}");
        let e = parse("host=h sslmode=verify-full sslrootcert=system hostaddr=127.0.0.1");
        assert!(e.is_ok(), "host given");
        let e = parse("sslmode=verify-full sslrootcert=system hostaddr=127.0.0.1").unwrap_err();
        assert!(e.contains("needs a host name"), "{e}");
        // Errors from the environment name the variable, and never the password.
        let e = crate::config::Config::builder()
            .jwt_secret("reallyreallyreallyreallyverysafe")
            .database_url("postgres://u:hunter2@h/db?sslmode=verify-ful")
            .build_from_env()
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("PGWS_DB_URI: invalid database URI: sslmode"),
            "{e}"
        );
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn a_bare_hostaddr_names_the_tls_peer() {
        let db = parse("hostaddr=127.0.0.1 sslmode=require").unwrap();
        let hosts = db.config.get_hosts();
        assert_eq!(
            hosts,
            [tokio_postgres::config::Host::Tcp("127.0.0.1".into())]
        );
        let db = parse("hostaddr=127.0.0.1 sslmode=disable").unwrap();
        assert!(db.config.get_hosts().is_empty());
    }

    #[test]
    fn a_client_certificate_needs_its_key() {
        let (client, key) = cert();
        let (_, other_key) = cert();
        let dir = Dir::new(&[("c.pem", &client), ("k.pem", &key), ("o.pem", &other_key)]);
        let (c, k, o) = (dir.path("c.pem"), dir.path("k.pem"), dir.path("o.pem"));
        for m in ["prefer", "require"] {
            assert!(parse(&format!("host=h sslmode={m} sslcert={c} sslkey={k}")).is_ok());
        }
        let e = parse(&format!("host=h sslmode=require sslcert={c}")).unwrap_err();
        assert!(e.contains("sslcert is set but sslkey is not"), "{e}");
        let e = parse(&format!("host=h sslmode=require sslkey={k}")).unwrap_err();
        assert!(e.contains("sslkey is set but sslcert is not"), "{e}");
        let e = parse(&format!("host=h sslmode=require sslcert={c} sslkey={o}")).unwrap_err();
        assert!(e.contains("sslkey: does not go with sslcert"), "{e}");
        let e = parse(&format!("host=h sslmode=require sslcert={c} sslkey={c}")).unwrap_err();
        assert!(e.contains("sslkey: "), "{e}");
        // Default files: the key next to the certificate.
        let home = Dir::new(&[("postgresql.crt", &client), ("postgresql.key", &key)]);
        assert!(Database::parse_in("host=h sslmode=require", Some(&home.0)).is_ok());
        let half = Dir::new(&[("postgresql.crt", &client)]);
        let e = Database::parse_in("host=h sslmode=require", Some(&half.0)).unwrap_err();
        assert!(e.to_string().contains("sslkey: cannot read"), "{e}");
        // `disable` reads nothing.
        assert!(parse("host=h sslmode=disable sslcert=/nowhere").is_ok());
    }
}
