//! `handshakes`: new authenticated sockets per second, each reset once it is open.

use std::{
    collections::HashMap,
    fmt::Write as _,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::task::JoinSet;

use crate::{
    BoxError, Run,
    client::{connect, token},
    proc::own_cpu_secs,
    report::{Latencies, summary},
};

impl Run {
    /// New authenticated sockets per second, each reset once it is open.
    pub(crate) async fn handshakes(&self) -> Result<(), BoxError> {
        let o = &self.o;
        let token = token(&self.o.secret, "r");
        // One socket holds the channel, so the churn does not LISTEN/UNLISTEN it.
        let _anchor = connect(o.addr, &o.channel, &token).await?;
        self.rss("idle (1 anchor socket)");
        let done = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let errors: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
        let lat = Arc::new(Latencies::new());
        let cpu0 = self.server.cpu_split();
        let own0 = own_cpu_secs();
        let started = Instant::now();
        let stop = started + o.duration;
        let mut tasks = JoinSet::new();
        for w in 0..o.workers {
            let (done, failed, errors, lat, token) = (
                done.clone(),
                failed.clone(),
                errors.clone(),
                lat.clone(),
                token.clone(),
            );
            let (addr, channel) = (o.addr, o.channel.clone());
            tasks.spawn(async move {
                while Instant::now() < stop {
                    let t = Instant::now();
                    match connect(addr, &channel, &token).await {
                        Ok(ws) => {
                            lat.record(w, t.elapsed().as_micros() as u64);
                            done.fetch_add(1, Ordering::Relaxed);
                            // A reset, not a close: no TIME_WAIT to run out of ports.
                            let tcp = ws.into_inner();
                            let _ = socket2::SockRef::from(&tcp).set_linger(Some(Duration::ZERO));
                            drop(tcp);
                        }
                        Err(e) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            *errors.lock().unwrap().entry(e.to_string()).or_default() += 1;
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        let took = started.elapsed();
        let n = done.load(Ordering::Relaxed);
        let cpu = self.server.cpu_since(cpu0, took.as_secs_f64());
        println!(
            "handshakes: {n} in {:.2} s = {:.0}/s with {} workers, {} failed; server CPU {cpu}, loadgen CPU {:.2} cores",
            took.as_secs_f64(),
            n as f64 / took.as_secs_f64(),
            o.workers,
            failed.load(Ordering::Relaxed),
            (own_cpu_secs() - own0) / took.as_secs_f64()
        );
        println!("  handshake latency: {}", summary(&lat.take()));
        let mut report = String::new();
        for (e, c) in errors.lock().unwrap().iter() {
            let _ = writeln!(report, "  error x{c}: {e}");
        }
        print!("{report}");
        println!(
            "  RESULT handshakes_per_s={:.0}",
            n as f64 / took.as_secs_f64()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        self.rss("end");
        Ok(())
    }
}
