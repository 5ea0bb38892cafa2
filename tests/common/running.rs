//! The standalone server on loopback, for the tests that use it: started with a
//! stop switch, stopped within a bound.

use std::{future::Future, net::SocketAddr, pin::Pin};

use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};

/// What the server waits on to shut down.
pub type Shutdown = Pin<Box<dyn Future<Output = ()> + Send>>;

pub struct Running {
    pub addr: SocketAddr,
    /// The admin listener's address, when one was asked for.
    pub admin: Option<SocketAddr>,
    pub stop: Option<oneshot::Sender<()>>,
    pub task: JoinHandle<()>,
}

impl Running {
    /// Binds 127.0.0.1:0 (and an admin listener when `with_admin`), then spawns
    /// `serve` with them and the shutdown switch.
    pub async fn start<F, Fut>(with_admin: bool, serve: F) -> Running
    where
        F: FnOnce(TcpListener, Option<TcpListener>, Shutdown) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let admin = match with_admin {
            true => Some(TcpListener::bind("127.0.0.1:0").await.unwrap()),
            false => None,
        };
        let admin_addr = admin.as_ref().map(|l| l.local_addr().unwrap());
        let (tx, rx) = oneshot::channel::<()>();
        let shutdown: Shutdown = Box::pin(async move {
            let _ = rx.await;
        });
        Running {
            addr,
            admin: admin_addr,
            stop: Some(tx),
            task: tokio::spawn(serve(listener, admin, shutdown)),
        }
    }

    /// Flips the switch and waits for the server to return.
    pub async fn stop(mut self) {
        self.stop.take().unwrap().send(()).unwrap();
        tokio::time::timeout(super::WAIT * 3, self.task)
            .await
            .expect("the server did not stop")
            .unwrap();
    }
}
