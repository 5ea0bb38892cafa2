//! The chat page of `examples/chat/` in a real browser: headless Chromium driven
//! over WebDriver (`chromedriver`), against the standalone server and the real
//! PostgreSQL.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them). Without
//! them the test prints a notice and passes, unless `CI` is set: then it fails.
//! Screenshots are kept under `target/browser/`.

mod common;

use pgws::server;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use base64::Engine as _;
use common::*;
use serde_json::{Value, json};

/// How long the page may take to show something.
const PAGE_WAIT: Duration = Duration::from_secs(20);

#[test]
fn the_chat_page_works_in_a_real_browser() {
    let Some(tools) = BrowserTools::find() else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    let chan = unique("browser");
    let meta = unique("browser_meta");
    // A database URL of our own, so the listener's backend can be found and killed.
    let app = unique("pgws_browser");
    let sep = if db_uri().contains('?') { '&' } else { '?' };
    let config = config()
        .database_url(format!("{}{sep}application_name={app}", db_uri()))
        .meta_channel(&meta)
        .meta_claims("name");
    let mut settings = server::Settings::new(config.build().unwrap());
    settings.root_path = Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/chat"));
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server_task = rt.spawn(server::run(listener, settings, async {
        let _ = stopped.await;
    }));

    let driver = ChromeDriver::start(&tools);
    let alice = driver.session("alice");
    let bob = driver.session("bob");

    let alice_token = token(json!({"mode": "rw", "name": "alice", "exp": now() + 3600}));
    let bob_token = token(json!({"mode": "rw", "name": "bob", "exp": now() + 3600}));
    let page = |jwt: &str| format!("http://{addr}/#token={jwt}&channel={chan}&meta={meta}");

    // Alice opens the page the way the server prints it: the token in the fragment.
    alice.goto(&page(&alice_token));
    alice.wait_for_text("#status-text", "Connected to");
    alice.wait_for_text("#meta-status-text", "Watching");
    // The token left the address bar.
    let url = alice.script("return location.href", json!([]));
    assert!(
        !url.as_str().unwrap().contains(&alice_token),
        "token still in {url}"
    );

    bob.goto(&page(&bob_token));
    bob.wait_for_text("#status-text", "Connected to");
    // Bob's sockets opening show on Alice's meta panel.
    alice.wait_for_text("#meta-log", "bob joined");

    // One page sends, the other shows it (and the sender sees its own message).
    alice.type_into("#message", "Hello from Alice\u{E007}");
    bob.wait_for_text("#messages", "alice: Hello from Alice");
    alice.wait_for_text("#messages", "you: Hello from Alice");
    bob.type_into("#message", "Hi Alice, Bob here");
    bob.click("#send");
    alice.wait_for_text("#messages", "bob: Hi Alice, Bob here");

    // A NOTIFY from SQL shows in both, raw text and JSON alike.
    rt.block_on(notify(&chan, "a NOTIFY from SQL"));
    rt.block_on(notify(&chan, r#"{"id":42,"body":"row changed"}"#));
    for page in [&alice, &bob] {
        page.wait_for_text("#messages", "notification: a NOTIFY from SQL");
        page.wait_for_text("#messages", "\"body\": \"row changed\"");
    }
    bob.screenshot("chat.png");

    // At phone width the page still fits.
    bob.set_window_size(390, 844);
    let overflow = bob.script(
        "return document.documentElement.scrollWidth > window.innerWidth",
        json!([]),
    );
    assert_eq!(
        overflow,
        json!(false),
        "the page scrolls sideways on a phone"
    );
    bob.screenshot("chat-phone.png");
    bob.set_window_size(1100, 850);

    // The listener loses its connection: both pages are closed with 1012, say so,
    // reconnect by themselves and warn that messages may have been missed.
    let killed = rt.block_on(terminate_backends(&app));
    assert!(killed >= 1, "no backend to terminate");
    for page in [&alice, &bob] {
        page.wait_for_text("#messages", "may have been missed");
        page.wait_for_text("#status-text", "Connected to");
    }
    rt.block_on(notify(&chan, "after the restart"));
    alice.wait_for_text("#messages", "notification: after the restart");
    bob.wait_for_text("#messages", "notification: after the restart");
    alice.screenshot("chat-reconnected.png");

    // Over TLS the page connects with wss: to the same origin, and its messages go
    // both ways (the browser trusts the test's certificate: acceptInsecureCerts).
    let secure = rt.block_on(start_tls_server(meta.clone()));
    alice.goto(&format!(
        "https://127.0.0.1:{}/#token={alice_token}&channel={chan}",
        secure.port()
    ));
    alice.wait_for_text("#status-text", "Connected to");
    let protocol = alice.script("return location.protocol", json!([]));
    assert_eq!(protocol, json!("https:"));
    // The page came over HTTP/2 (ALPN); Chromium then opens its WebSocket on that
    // connection as an extended CONNECT stream (RFC 8441), which the chat uses.
    let next_hop = alice.script(
        "return performance.getEntriesByType('navigation')[0].nextHopProtocol",
        json!([]),
    );
    assert_eq!(next_hop, json!("h2"));
    alice.type_into("#message", "Hello over wss\u{E007}");
    alice.wait_for_text("#messages", "you: Hello over wss");
    bob.wait_for_text("#messages", "alice: Hello over wss");

    // A token signed with another secret: the refusal in words, no reconnect loop.
    let forged = token_with(
        &json!({"mode": "rw", "name": "mallory"}),
        b"not the server's secret",
    );
    alice.goto(&format!("http://{addr}/#token={forged}&channel={chan}"));
    alice.wait_for_text("#status-text", "refused");
    let status = alice.text("#status-text");
    assert!(status.contains("Invalid token"), "{status}");
    assert_eq!(
        alice.script(
            "return document.getElementById('status').dataset.state",
            json!([])
        ),
        json!("refused")
    );
    alice.screenshot("chat-refused.png");

    // A token that says why by itself: expired.
    let expired = token(json!({"mode": "rw", "exp": now() - 60}));
    alice.goto(&format!("http://{addr}/#token={expired}&channel={chan}"));
    alice.wait_for_text("#status-text", "expired");

    drop(alice);
    drop(bob);
    let _ = stop.send(());
    rt.block_on(async {
        tokio::time::timeout(WAIT * 3, server_task)
            .await
            .expect("the server did not stop")
            .unwrap();
    });
}

#[test]
fn the_chat_page_replays_a_history_channel() {
    let Some(tools) = BrowserTools::find() else {
        return;
    };
    let mut site = HistorySite::start("browser_hist", "examples/chat");
    let (addr, chan) = (site.addr, site.chan.clone());
    let driver = ChromeDriver::start(&tools);
    let carol = driver.session("carol");
    let jwt = token(json!({"mode": "r", "name": "carol", "exp": now() + 3600}));
    let page = format!("http://{addr}/#token={jwt}&channel={chan}");

    // Kept before the page opens: shown on load (history=50), then live ones.
    site.publish("kept before");
    carol.goto(&page);
    carol.wait_for_text("#status-text", "Connected to");
    carol.wait_for_text("#messages", "notification: kept before");
    site.publish("live one");
    carol.wait_for_text("#messages", "notification: live one");
    // A plain NOTIFY comes as {"channel","payload"} on such a socket: its payload shows.
    site.notify("a plain NOTIFY");
    carol.wait_for_text("#messages", "notification: a plain NOTIFY");

    // The server restarts (1001); what is published meanwhile is replayed once the
    // page is back (since=), with no duplicate and no "may have been missed".
    site.stop();
    let away = ["away 1", "away 2", "away 3"];
    for text in away {
        site.publish(text);
    }
    site.restart();
    for text in away {
        carol.wait_for_text("#messages", &format!("notification: {text}"));
    }
    carol.wait_for_text("#status-text", "Connected to");
    let shown = carol.text("#messages");
    for text in ["kept before", "live one"].iter().chain(&away) {
        // Each entry's text is followed by its time on a line of its own.
        assert_eq!(
            shown.matches(&format!("notification: {text}\n")).count(),
            1,
            "{text:?} is not shown exactly once in {shown:?}"
        );
    }
    assert!(!shown.contains("may have been missed"), "{shown}");
    carol.screenshot("chat-history.png");

    // A fresh page load shows the kept messages.
    carol.goto("about:blank");
    carol.goto(&page);
    carol.wait_for_text("#status-text", "Connected to");
    for text in ["kept before", "live one"].iter().chain(&away) {
        carol.wait_for_text("#messages", &format!("notification: {text}"));
    }

    drop(carol);
    site.stop();
}

#[test]
fn an_event_stream_page_resumes_a_history_channel_after_a_restart() {
    let Some(tools) = BrowserTools::find() else {
        return;
    };
    let mut site = HistorySite::start("browser_sse", "examples/sse");
    let (addr, chan) = (site.addr, site.chan.clone());
    let driver = ChromeDriver::start(&tools);
    let dave = driver.session("dave");
    let jwt = token(json!({"mode": "r", "exp": now() + 3600}));
    dave.goto(&format!("http://{addr}/#token={jwt}&channel={chan}"));
    dave.wait_for_text("#status", "open");
    // A NOTIFY from SQL and a published message, each a message event.
    site.notify("a plain NOTIFY");
    dave.wait_for_text("#messages", "message: a plain NOTIFY");
    site.publish("live one");
    dave.wait_for_text("#messages", "message: live one");

    // The server restarts: the stream's close event shows, what is published
    // meanwhile comes once EventSource is back by itself (Last-Event-ID).
    site.stop();
    dave.wait_for_text("#messages", "closed: 1001 Going away");
    let away = ["away 1", "away 2", "away 3"];
    for text in away {
        site.publish(text);
    }
    site.restart();
    dave.wait_for_text("#messages", "message: away 3");
    site.publish("after the restart");
    dave.wait_for_text("#messages", "message: after the restart");
    // Everything once, in order: nothing missed, nothing twice.
    let shown = dave.script(
        "return [...document.querySelectorAll('#messages li')].map(li => li.textContent)",
        json!([]),
    );
    assert_eq!(
        shown,
        json!([
            "message: a plain NOTIFY",
            "message: live one",
            "closed: 1001 Going away",
            "message: away 1",
            "message: away 2",
            "message: away 3",
            "message: after the restart",
        ])
    );
    dave.screenshot("event-stream.png");

    drop(dave);
    site.stop();
}

/// The standalone server with history on one fresh channel, serving one of the
/// example pages, restartable on the same port.
struct HistorySite {
    rt: tokio::runtime::Runtime,
    chan: String,
    schema: DropSchema,
    pages: &'static str,
    addr: SocketAddr,
    serving: Option<Serving>,
}

impl HistorySite {
    /// Starts it with history on a channel named `<name>_…` and waits until ready.
    fn start(name: &str, pages: &'static str) -> HistorySite {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let chan = unique(name);
        let schema = DropSchema(unique(&format!("pgws_{name}")));
        let mut site = HistorySite {
            rt,
            chan,
            schema,
            pages,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            serving: None,
        };
        let settings = site.settings();
        let (addr, admin, serving) = site.rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            (
                listener.local_addr().unwrap(),
                admin.local_addr().unwrap(),
                Serving::start(listener, Some(admin), settings),
            )
        });
        site.addr = addr;
        site.serving = Some(serving);
        wait_ready(admin);
        site
    }

    fn settings(&self) -> server::Settings {
        let config = config()
            .history(&self.chan)
            .history_schema(self.schema.0.clone());
        let mut settings = server::Settings::new(config.build().unwrap());
        settings.root_path = Some(Path::new(env!("CARGO_MANIFEST_DIR")).join(self.pages));
        settings
    }

    fn publish(&self, payload: &str) {
        self.rt.block_on(self.schema.publish(&self.chan, payload));
    }

    fn notify(&self, payload: &str) {
        self.rt.block_on(notify(&self.chan, payload));
    }

    /// Stops the server (sockets get 1001).
    fn stop(&mut self) {
        if let Some(serving) = self.serving.take() {
            self.rt.block_on(serving.stop());
        }
    }

    /// Starts it again on the same port.
    fn restart(&mut self) {
        let settings = self.settings();
        let addr = self.addr;
        self.serving = Some(self.rt.block_on(async {
            let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
            Serving::start(listener, None, settings)
        }));
    }
}

