//! The private development database (`PGWS_DEV_DB`): when `PGWS_DB_URI` is not set
//! and it is asked for, or on an interactive start where the default database
//! cannot work, a PostgreSQL cluster of pgws's own, made with the server programs
//! of this machine, started for the run and stopped with it. Its data folder
//! survives restarts. It takes connections on a Unix socket only, in a folder only
//! the OS user running it may enter: no other user of the machine reaches it.
//!
//! Everything here blocks (it runs `initdb` and `pg_ctl`): call it off the runtime.

use std::{
    fs::{self, File},
    io::{self, Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use super::{DevDbMode, DevDbSettings};

/// How long each step of a probe (of the default address, of a left-over cluster)
/// waits.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long `pg_ctl` waits for the cluster to start or stop, in seconds.
const PG_CTL_WAIT_SECS: &str = "60";
/// The superuser `initdb` makes, as in the default database URL.
const SUPERUSER: &str = "postgres";
/// The OS user that runs the cluster when pgws runs as root (PostgreSQL refuses root).
const OS_USER: &str = "postgres";
/// The folder of the cluster's Unix socket, in the development database's folder.
const SOCKET_DIR: &str = "socket";
/// The port in the socket's name (`.s.PGSQL.5432`): libpq's default, so `psql -h`
/// needs no `-p`. The cluster opens no TCP port.
const SOCKET_PORT: u16 = 5432;
/// The settings pgws writes at every start, included by `postgresql.conf`.
const PGWS_CONF: &str = "pgws.conf";
/// The line of `postgresql.conf` that reads [`PGWS_CONF`], last.
const INCLUDE_PGWS_CONF: &str = "include 'pgws.conf'";
/// `pg_hba.conf`, written at every start: the Unix socket alone, whose folder only
/// the cluster's OS user (and root) may enter, is the gate.
const HBA: &str = "# Written by pgws at every start: connections on the Unix socket only, whose\n\
                   # folder only the OS user running the cluster may enter. No TCP.\n\
                   local all all trust\n";

/// Whether this process runs as root.
pub(crate) fn is_root() -> bool {
    #[cfg(unix)]
    {
        // SAFETY: geteuid has no preconditions and cannot fail.
        unsafe { libc::geteuid() == 0 }
    }
    #[cfg(not(unix))]
    {
        false
    }
}

/// Starts the development database when `settings` call for one: `Ok(None)` when
/// `auto` is not on an interactive start, or finds the default database usable, or
/// something there that is not plainly unusable (see [`probe`]). An error says what
/// to install or set instead.
pub(crate) fn prepare(settings: &DevDbSettings) -> Result<Option<DevDb>, String> {
    let Some(reason) = reason(settings) else {
        return Ok(None);
    };
    let Some(dir) = &settings.dir else {
        return Err(format!(
            "{reason}, and there is no home folder for a development database: set \
             PGWS_DEV_DB_DIR to a folder for it, or PGWS_DB_URI to a database"
        ));
    };
    let data = dir.join("data");
    let made_by = fs::read_to_string(data.join("PG_VERSION"))
        .ok()
        .map(|v| v.trim().to_owned());
    let bin = find_server_programs(made_by.as_deref())
        .map_err(|found| missing_programs(&reason, dir, made_by.as_deref(), &found))?;
    tracing::warn!(
        dir = %dir.display(),
        "development database: {reason}; starting a private PostgreSQL (PGWS_DEV_DB=off turns this off)"
    );
    let db = DevDb::start(dir, bin, reason)?;
    tracing::warn!(
        dir = %db.dir.display(),
        socket = %db.socket().display(),
        "development database started, on a Unix socket only; it stops with pgws"
    );
    Ok(Some(db))
}

/// Why a development database is needed, or `None` when it is not.
fn reason(settings: &DevDbSettings) -> Option<String> {
    let addr = settings.default_addr;
    match settings.mode {
        DevDbMode::On => Some("PGWS_DEV_DB is on".to_owned()),
        // A service waits for its database, which may come up a moment after it.
        DevDbMode::Auto if !settings.interactive => None,
        DevDbMode::Auto => match probe(addr) {
            Probe::Refused => Some(format!(
                "PGWS_DB_URI is not set and nothing answers at {addr}"
            )),
            Probe::NoEntry => Some(format!(
                "PGWS_DB_URI is not set and the database at {addr} does not let user \
                 {SUPERUSER} in without a password"
            )),
            Probe::Usable => None,
        },
    }
}

/// What answers at the default database's address, for `auto`.
#[derive(Debug, PartialEq, Eq)]
enum Probe {
    /// The connection is refused: nothing listens there.
    Refused,
    /// A PostgreSQL that asks user `postgres` for a password or turns it away, as a
    /// fresh Debian or Ubuntu install does: the default URL cannot work there.
    NoEntry,
    /// It lets user `postgres` in, or it is something else (a timeout, another
    /// error, not PostgreSQL at all): left to the layer, which reports and retries.
    Usable,
}

/// Sends a startup message as user `postgres` to `addr` and reads the first
/// answer; no password is ever sent.
fn probe(addr: SocketAddr) -> Probe {
    let mut stream = match TcpStream::connect_timeout(&addr, PROBE_TIMEOUT) {
        Ok(stream) => stream,
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => return Probe::Refused,
        Err(_) => return Probe::Usable,
    };
    let mut startup = bytes::BytesMut::new();
    let params = [("user", SUPERUSER), ("database", "postgres")];
    let answer = postgres_protocol::message::frontend::startup_message(params, &mut startup)
        .and_then(|()| stream.set_read_timeout(Some(PROBE_TIMEOUT)))
        .and_then(|()| stream.write_all(&startup))
        .and_then(|()| read_message(&mut stream));
    match answer {
        // AuthenticationOk: trust. Terminate, for a clean goodbye.
        Ok((b'R', body)) if body.starts_with(&[0, 0, 0, 0]) => {
            let _ = stream.write_all(&[b'X', 0, 0, 0, 4]);
            Probe::Usable
        }
        // Any other authentication request wants a password; closing without one
        // is what a client that has none does.
        Ok((b'R', _)) => Probe::NoEntry,
        Ok((b'E', body)) => match error_code(&body).as_deref() {
            // invalid_authorization_specification (no pg_hba.conf entry, peer),
            // invalid_password.
            Some("28000" | "28P01") => Probe::NoEntry,
            _ => Probe::Usable,
        },
        _ => Probe::Usable,
    }
}

/// One backend message: its tag and body.
fn read_message(stream: &mut TcpStream) -> io::Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 5];
    stream.read_exact(&mut head)?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]);
    // An error response is short; anything longer is not the answer we look for.
    let len = usize::try_from(len).unwrap_or(usize::MAX).clamp(4, 4096) - 4;
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body)?;
    Ok((head[0], body))
}

