//! The listener's connection, opened by pgws itself so that its stream can be
//! screened ([`Screened`]): tokio-postgres's `connect` gives no way to wrap the
//! socket it opens, `connect_raw` takes any stream. What `connect` does before
//! it is done here the same way: each host (or `hostaddr`) in turn, every
//! address of a name, the port of that host or the first, TCP keepalives, a Unix
//! socket directory.

use std::{
    future::Future,
    io,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{Arc, atomic::AtomicU64},
    task::{Context, Poll},
};

use socket2::{SockRef, TcpKeepalive};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};
use tokio_postgres::{
    Client, Connection,
    config::Host,
    tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream},
};

use super::{Connector, Database, screen::Screened};
use crate::error::error_chain;

/// A TCP or Unix socket.
pub(crate) enum Raw {
    Tcp(TcpStream),
    #[cfg(unix)]
    Unix(tokio::net::UnixStream),
}

/// The listener's raw stream.
pub(crate) type Socket = Screened<Raw>;
/// Its TLS stream, screened on the decrypted side.
pub(crate) type Tls = Screened<<Connector as MakeTlsConnect<Socket>>::Stream>;
/// The listener's connection.
pub(crate) type ListenerConnection = Connection<Socket, Tls>;

/// Connects as tokio-postgres would, with both streams screened; notifications
/// dropped for not being UTF-8 are counted in `dropped`.
pub(crate) async fn connect(
    db: &Database,
    dropped: &Arc<AtomicU64>,
) -> Result<(Client, ListenerConnection), String> {
    let config = &db.config;
    let (hosts, addrs, ports) = (
        config.get_hosts(),
        config.get_hostaddrs(),
        config.get_ports(),
    );
    let count = hosts.len().max(addrs.len());
    let mut last = String::from("no host to connect to (host= or hostaddr=)");
    for i in 0..count {
        let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
        match connect_host(db, hosts.get(i), addrs.get(i), port, dropped).await {
            Ok(pair) => return Ok(pair),
            Err(e) => last = e,
        }
    }
    Err(last)
}

async fn connect_host(
    db: &Database,
    host: Option<&Host>,
    addr: Option<&IpAddr>,
    port: u16,
    dropped: &Arc<AtomicU64>,
) -> Result<(Client, ListenerConnection), String> {
    let name = match host {
        Some(Host::Tcp(name)) => name.as_str(),
        _ => "",
    };
    let targets: Vec<Target> = match (addr, host) {
        (Some(ip), _) => vec![Target::Tcp(SocketAddr::new(*ip, port))],
        (None, Some(Host::Tcp(name))) => tokio::net::lookup_host((name.as_str(), port))
            .await
            .map_err(|e| format!("{name}: {e}"))?
            .map(Target::Tcp)
            .collect(),
        #[cfg(unix)]
        (None, Some(Host::Unix(dir))) => vec![Target::Unix(dir.join(format!(".s.PGSQL.{port}")))],
        (None, None) => Vec::new(),
    };
    let mut last = format!("{name}: no address");
    for target in targets {
        let io = match target.open(db).await {
            Ok(io) => io,
            Err(e) => {
                last = e.to_string();
                continue;
            }
        };
        let mut make = db.connector.clone();
        let Ok(tls) = MakeTlsConnect::<Socket>::make_tls_connect(&mut make, name);
        let tls = ScreenedTls {
            inner: tls,
            dropped: dropped.clone(),
        };
        let socket: Socket = Screened::socket(io, dropped.clone());
        match db.config.connect_raw(socket, tls).await {
            Ok(pair) => return Ok(pair),
            Err(e) => last = error_chain(&e),
        }
    }
    Err(last)
}

enum Target {
    Tcp(SocketAddr),
    #[cfg(unix)]
    Unix(std::path::PathBuf),
}

impl Target {
    async fn open(self, db: &Database) -> io::Result<Raw> {
        match self {
            Target::Tcp(addr) => {
                let stream = TcpStream::connect(addr).await?;
                stream.set_nodelay(true)?;
                keepalives(&stream, &db.config)?;
                Ok(Raw::Tcp(stream))
            }
            #[cfg(unix)]
            Target::Unix(path) => Ok(Raw::Unix(tokio::net::UnixStream::connect(path).await?)),
        }
    }
}

/// The URI's keepalives and user timeout, as tokio-postgres sets them.
fn keepalives(stream: &TcpStream, config: &tokio_postgres::Config) -> io::Result<()> {
    let socket = SockRef::from(stream);
    #[cfg(target_os = "linux")]
    if let Some(timeout) = config.get_tcp_user_timeout() {
        socket.set_tcp_user_timeout(Some(*timeout))?;
    }
    if config.get_keepalives() {
        let mut keepalive = TcpKeepalive::new().with_time(config.get_keepalives_idle());
        if let Some(interval) = config.get_keepalives_interval() {
            keepalive = keepalive.with_interval(interval);
        }
        #[cfg(not(any(target_os = "windows", target_os = "openbsd")))]
        if let Some(retries) = config.get_keepalives_retries() {
            keepalive = keepalive.with_retries(retries);
        }
        socket.set_tcp_keepalive(&keepalive)?;
    }
    Ok(())
}

type Rustls = <Connector as MakeTlsConnect<Socket>>::TlsConnect;

/// The rustls connector, its stream screened once decrypted.
struct ScreenedTls {
    inner: Rustls,
    dropped: Arc<AtomicU64>,
}

type Handshake = Pin<Box<dyn Future<Output = io::Result<Tls>> + Send>>;

impl TlsConnect<Socket> for ScreenedTls {
    type Stream = Tls;
    type Error = io::Error;
    type Future = Handshake;

    fn connect(self, stream: Socket) -> Handshake {
        let (inner, dropped) = (self.inner, self.dropped);
        Box::pin(async move {
            let tls = inner.connect(stream).await?;
            Ok(Screened::messages(tls, dropped))
        })
    }
}

macro_rules! raw {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Raw::Tcp($s) => $e,
            #[cfg(unix)]
            Raw::Unix($s) => $e,
        }
    };
}

impl AsyncRead for Raw {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        raw!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for Raw {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        raw!(self, s => Pin::new(s).poll_write(cx, data))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        raw!(self, s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        raw!(self, s => Pin::new(s).poll_shutdown(cx))
    }
}

impl<S: TlsStream + Unpin> TlsStream for Screened<S> {
    fn channel_binding(&self) -> ChannelBinding {
        self.get_ref().channel_binding()
    }
}
