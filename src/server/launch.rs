//! The `pgws` program: settings from the environment, the listeners, the
//! development database when called for, the start-up report, then serving until
//! SIGINT or SIGTERM.

use std::{future::Future, net::SocketAddr, process::ExitCode};

use tokio::net::TcpListener;

use super::{
    DATABASE_CHECK_TIMEOUT, Server, Settings, database_reachable,
    devdb::{self, DevDb},
    logging, startup_report,
};

/// The `pgws` program: reads the `PGWS_*` variables, logs to stderr, prints the
/// start-up report to stdout and serves until SIGINT (Ctrl-C) or SIGTERM. A bad
/// variable or an address that cannot be bound ends it at once, with the reason
/// on stderr and a failure exit code.
pub async fn main() -> ExitCode {
    let settings = match Settings::from_env() {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("pgws: {e}");
            return ExitCode::FAILURE;
        }
    };
    logging::init(settings.log_format);
    // Printed, not logged, so it shows whatever the log level.
    let report = |text: String| print!("{text}");
    match launch(settings, shutdown_signal(), report).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgws: {e}");
            ExitCode::FAILURE
        }
    }
}

/// What [`main`] does once the settings are read: binds [`Settings::addr`] (and
/// [`Settings::admin_addr`]), starts the development database when
/// [`Settings::dev_db`] calls for one (see [`DevDbSettings`](super::DevDbSettings)),
/// hands the start-up report to `report` once the database check is done, serves
/// until `shutdown` resolves, then stops the development database.
///
/// The error, for a listener that cannot be bound or a development database that
/// cannot start, names the variable to look at.
pub async fn launch(
    mut settings: Settings,
    shutdown: impl Future<Output = ()>,
    report: impl FnOnce(String) + Send + 'static,
) -> Result<(), String> {
    let listener = bind(settings.addr).map_err(|e| {
        format!(
            "PGWS_HOST/PGWS_PORT: cannot listen on {}: {e}",
            settings.addr
        )
    })?;
    let admin = match settings.admin_addr {
        None => None,
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|e| format!("PGWS_ADMIN_ADDR: cannot listen on {addr}: {e}"))?,
        ),
    };
    let dev_db = start_dev_db(&mut settings).await?;
    let addr = listener.local_addr().unwrap_or(settings.addr);
    let admin_addr = admin.as_ref().and_then(|a| a.local_addr().ok());
    let admin_shown = admin_addr.map_or_else(|| "off".to_owned(), |a| a.to_string());
    tracing::info!(%addr, admin = %admin_shown, "listening");
    let server = Server::new(settings.clone(), admin.is_some());
    let layer = server.layer().clone();
    let dev_text = dev_db.as_ref().map(DevDb::report);
    tokio::spawn(async move {
        let reachable = database_reachable(&layer, DATABASE_CHECK_TIMEOUT).await;
        let mut text = startup_report(&settings, addr, admin_addr, Some(reachable));
        match (dev_text, &settings.dev_db) {
            (Some(dev), _) => text.push_str(&dev),
            (None, Some(dev_db)) if !reachable => {
                text.push_str(&devdb::unreachable_hint(dev_db));
            }
            _ => {}
        }
        report(text);
    });
    server.serve(listener, admin, shutdown).await;
    match dev_db {
        None => Ok(()),
        Some(db) => tokio::task::spawn_blocking(move || db.stop())
            .await
            .map_err(|e| format!("development database: {e}"))?,
    }
}

/// The development database, when the settings call for one and it is needed;
/// the layer's configuration then points at it.
async fn start_dev_db(settings: &mut Settings) -> Result<Option<DevDb>, String> {
    let Some(plan) = settings.dev_db.clone() else {
        return Ok(None);
    };
    let Some(builder) = settings.builder.clone() else {
        return Err(
            "a development database needs settings read by Settings::from_env \
                    or Settings::from_vars"
                .into(),
        );
    };
    let db = tokio::task::spawn_blocking(move || devdb::prepare(&plan))
        .await
        .map_err(|e| format!("development database: {e}"))??;
    if let Some(db) = &db {
        settings.config = builder.with_database(db.url()).map_err(|e| e.to_string())?;
    }
    Ok(db)
}

/// The public listener, with a backlog for bursts of handshakes: the default 128
/// makes clients beyond it wait out a 1 s SYN retry.
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

const LISTEN_BACKLOG: u32 = 1024;

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