/// A schema of the history store, dropped at the end (also after a failure).
struct DropSchema(String);

impl DropSchema {
    async fn publish(&self, channel: &str, payload: &str) -> i64 {
        let sql = format!("select \"{}\".publish($1, $2)", self.0);
        db().await
            .query_one(&sql, &[&channel, &payload])
            .await
            .unwrap()
            .get(0)
    }
}

impl Drop for DropSchema {
    fn drop(&mut self) {
        cleanup_sql(vec![format!(
            "drop schema if exists \"{}\" cascade",
            self.0
        )]);
    }
}

/// The standalone server, stopped on demand.
struct Serving {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Serving {
    fn start(
        listener: tokio::net::TcpListener,
        admin: Option<tokio::net::TcpListener>,
        settings: server::Settings,
    ) -> Serving {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server::serve(listener, admin, settings, async {
            let _ = stopped.await;
        }));
        Serving { stop, task }
    }

    /// Closes the sockets (1001) and waits until the server is done.
    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(WAIT * 3, self.task)
            .await
            .expect("the server did not stop")
            .unwrap();
    }
}

/// Waits until the admin listener's `/ready` answers 200 (store and listener ready).
fn wait_ready(admin: SocketAddr) {
    let deadline = Instant::now() + PAGE_WAIT;
    loop {
        let mut answer = String::new();
        if let Ok(mut s) = TcpStream::connect_timeout(&admin, Duration::from_secs(5)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = s.write_all(b"GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let _ = s.read_to_string(&mut answer);
        }
        if answer.starts_with("HTTP/1.1 200") {
            return;
        }
        assert!(Instant::now() < deadline, "never ready: {answer}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The standalone server with TLS (a certificate made here) on the same database and
/// meta channel; it runs until the runtime ends.
async fn start_tls_server(meta: String) -> SocketAddr {
    let made = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let dir = std::env::temp_dir().join(unique("pgws_browser_tls"));
    std::fs::create_dir_all(&dir).unwrap();
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    let mut settings = server::Settings::new(config().meta_channel(meta).build().unwrap());
    settings.tls = Some(server::tls_config(&cert, &key).unwrap());
    let _ = std::fs::remove_dir_all(&dir);
    settings.root_path = Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/chat"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(server::run(listener, settings, std::future::pending()));
    addr
}

// ---------------------------------------------------------------------------
// Finding Chromium
// ---------------------------------------------------------------------------

struct BrowserTools {
    chromium: PathBuf,
    chromedriver: PathBuf,
}

impl BrowserTools {
    /// The browser and its driver, or `None` (with a notice) on a dev machine
    /// without them. Under CI their absence fails the test.
    fn find() -> Option<BrowserTools> {
        let chromium = std::env::var_os("PGWS_CHROMIUM")
            .map(PathBuf::from)
            .or_else(|| {
                first_existing(&[
                    "/usr/lib/chromium/chromium",
                    "/usr/bin/chromium",
                    "/usr/bin/chromium-browser",
                ])
            });
        let chromedriver = std::env::var_os("PGWS_CHROMEDRIVER")
            .map(PathBuf::from)
            .or_else(|| first_existing(&["/usr/bin/chromedriver"]));
        match (chromium, chromedriver) {
            (Some(chromium), Some(chromedriver)) => Some(BrowserTools {
                chromium,
                chromedriver,
            }),
            _ => {
                let help = "Chromium and chromedriver are needed for the browser test: \
                            apt-get install chromium chromium-driver";
                if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) {
                    panic!("{help} (CI is set, so this is a failure)");
                }
                eprintln!("NOTICE: skipping the browser test. {help}");
                None
            }
        }
    }
}

fn first_existing(paths: &[&str]) -> Option<PathBuf> {
    paths.iter().map(PathBuf::from).find(|p| p.is_file())
}

fn artifacts() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    let dir = target.join("browser");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

// ---------------------------------------------------------------------------
// A small WebDriver client (W3C protocol over HTTP/1.1, blocking)
// ---------------------------------------------------------------------------

/// `chromedriver` on a free port, killed on drop.
struct ChromeDriver {
    child: Child,
    port: u16,
    chromium: PathBuf,
}

impl ChromeDriver {
    fn start(tools: &BrowserTools) -> ChromeDriver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = artifacts().join("chromedriver.log");
        let child = Command::new(&tools.chromedriver)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", tools.chromedriver.display()));
        let driver = ChromeDriver {
            child,
            port,
            chromium: tools.chromium.clone(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(status) = http(port, "GET", "/status", None)
                && status["ready"] == json!(true)
            {
                return driver;
            }
            assert!(Instant::now() < deadline, "chromedriver did not get ready");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A fresh headless Chromium with its own profile directory.
    fn session(&self, name: &str) -> Session {
        let profile = std::env::temp_dir().join(unique(&format!("pgws_chromium_{name}")));
        std::fs::create_dir_all(&profile).unwrap();
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1100,850",
            "--lang=en-US",
        ]
        .iter()
        .map(|a| (*a).to_owned())
        .chain([format!("--user-data-dir={}", profile.display())])
        .collect::<Vec<_>>();
        let caps = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    // For the test's self-signed certificate only.
                    "acceptInsecureCerts": true,
                    "goog:chromeOptions": {
                        "binary": self.chromium.display().to_string(),
                        "args": args,
                    },
                },
            },
        });
        let created = http(self.port, "POST", "/session", Some(&caps))
            .unwrap_or_else(|e| panic!("cannot start Chromium: {e}"));
        let id = created["sessionId"]
            .as_str()
            .expect("a session id")
            .to_owned();
        Session {
            port: self.port,
            id,
            name: name.to_owned(),
            profile,
        }
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One browser window; the browser quits on drop.
struct Session {
    port: u16,
    id: String,
    name: String,
    profile: PathBuf,
}

impl Session {
    fn cmd(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, String> {
        http(
            self.port,
            method,
            &format!("/session/{}{path}", self.id),
            body,
        )
    }

    fn must(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        self.cmd(method, path, body)
            .unwrap_or_else(|e| panic!("{}: {method} {path}: {e}", self.name))
    }

    fn goto(&self, url: &str) {
        self.must("POST", "/url", Some(&json!({ "url": url })));
    }

    fn script(&self, script: &str, args: Value) -> Value {
        self.must(
            "POST",
            "/execute/sync",
            Some(&json!({ "script": script, "args": args })),
        )
    }

    /// The rendered text of the first element matching `css` (empty when none).
    fn text(&self, css: &str) -> String {
        let v = self.script(
            "const e = document.querySelector(arguments[0]); return e ? e.innerText : ''",
            json!([css]),
        );
        v.as_str().unwrap_or_default().to_owned()
    }

    /// Waits until the element's text contains `wanted`; on a timeout, keeps a
    /// screenshot and fails with what the page shows.
    fn wait_for_text(&self, css: &str, wanted: &str) {
        let deadline = Instant::now() + PAGE_WAIT;
        loop {
            let text = self.text(css);
            if text.contains(wanted) {
                return;
            }
            if Instant::now() >= deadline {
                let shot = format!("failure-{}.png", self.name);
                self.screenshot(&shot);
                panic!(
                    "{}: {css} never showed {wanted:?}.\n{css} shows: {text:?}\nstatus: {:?}\n\
                     (screenshot: target/browser/{shot})",
                    self.name,
                    self.text("#status-text"),
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn element(&self, css: &str) -> String {
        let found = self.must(
            "POST",
            "/element",
            Some(&json!({ "using": "css selector", "value": css })),
        );
        found
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .expect("an element reference")
            .to_owned()
    }

    /// Types like a person: key events, `\u{E007}` is Enter.
    fn type_into(&self, css: &str, text: &str) {
        let el = self.element(css);
        self.must(
            "POST",
            &format!("/element/{el}/value"),
            Some(&json!({ "text": text })),
        );
    }

    fn click(&self, css: &str) {
        let el = self.element(css);
        self.must("POST", &format!("/element/{el}/click"), Some(&json!({})));
    }

    fn set_window_size(&self, width: u32, height: u32) {
        self.must(
            "POST",
            "/window/rect",
            Some(&json!({ "width": width, "height": height })),
        );
    }

    /// Saves a PNG of the window under `target/browser/`.
    fn screenshot(&self, file: &str) {
        let Ok(png) = self.cmd("GET", "/screenshot", None) else {
            return;
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap_or_default())
            .expect("a base64 screenshot");
        std::fs::write(artifacts().join(file), bytes).unwrap();
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = http(self.port, "DELETE", &format!("/session/{}", self.id), None);
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// One WebDriver command: the `value` of the answer, or the error's message.
fn http(port: u16, method: &str, path: &str, body: Option<&Value>) -> Result<Value, String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let body = body.map(Value::to_string).unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
         Content-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(body.as_bytes()))
        .map_err(|e| e.to_string())?;
    // chromedriver keeps the connection open: read the head, then the announced body.
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let split = loop {
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = stream.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("the connection closed before the HTTP header".into());
        }
        raw.extend_from_slice(&buf[..n]);
    };
    let header = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let mut content = raw[split + 4..].to_vec();
    let length = header.lines().find_map(|l| {
        l.strip_prefix("content-length:")
            .and_then(|v| v.trim().parse::<usize>().ok())
    });
    match length {
        Some(length) => {
            while content.len() < length {
                let n = stream.read(&mut buf).map_err(|e| e.to_string())?;
                if n == 0 {
                    return Err("the connection closed inside the body".into());
                }
                content.extend_from_slice(&buf[..n]);
            }
            content.truncate(length);
        }
        None => {
            stream
                .read_to_end(&mut content)
                .map_err(|e| e.to_string())?;
            if header.contains("transfer-encoding: chunked") {
                content = dechunk(&content);
            }
        }
    }
    let status: u16 = header
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("no HTTP status")?;
    let value: Value = serde_json::from_slice(&content).map_err(|e| e.to_string())?;
    let value = value.get("value").cloned().unwrap_or(Value::Null);
    if status >= 400 {
        return Err(format!(
            "{status}: {} {}",
            value["error"].as_str().unwrap_or_default(),
            value["message"].as_str().unwrap_or_default()
        ));
    }
    Ok(value)
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(line_end) = data.windows(2).position(|w| w == b"\r\n") {
        let size = String::from_utf8_lossy(&data[..line_end]);
        let size =
            usize::from_str_radix(size.split(';').next().unwrap_or("0").trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = line_end + 2;
        out.extend_from_slice(&data[start..start + size]);
        data = &data[start + size + 2..];
    }
    out
}
