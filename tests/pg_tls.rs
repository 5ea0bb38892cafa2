//! TLS between pgws and PostgreSQL: every `sslmode` against a throwaway cluster that
//! serves TLS with a certificate made here, and against one that does not.
//!
//! Each case goes through pgws itself: a reader's channel gets a `NOTIFY` from SQL
//! (the listener's connection) and a writer's message arrives there as a `NOTIFY`
//! (the pool's connection); the server says whether those connections are TLS. A
//! refused case must leave the listener down with the reason in its log, refuse
//! readers with 503 and writers with 1013, and never fall back to plain TCP.
//!
//! One test on purpose: each case runs in its own single-threaded runtime, so its
//! layer (and its retries) end with it and a thread-local subscriber sees its logs
//! alone; tracing caches which callsites are enabled, so no other test may run
//! beside it in this binary.

mod common;

use std::{
    io::Write,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use common::{cluster::Cluster, *};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// A CA, a server certificate it signed for `localhost` and 127.0.0.1, a client
/// certificate for the role `certuser`, and an unrelated CA; PEM files in a
/// directory of their own (removed on drop).
struct Pki {
    dir: PathBuf,
    server_cert: String,
    server_key: String,
    ca_cert: String,
}

impl Pki {
    fn new() -> Pki {
        let ca = make_ca("pgws test CA");
        let wrong = make_ca("some other CA");
        let server = leaf(&ca, &["localhost", "127.0.0.1"], None);
        let client = leaf(&ca, &[], Some("certuser"));
        let dir = std::env::temp_dir().join(unique("pgws_pg_tls"));
        std::fs::create_dir_all(&dir).unwrap();
        for (name, pem) in [
            ("ca.pem", ca.pem()),
            ("wrong-ca.pem", wrong.pem()),
            ("client.pem", client.0.clone()),
            ("client.key", client.1.clone()),
        ] {
            std::fs::write(dir.join(name), pem).unwrap();
        }
        Pki {
            dir,
            server_cert: server.0,
            server_key: server.1,
            ca_cert: ca.pem(),
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn make_ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// A certificate signed by `ca`: a server's for `names`, or a client's for the
/// role `user`. Certificate and key, PEM.
fn leaf(
    ca: &CertifiedIssuer<'static, KeyPair>,
    names: &[&str],
    user: Option<&str>,
) -> (String, String) {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut params = CertificateParams::new(names).unwrap();
    params.extended_key_usages = match user {
        Some(user) => {
            params.distinguished_name.push(DnType::CommonName, user);
            vec![ExtendedKeyUsagePurpose::ClientAuth]
        }
        None => vec![ExtendedKeyUsagePurpose::ServerAuth],
    };
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, ca).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// A writer that keeps everything the subscriber prints.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// What a case must come to.
enum Expect {
    /// Both connections up, in plain TCP.
    Plain,
    /// Both connections up, in TLS.
    Tls,
    /// No connection; the log says this.
    Refused(&'static str),
}

/// The URI with an `application_name` of its own, so the server's view of this
/// case's connections can be told from others'.
fn with_app(uri: &str, app: &str) -> String {
    if !uri.contains("://") {
        format!("{uri} application_name={app}")
    } else if uri.contains('?') {
        format!("{uri}&application_name={app}")
    } else {
        format!("{uri}?application_name={app}")
    }
}

/// Runs one case in a runtime and a log capture of its own.
fn case(name: &str, uri: &str, admin: &str, expect: Expect) {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let app = unique("pgws_tls");
    let uri = with_app(uri, &app);
    rt.block_on(async {
        let cfg = config()
            .database_url(&uri)
            .subscribe_timeout(Duration::from_millis(300));
        let server = TestServer::start(cfg).await;
        match expect {
            Expect::Plain => works(name, &server, admin, &app, false).await,
            Expect::Tls => works(name, &server, admin, &app, true).await,
            Expect::Refused(reason) => refused(name, &server, admin, &app, reason, &capture).await,
        }
    });
}

async fn admin_client(admin: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(admin, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
}

/// The server's view of this case's connections: how many, and how many in TLS.
async fn seen_by_server(admin: &tokio_postgres::Client, app: &str) -> (i64, i64) {
    let row = admin
        .query_one(
            "select count(*), count(*) filter (where s.ssl) \
             from pg_stat_activity a join pg_stat_ssl s using (pid) \
             where a.application_name = $1",
            &[&app],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

async fn works(name: &str, server: &TestServer, admin: &str, app: &str, tls: bool) {
    for _ in 0..100 {
        if server.layer.is_listening() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        server.layer.is_listening(),
        "{name}: the listener never connected"
    );
    let chan = unique("tls");
    let mut reader = server
        .connect(&format!("/{}", token(claims("r", Some(&chan)))))
        .await;
    let mut writer = server
        .connect(&format!("/{}", token(claims("w", Some(&chan)))))
        .await;
    let admin = admin_client(admin).await;
    admin
        .execute("select pg_notify($1, 'from sql')", &[&chan])
        .await
        .unwrap();
    assert_eq!(recv_text(&mut reader).await, "from sql", "{name}");
    send_text(&mut writer, "from a socket").await;
    let got = recv_text(&mut reader).await;
    assert!(got.contains("from a socket"), "{name}: {got}");
    // The listener and the one pool connection the write took.
    let expected = if tls { (2, 2) } else { (2, 0) };
    assert_eq!(
        seen_by_server(&admin, app).await,
        expected,
        "{name}: (all, in TLS)"
    );
}

async fn refused(
    name: &str,
    server: &TestServer,
    admin: &str,
    app: &str,
    reason: &str,
    capture: &Capture,
) {
    // The listener's first attempt is logged at once.
    for _ in 0..100 {
        if capture.text().contains("listener cannot connect") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let chan = unique("tls");
    let read = format!("/{}", token(claims("r", Some(&chan))));
    let (status, body) = server.handshake(&read).await;
    assert_eq!(
        (status.as_u16(), body.as_str()),
        (503, "Database unavailable"),
        "{name}"
    );
    assert!(!server.layer.is_listening(), "{name}");
    let mut writer = server
        .connect(&format!("/{}", token(claims("w", Some(&chan)))))
        .await;
    send_text(&mut writer, "nowhere").await;
    let (code, why) = recv_close(&mut writer).await;
    assert_eq!(code, 1013, "{name}: {why}");
    let logs = capture.text();
    let listener = logs
        .lines()
        .find(|l| l.contains("listener cannot connect"))
        .unwrap_or_else(|| panic!("{name}: no listener warning in {logs}"));
    assert!(listener.contains(reason), "{name}: {listener}");
    let write = logs
        .lines()
        .find(|l| l.contains("NOTIFY failed"))
        .unwrap_or_else(|| panic!("{name}: no write warning in {logs}"));
    assert!(write.contains(reason), "{name}: {write}");
    // Never a silent fall back to plain TCP.
    let admin = admin_client(admin).await;
    assert_eq!(seen_by_server(&admin, app).await, (0, 0), "{name}");
}

#[test]
fn every_sslmode_through_pgws() {
    let pki = Pki::new();
    // Both clusters come up side by side.
    let (tls, plain) = std::thread::scope(|s| {
        let tls = s.spawn(|| {
            let c = Cluster::init().with_tls(&pki.server_cert, &pki.server_key, &pki.ca_cert);
            c.hba_first(&[
                "hostssl all certuser 127.0.0.1/32 cert",
                "hostssl all scramuser 127.0.0.1/32 scram-sha-256",
            ]);
            c.start();
            c
        });
        let plain = s.spawn(|| {
            let c = Cluster::init();
            c.start();
            c
        });
        (tls.join().unwrap(), plain.join().unwrap())
    });
    let admin = tls.uri();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            admin_client(&admin)
                .await
                .batch_execute(
                    "create role certuser login; \
                     create role scramuser login password 'scram-secret'",
                )
                .await
                .unwrap();
        });

    let port = tls.port;
    let ca = pki.path("ca.pem");
    let wrong_ca = pki.path("wrong-ca.pem");
    let local = format!("postgres://postgres@localhost:{port}/postgres");
    // Connects to 127.0.0.1 but names the server `wrong.example`.
    let misnamed = format!("postgres://postgres@wrong.example:{port}/postgres?hostaddr=127.0.0.1");
    let unknown = "invalid peer certificate: UnknownIssuer";
    let cases = [
        ("disable", format!("{local}?sslmode=disable"), Expect::Plain),
        ("prefer by default", local.clone(), Expect::Tls),
        ("require", format!("{local}?sslmode=require"), Expect::Tls),
        (
            "verify-ca ignores the name",
            format!("{misnamed}&sslmode=verify-ca&sslrootcert={ca}"),
            Expect::Tls,
        ),
        (
            "verify-full",
            format!("{local}?sslmode=verify-full&sslrootcert={ca}"),
            Expect::Tls,
        ),
        (
            "verify-full for an IP, key=value form",
            format!(
                "host=127.0.0.1 port={port} user=postgres dbname=postgres \
                 sslmode=verify-full sslrootcert='{ca}'"
            ),
            Expect::Tls,
        ),
        (
            "verify-full with a client certificate",
            format!(
                "postgres://certuser@localhost:{port}/postgres?sslmode=verify-full\
                 &sslrootcert={ca}&sslcert={}&sslkey={}",
                pki.path("client.pem"),
                pki.path("client.key")
            ),
            Expect::Tls,
        ),
        (
            "SCRAM with channel binding",
            format!(
                "postgres://scramuser:scram-secret@localhost:{port}/postgres?sslmode=require\
                 &channel_binding=require"
            ),
            Expect::Tls,
        ),
        (
            "verify-full with a wrong root",
            format!("{local}?sslmode=verify-full&sslrootcert={wrong_ca}"),
            Expect::Refused(unknown),
        ),
        (
            "verify-full with a wrong name",
            format!("{misnamed}&sslmode=verify-full&sslrootcert={ca}"),
            Expect::Refused("certificate not valid for name \"wrong.example\""),
        ),
        (
            "verify-ca with a wrong root",
            format!("{local}?sslmode=verify-ca&sslrootcert={wrong_ca}"),
            Expect::Refused(unknown),
        ),
        (
            "require with a wrong root verifies, as in libpq",
            format!("{local}?sslmode=require&sslrootcert={wrong_ca}"),
            Expect::Refused(unknown),
        ),
    ];
    for (name, uri, expect) in cases {
        case(name, &uri, &admin, expect);
    }

    self_signed_as_the_postgresql_manual_makes_it();

    let plain_admin = plain.uri();
    let plain_local = format!("postgres://postgres@localhost:{}/postgres", plain.port);
    case(
        "require without TLS on the server",
        &format!("{plain_local}?sslmode=require"),
        &plain_admin,
        Expect::Refused("server does not support TLS"),
    );
    case(
        "prefer without TLS on the server",
        &plain_local,
        &plain_admin,
        Expect::Plain,
    );
}

/// The server certificate of the PostgreSQL manual's recipe (`openssl req -x509`,
/// which OpenSSL 3 marks `CA:TRUE`, with the host name in the common name only),
/// trusted as its own root: `psql` takes it under `verify-full`, and so must pgws.
fn self_signed_as_the_postgresql_manual_makes_it() {
    let dir = std::env::temp_dir().join(unique("pgws_manual_cert"));
    std::fs::create_dir_all(&dir).unwrap();
    let made = std::process::Command::new("openssl")
        .args(["req", "-new", "-x509", "-days", "365", "-nodes", "-text"])
        .args([
            "-out",
            "server.crt",
            "-keyout",
            "server.key",
            "-subj",
            "/CN=dbhost",
        ])
        .current_dir(&dir)
        .output()
        .expect("openssl runs");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
    let (cert, key) = (read("server.crt"), read("server.key"));
    let cluster = Cluster::init().with_tls(&cert, &key, &cert);
    cluster.start();
    let (port, root) = (cluster.port, dir.join("server.crt").display().to_string());
    let named = |host: &str, mode: &str| {
        format!(
            "host={host} hostaddr=127.0.0.1 port={port} user=postgres dbname=postgres \
             sslmode={mode} sslrootcert='{root}'"
        )
    };
    let full = named("dbhost", "verify-full");
    if let Ok(psql) = std::process::Command::new("psql")
        .args([
            full.as_str(),
            "-Atc",
            "select ssl from pg_stat_ssl where pid = pg_backend_pid()",
        ])
        .output()
    {
        let out = String::from_utf8_lossy(&psql.stdout);
        assert_eq!(
            out.trim(),
            "t",
            "psql: {}",
            String::from_utf8_lossy(&psql.stderr)
        );
    }
    let admin = cluster.uri();
    let url = format!(
        "postgres://postgres@dbhost:{port}/postgres?hostaddr=127.0.0.1&sslmode=verify-full\
         &sslrootcert={root}"
    );
    case(
        "the manual's certificate, verify-full",
        &full,
        &admin,
        Expect::Tls,
    );
    case(
        "the manual's certificate, URL form",
        &url,
        &admin,
        Expect::Tls,
    );
    case(
        "the manual's certificate, verify-ca",
        &named("elsewhere", "verify-ca"),
        &admin,
        Expect::Tls,
    );
    case(
        "the manual's certificate, another host name",
        &named("otherhost", "verify-full"),
        &admin,
        Expect::Refused("certificate not valid for name \"otherhost\""),
    );
    let _ = std::fs::remove_dir_all(&dir);
}