/// The SQLSTATE (field `C`) of an error response's body.
fn error_code(body: &[u8]) -> Option<String> {
    let mut fields = body.split(|&b| b == 0);
    fields.find_map(|field| match field.split_first() {
        Some((b'C', code)) => Some(String::from_utf8_lossy(code).into_owned()),
        _ => None,
    })
}

/// A running development database; stopped by [`stop`](Self::stop) or on drop.
#[derive(Debug)]
pub(crate) struct DevDb {
    /// Absolute.
    dir: PathBuf,
    bin: PathBuf,
    /// Why it was started, for the report.
    reason: String,
    /// Held while it runs: a second pgws on the same folder is told so.
    _lock: File,
    running: bool,
}

impl DevDb {
    fn start(dir: &Path, bin: PathBuf, reason: String) -> Result<DevDb, String> {
        let dir_error = |e: io::Error| {
            format!(
                "development database: cannot use {} (PGWS_DEV_DB_DIR): {e}",
                dir.display()
            )
        };
        // Absolute: the socket's folder is named in the cluster's settings.
        let dir = std::path::absolute(dir).map_err(dir_error)?;
        check_socket_path(&dir)?;
        fs::create_dir_all(&dir).map_err(dir_error)?;
        let lock = File::create(dir.join("pgws.lock")).map_err(dir_error)?;
        lock.try_lock().map_err(|_| {
            format!(
                "development database: another pgws uses {}: stop it, or set \
                 PGWS_DEV_DB_DIR to another folder",
                dir.display()
            )
        })?;
        let mut db = DevDb {
            dir,
            bin,
            reason,
            _lock: lock,
            running: false,
        };
        db.make_private()?;
        db.own_folder()?;
        if !db.data().join("PG_VERSION").exists() {
            db.init()?;
        }
        db.configure()?;
        // What root wrote goes to the cluster's user too.
        db.own_folder()?;
        db.clear_leftover()?;
        let log = db.dir.join("postgres.log");
        db.pg_ctl(&["-l", &log.display().to_string(), "start"])
            .map_err(|e| format!("{e}\n{}", log_tail(&log)))?;
        db.running = true;
        Ok(db)
    }

    /// The folder of its Unix socket.
    pub(crate) fn socket(&self) -> PathBuf {
        self.dir.join(SOCKET_DIR)
    }

    /// The layer's connection string: the Unix socket, as user `postgres`.
    pub(crate) fn url(&self) -> String {
        // libpq's quoting, which tokio-postgres reads: `\` escapes in '…'.
        let host = self.socket().display().to_string();
        let host = host.replace('\\', "\\\\").replace('\'', "\\'");
        format!("host='{host}' port={SOCKET_PORT} user={SUPERUSER} dbname=postgres sslmode=disable")
    }

    /// The `psql` command that reaches it, quoted for a POSIX shell.
    fn psql_command(&self) -> String {
        let socket = self.socket().display().to_string();
        // Only a NUL byte cannot be quoted, and no path holds one.
        let quoted = shlex::try_quote(&socket).map_or_else(|_| socket.clone(), |q| q.into_owned());
        format!("psql -h {quoted} -U {SUPERUSER} postgres")
    }

    /// What the start-up report says of it.
    pub(crate) fn report(&self) -> String {
        let who = if is_root() {
            format!("root and OS user {OS_USER}, who runs it,")
        } else {
            "your OS user (and root)".to_owned()
        };
        format!(
            "\nWARNING: development database: {}, so pgws started a private\n\
             WARNING: PostgreSQL in {} (PGWS_DEV_DB_DIR). It stops with pgws and keeps\n\
             WARNING: its data. It takes no TCP connections: only {who}\n\
             WARNING: can reach its Unix socket. PGWS_DEV_DB=off turns this off; a set\n\
             WARNING: PGWS_DB_URI always wins.\n\
             psql: {}\n",
            self.reason,
            self.dir.display(),
            self.psql_command()
        )
    }

    /// `pg_ctl stop -m fast`: sessions are ended, data is kept.
    pub(crate) fn stop(mut self) -> Result<(), String> {
        self.running = false;
        self.pg_ctl(&["-m", "fast", "stop"])?;
        tracing::info!(dir = %self.dir.display(), "development database stopped");
        Ok(())
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The folder and the socket's folder are the cluster user's alone (0700).
    fn make_private(&self) -> Result<(), String> {
        let socket = self.socket();
        for dir in [&self.dir, &socket] {
            fs::create_dir_all(dir)
                .and_then(|()| set_private(dir))
                .map_err(|e| format!("development database: {}: {e}", dir.display()))?;
        }
        Ok(())
    }

    /// For root, the folder goes to user `postgres`, who runs the cluster.
    fn own_folder(&self) -> Result<(), String> {
        if is_root() {
            let user = format!("{OS_USER}:");
            run(Command::new("chown").arg("-R").arg(&user).arg(&self.dir)).map_err(|e| {
                format!(
                    "development database: as root, pgws runs PostgreSQL as user \
                     {OS_USER}, and cannot give it {}: {e}. Run pgws as another user, \
                     or set PGWS_DB_URI",
                    self.dir.display()
                )
            })?;
        }
        Ok(())
    }

    /// `initdb`: `trust` on the Unix socket, TCP refused (it opens none anyway).
    fn init(&self) -> Result<(), String> {
        let data = self.data().display().to_string();
        let args = [
            "-D",
            &data,
            "-U",
            SUPERUSER,
            "--auth-local=trust",
            "--auth-host=reject",
            "-E",
            "UTF8",
            "--no-locale",
        ];
        self.pg("initdb", &args)
    }

    /// Writes `pg_hba.conf` and [`PGWS_CONF`] afresh, and has `postgresql.conf`
    /// include the latter last: a data folder an earlier pgws made, with TCP and
    /// `trust` on it, gets the same settings as a new one.
    fn configure(&self) -> Result<(), String> {
        let data = self.data();
        let write = |name: &str, text: &str| {
            let path = data.join(name);
            fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))
        };
        write("pg_hba.conf", HBA)?;
        write(PGWS_CONF, &self.settings())?;
        let conf = data.join("postgresql.conf");
        let text = fs::read_to_string(&conf).map_err(|e| format!("{}: {e}", conf.display()))?;
        if text.lines().any(|l| l.trim() == INCLUDE_PGWS_CONF) {
            return Ok(());
        }
        let mut file = fs::OpenOptions::new()
            .append(true)
            .open(&conf)
            .map_err(|e| format!("{}: {e}", conf.display()))?;
        write!(
            file,
            "\n# Added by pgws: its settings, rewritten at every start.\n{INCLUDE_PGWS_CONF}\n"
        )
        .map_err(|e| format!("{}: {e}", conf.display()))
    }

    /// [`PGWS_CONF`]: no TCP, the socket in [`socket`](Self::socket), for its owner.
    fn settings(&self) -> String {
        format!(
            "# Written by pgws at every start: a development database on a Unix socket\n\
             # only, in a folder only the OS user running it may enter.\n\
             listen_addresses = ''\n\
             port = {SOCKET_PORT}\n\
             unix_socket_directories = {}\n\
             unix_socket_permissions = 0700\n",
            socket_directories(&self.socket())
        )
    }

    /// A cluster left running by a pgws that did not stop it (killed, crashed) is
    /// stopped; a `postmaster.pid` whose server is gone is removed. This pgws holds
    /// the folder's lock, so neither belongs to a live pgws.
    fn clear_leftover(&self) -> Result<(), String> {
        let pid_file = self.data().join("postmaster.pid");
        let Ok(text) = fs::read_to_string(&pid_file) else {
            return Ok(());
        };
        let answers = takes_connections(&text);
        if answers && self.pg_ctl(&["status"]).is_ok() {
            tracing::warn!(
                dir = %self.dir.display(),
                "development database: stopping the cluster an earlier pgws left running"
            );
            return self.pg_ctl(&["-m", "fast", "stop"]);
        }
        tracing::info!(file = %pid_file.display(), "development database: removing a stale postmaster.pid");
        fs::remove_file(&pid_file).map_err(|e| format!("{}: {e}", pid_file.display()))
    }

    fn pg_ctl(&self, args: &[&str]) -> Result<(), String> {
        let data = self.data().display().to_string();
        let mut all = vec!["-D", &data, "-w", "-t", PG_CTL_WAIT_SECS];
        all.extend_from_slice(args);
        self.pg("pg_ctl", &all)
    }

    /// One of the server programs, as `postgres` when root.
    fn pg(&self, program: &str, args: &[&str]) -> Result<(), String> {
        let exe = self.bin.join(program);
        let mut cmd = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", OS_USER, "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        cmd.args(args).current_dir(&self.dir);
        run(&mut cmd)
            .map(drop)
            .map_err(|e| format!("development database: {} failed: {e}", exe.display()))
    }
}

impl Drop for DevDb {
    fn drop(&mut self) {
        // A panic or an early return must not leave the cluster behind.
        if self.running {
            let _ = self.pg_ctl(&["-m", "fast", "stop"]);
        }
    }
}

/// The socket's path must fit a Unix socket address (PostgreSQL would say so only
/// in its log) and hold no comma, which separates hosts for libpq and
/// tokio-postgres.
fn check_socket_path(dir: &Path) -> Result<(), String> {
    if dir.to_string_lossy().contains(',') {
        return Err(format!(
            "development database: {} has a comma, which cannot be in the path of a \
             socket that psql and pgws reach: set PGWS_DEV_DB_DIR to a folder without one",
            dir.display()
        ));
    }
    let path = dir.join(SOCKET_DIR).join(format!(".s.PGSQL.{SOCKET_PORT}"));
    let len = path.as_os_str().len();
    let max = max_socket_path();
    if len > max {
        return Err(format!(
            "development database: its socket, {}, would be {len} bytes long, over the \
             {max} a Unix socket allows: set PGWS_DEV_DB_DIR to a shorter folder",
            path.display()
        ));
    }
    Ok(())
}

/// Whether the server a `postmaster.pid` names answers: on its Unix socket
/// (line 5 is the socket's folder, line 4 the port), or on TCP (line 6 is the
/// address) for a cluster an earlier pgws started that way.
fn takes_connections(pid_file: &str) -> bool {
    let lines: Vec<&str> = pid_file.lines().map(str::trim).collect();
    let Some(port) = lines.get(3).and_then(|l| l.parse::<u16>().ok()) else {
        return false;
    };
    let on_socket = lines
        .get(4)
        .filter(|d| !d.is_empty())
        .is_some_and(|d| socket_answers(&Path::new(d).join(format!(".s.PGSQL.{port}"))));
    let on_tcp = lines.get(5).is_some_and(|a| !a.is_empty()) && {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        TcpStream::connect_timeout(&addr, PROBE_TIMEOUT).is_ok()
    };
    on_socket || on_tcp
}

#[cfg(unix)]
fn socket_answers(path: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(path).is_ok()
}

#[cfg(not(unix))]
fn socket_answers(_: &Path) -> bool {
    false
}

/// Mode 0700: for its owner alone.
#[cfg(unix)]
fn set_private(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(0o700))
}

#[cfg(not(unix))]
fn set_private(_: &Path) -> io::Result<()> {
    Ok(())
}

/// The longest path a Unix socket address holds (`sun_path` less its NUL).
fn max_socket_path() -> usize {
    #[cfg(unix)]
    {
        // SAFETY: sockaddr_un is plain old data, valid when zeroed.
        let addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        addr.sun_path.len() - 1
    }
    #[cfg(not(unix))]
    {
        107
    }
}

/// `unix_socket_directories` for one folder: a list element in double quotes
/// (`""` inside), in a settings-file string (`''` and `\\` inside), so that a
/// quote or a space in the path keeps its meaning.
fn socket_directories(dir: &Path) -> String {
    let element = format!("\"{}\"", dir.display().to_string().replace('"', "\"\""));
    format!("'{}'", element.replace('\\', "\\\\").replace('\'', "''"))
}

/// Runs `cmd`; its output, or what it said when it failed.
fn run(cmd: &mut Command) -> Result<Output, String> {
    let out = cmd.output().map_err(|e| e.to_string())?;
    if out.status.success() {
        return Ok(out);
    }
    Err(format!(
        "{}: {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    ))
}

/// The last lines of the cluster's log, which say why it did not start.
fn log_tail(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(10)..].join("\n");
    format!("{}:\n{tail}", log.display())
}

// ---------------------------------------------------------------------------
// Finding the server programs
// ---------------------------------------------------------------------------

/// A folder with `initdb` and `pg_ctl`: from `pg_config --bindir`, `PATH`, then the
/// usual places (highest version first). When the data folder was made by version
/// `made_by`, only that version will do. The error lists the versions found.
fn find_server_programs(made_by: Option<&str>) -> Result<PathBuf, Vec<String>> {
    let mut found = Vec::new();
    for dir in candidates() {
        let Some(version) = major_version(&dir) else {
            continue;
        };
        if made_by.is_none_or(|m| m == version) {
            return Ok(dir);
        }
        found.push(version);
    }
    Err(found)
}

fn candidates() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        dirs.push(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    }
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    for (parent, prefix) in [
        ("/usr/lib/postgresql", ""),
        ("/usr", "pgsql-"),
        ("/opt/homebrew/opt", "postgresql@"),
        ("/usr/local/opt", "postgresql@"),
        ("/Applications/Postgres.app/Contents/Versions", ""),
    ] {
        dirs.extend(versioned(Path::new(parent), prefix));
    }
    dirs.extend(
        [
            "/usr/local/pgsql/bin",
            "/opt/homebrew/opt/postgresql/bin",
            "/usr/local/opt/postgresql/bin",
        ]
        .map(PathBuf::from),
    );
    let mut seen = Vec::new();
    dirs.retain(|d| {
        let has = d.join("initdb").is_file() && d.join("pg_ctl").is_file();
        let real = fs::canonicalize(d).unwrap_or_else(|_| d.clone());
        let new = has && !seen.contains(&real);
        seen.push(real);
        new
    });
    dirs
}

/// `<parent>/<prefix><version>/bin`, highest version first.
fn versioned(parent: &Path, prefix: &str) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(parent) else {
        return Vec::new();
    };
    let mut found: Vec<(Vec<u32>, PathBuf)> = entries
        .filter_map(|e| {
            let e = e.ok()?;
            let name = e.file_name().into_string().ok()?;
            let version = name.strip_prefix(prefix)?;
            let key = version
                .split('.')
                .map(|n| n.parse().ok())
                .collect::<Option<Vec<u32>>>()?;
            Some((key, e.path().join("bin")))
        })
        .collect();
    found.sort();
    found.into_iter().rev().map(|(_, dir)| dir).collect()
}

/// The major version of the server programs in `dir`, as in `PG_VERSION`: `16`,
/// or `9.6` before 10.
fn major_version(dir: &Path) -> Option<String> {
    let out = Command::new(dir.join("pg_ctl"))
        .arg("--version")
        .output()
        .ok()?;
    // "pg_ctl (PostgreSQL) 16.4 (Debian 16.4-1)"
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text.split(") ").nth(1)?.split_whitespace().next()?;
    let mut parts = version.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.to_owned();
    if major.parse::<u32>().ok()? >= 10 {
        return Some(major);
    }
    Some(format!("{major}.{}", parts.next()?))
}

/// The error when no fitting server programs were found: what to install, or what
/// to set instead.
fn missing_programs(reason: &str, dir: &Path, made_by: Option<&str>, found: &[String]) -> String {
    if let Some(made_by) = made_by
        && !found.is_empty()
    {
        return format!(
            "{reason}, and the development database in {} was made by PostgreSQL \
             {made_by}, whose server programs are not installed (found: {}). Install \
             them, move that folder away to start afresh, or set PGWS_DB_URI",
            dir.display(),
            found.join(", ")
        );
    }
    format!(
        "{reason}, and PostgreSQL's server programs (initdb, pg_ctl) were not found \
         (in pg_config --bindir, PATH, /usr/lib/postgresql/*/bin, /usr/local/pgsql/bin \
         or Homebrew's folders), so pgws cannot start a development database. Install \
         them (Debian, Ubuntu: apt install postgresql; Fedora: dnf install \
         postgresql-server; macOS: brew install postgresql@17), or set PGWS_DB_URI to \
         your database (PGWS_DEV_DB=off waits for the default one instead)"
    )
}

/// The report's hint when the default database did not answer and no development
/// database was started.
pub(crate) fn unreachable_hint(settings: &DevDbSettings) -> String {
    format!(
        "\nPGWS_DB_URI is not set, so pgws uses the default database at {} and keeps \
         trying it. Set PGWS_DB_URI to your database, or PGWS_DEV_DB=on for a private \
         development database.\n",
        settings.default_addr
    )
}

#[cfg(test)]
mod tests {
    use std::{net::TcpListener, path::Path};

    use super::*;

    #[test]
    fn versions_sort_highest_first() {
        let root = std::env::temp_dir().join(format!("pgws_versions_{}", std::process::id()));
        for name in ["9.6", "15", "16", "notes", "postgresql@17"] {
            fs::create_dir_all(root.join(name)).unwrap();
        }
        let found = versioned(&root, "");
        let names: Vec<_> = found
            .iter()
            .map(|d| d.parent().unwrap().file_name().unwrap().to_str().unwrap())
            .collect();
        assert_eq!(names, ["16", "15", "9.6"]);
        assert_eq!(versioned(&root, "postgresql@").len(), 1);
        fs::remove_dir_all(&root).unwrap();
        assert!(versioned(Path::new("/no/such/folder"), "").is_empty());
    }

    fn settings(mode: DevDbMode, default_addr: SocketAddr) -> DevDbSettings {
        DevDbSettings {
            mode,
            dir: None,
            default_addr,
            interactive: true,
        }
    }

    /// A port that was just free: nothing answers there.
    fn refusing() -> SocketAddr {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    }

    #[test]
    fn auto_leaves_an_answering_default_address_alone() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let s = settings(DevDbMode::Auto, listener.local_addr().unwrap());
        assert!(prepare(&s).unwrap().is_none());
    }

    #[test]
    fn auto_steps_in_when_the_default_address_refuses() {
        let addr = refusing();
        // Without a folder it says so, which shows that it would have started one.
        let err = prepare(&settings(DevDbMode::Auto, addr)).unwrap_err();
        assert!(err.contains(&format!("nothing answers at {addr}")), "{err}");
        assert!(err.contains("PGWS_DEV_DB_DIR"), "{err}");
    }

    #[test]
    fn auto_never_steps_in_without_a_terminal() {
        let s = DevDbSettings {
            interactive: false,
            ..settings(DevDbMode::Auto, refusing())
        };
        assert_eq!(reason(&s), None);
        // Asked for, it starts whether or not there is a terminal.
        let on = DevDbSettings {
            mode: DevDbMode::On,
            ..s
        };
        assert_eq!(reason(&on).as_deref(), Some("PGWS_DEV_DB is on"));
    }

    #[test]
    fn a_socket_folder_with_quotes_keeps_its_meaning() {
        let dir = Path::new("/tmp/a, 'b\"c\\d");
        assert_eq!(socket_directories(dir), r#"'"/tmp/a, ''b""c\\d"'"#);
    }

    #[test]
    fn a_socket_path_with_a_comma_or_too_long_is_refused_with_the_variable() {
        assert_eq!(check_socket_path(Path::new("/tmp/pgws devdb")), Ok(()));
        let err = check_socket_path(Path::new("/tmp/a,b")).unwrap_err();
        assert!(
            err.contains("comma") && err.contains("PGWS_DEV_DB_DIR"),
            "{err}"
        );
        let long = format!("/tmp/{}", "d".repeat(max_socket_path()));
        let err = check_socket_path(Path::new(&long)).unwrap_err();
        assert!(
            err.contains("shorter") && err.contains("PGWS_DEV_DB_DIR"),
            "{err}"
        );
    }

    #[test]
    fn a_pid_file_of_a_server_that_is_gone_takes_no_connections() {
        let refused = refusing().port();
        let dir = std::env::temp_dir();
        let pid = format!("1\n/x\n0\n{refused}\n{}\n127.0.0.1\n", dir.display());
        assert!(!takes_connections(&pid));
        assert!(!takes_connections("1\n/x\n"));
    }

    #[test]
    fn an_error_response_gives_its_sqlstate() {
        let body = b"SFATAL\0VFATAL\0C28000\0Mno pg_hba.conf entry\0\0";
        assert_eq!(error_code(body).as_deref(), Some("28000"));
        assert_eq!(error_code(b"SFATAL\0\0"), None);
    }

    #[test]
    fn the_error_without_server_programs_names_the_package_and_the_variable() {
        let err = missing_programs("PGWS_DEV_DB is on", Path::new("/x"), None, &[]);
        assert!(err.contains("apt install postgresql"), "{err}");
        assert!(err.contains("brew install postgresql@"), "{err}");
        assert!(err.contains("PGWS_DB_URI"), "{err}");
        let err = missing_programs("on", Path::new("/x"), Some("15"), &["16".into()]);
        assert!(err.contains("made by PostgreSQL 15"), "{err}");
    }
}
