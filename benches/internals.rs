//! Micro-benchmarks of pgws internals, in process, no sockets and no database:
//! the token check and channel grant (HS256, RS256), envelope encoding, the hub's
//! dispatch of one notification to N subscribers, the per-channel `LISTEN`
//! bookkeeping (join/leave), N readers of one channel leaving at once, and a
//! socket's backlog (frames queued, then written 16 a write).
//!
//! ```text
//! cargo bench --bench internals                 # everything, about two minutes
//! cargo bench --bench internals -- dispatch     # one group
//! ```
//!
//! The internals are reached through `pgws::__bench`, which is not part of the API.

use std::{
    hint::black_box,
    io::IoSlice,
    pin::Pin,
    task::{Context, Poll},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use jsonwebtoken::{EncodingKey, Header, encode};
use pgws::{
    __bench::{
        Auth, BenchFrame, BenchHub, BenchOutbox, EnvelopeClaims, envelope_multiplexed,
        envelope_per_channel, route_multiplexed,
    },
    Config,
};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const SECRET: &str = "reallyreallyreallyreallyverysafe";
const RSA_PRIVATE: &str = include_str!("../tests/fixtures/keys/rsa_private.pem");
const RSA_JWK: &str = include_str!("../tests/fixtures/keys/rsa_public.jwk.json");

fn config(secret: &str) -> Config {
    Config::builder()
        .jwt_secret(secret)
        .build()
        .expect("a valid config")
}

fn claims() -> serde_json::Value {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    json!({ "mode": "rw", "role": "web_user", "sub": "user-42", "exp": exp })
}

fn token_check(c: &mut Criterion) {
    let mut g = c.benchmark_group("token_check");
    let hs = Auth::new(&config(SECRET));
    let hs_token = encode(
        &Header::default(),
        &claims(),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let rs = Auth::new(&config(RSA_JWK));
    let rs_token = encode(
        &Header::new(jsonwebtoken::Algorithm::RS256),
        &claims(),
        &EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap(),
    )
    .unwrap();
    let mut claimed = claims();
    claimed["channels"] = json!(["chat", "news", "alerts"]);
    let hs_claimed = encode(
        &Header::default(),
        &claimed,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    assert_eq!(hs.authorize(Some("chat"), &hs_token), Ok(1));
    assert_eq!(rs.authorize(Some("chat"), &rs_token), Ok(1));
    assert_eq!(hs.authorize(None, &hs_claimed), Ok(3));

    g.bench_function("hs256_path_channel", |b| {
        b.iter(|| hs.authorize(black_box(Some("chat")), black_box(&hs_token)))
    });
    g.bench_function("hs256_three_claimed_channels", |b| {
        b.iter(|| hs.authorize(black_box(None), black_box(&hs_claimed)))
    });
    g.bench_function("hs256_percent_encoded_channel", |b| {
        b.iter(|| hs.authorize(black_box(Some("room%2F42")), black_box(&hs_token)))
    });
    g.bench_function("rs256_path_channel", |b| {
        b.iter(|| rs.authorize(black_box(Some("chat")), black_box(&rs_token)))
    });
    let bad = format!("{}x", &hs_token[..hs_token.len() - 1]);
    g.bench_function("hs256_bad_signature", |b| {
        b.iter(|| hs.authorize(black_box(Some("chat")), black_box(&bad)))
    });
    g.finish();
}

fn envelopes(c: &mut Criterion) {
    let mut g = c.benchmark_group("envelope");
    let claims = EnvelopeClaims::new(&claims().to_string()).expect("an object");
    for len in [16usize, 256, 4096] {
        let payload: String = "Hi! \"quoted\" é ".chars().cycle().take(len).collect();
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_with_input(BenchmarkId::new("per_channel", len), &payload, |b, p| {
            b.iter(|| envelope_per_channel(black_box("chat"), black_box(p), black_box(&claims)))
        });
        let at = SystemTime::now();
        g.bench_with_input(BenchmarkId::new("multiplexed", len), &payload, |b, p| {
            b.iter(|| {
                envelope_multiplexed(
                    black_box("chat"),
                    black_box(p),
                    black_box(&claims),
                    black_box(at),
                )
            })
        });
    }
    g.throughput(Throughput::Elements(1));
    let routed = r#"{"channel":"chat","event":"x","payload":"64 bytes of something or other ..."}"#;
    g.bench_function("route_multiplexed", |b| {
        b.iter(|| route_multiplexed("pgws", black_box("pgws"), black_box(routed)))
    });
    g.finish();
}

/// One notification to N readers of one channel. Queues are drained outside the
/// measurement, every `QUEUE / 2` dispatches, so no reader is ever a slow consumer.
fn dispatch(c: &mut Criterion) {
    const QUEUE: usize = 1024;
    let mut g = c.benchmark_group("dispatch");
    let payload = format!("{:0>64}", 1);
    for n in [1usize, 100, 10_000] {
        let mut hub = BenchHub::new();
        for _ in 0..n {
            hub.join(&["chat"], QUEUE);
        }
        let frame = BenchFrame::new(&payload);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(BenchmarkId::new("shared_frame", n), |b| {
            b.iter_custom(|iters| {
                measure_dispatch(&mut hub, iters, QUEUE / 2, |h| h.dispatch("chat", &frame))
            })
        });
        g.bench_function(BenchmarkId::new("copy_and_dispatch", n), |b| {
            b.iter_custom(|iters| {
                measure_dispatch(&mut hub, iters, QUEUE / 2, |h| h.deliver("chat", &payload))
            })
        });
        assert_eq!(hub.channel_count(), 1, "no reader was let go");
        // Idle sockets: the hub writes the shared bytes itself (into an I/O that
        // takes every write whole), no queue, no task woken.
        let mut direct = BenchHub::new();
        for _ in 0..n {
            direct.join_writing(&["chat"], QUEUE);
        }
        g.bench_function(BenchmarkId::new("written_by_the_hub", n), |b| {
            b.iter(|| direct.dispatch("chat", &frame))
        });
        assert_eq!(direct.drain(), 0, "every frame was written, none queued");
    }
    g.finish();
}

fn measure_dispatch(
    hub: &mut BenchHub,
    iters: u64,
    every: usize,
    mut f: impl FnMut(&mut BenchHub) -> usize,
) -> Duration {
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let round = left.min(every as u64);
        let start = Instant::now();
        for _ in 0..round {
            black_box(f(hub));
        }
        total += start.elapsed();
        hub.drain();
        left -= round;
    }
    total
}

/// Per-channel bookkeeping: a socket joins (first reader → LISTEN) and leaves (last
/// reader → UNLISTEN), next to `existing` other channels or readers.
fn bookkeeping(c: &mut Criterion) {
    let mut g = c.benchmark_group("listen_bookkeeping");
    for existing in [0usize, 1_000, 10_000] {
        // Every other socket on its own channel: the join makes a fresh channel.
        let mut own = BenchHub::new();
        let names: Vec<String> = (0..existing).map(|i| format!("c{i}")).collect();
        for name in &names {
            own.join(&[name], 16);
        }
        g.bench_function(BenchmarkId::new("join_leave_own_channel", existing), |b| {
            b.iter(|| {
                let (id, fresh) = own.join(black_box(&["fresh"]), 16);
                (fresh, own.leave(id))
            })
        });
        // Every other socket on the same channel: the join and leave make no LISTEN.
        let mut shared = BenchHub::new();
        for _ in 0..existing {
            shared.join(&["chat"], 16);
        }
        g.bench_function(
            BenchmarkId::new("join_leave_shared_channel", existing),
            |b| {
                b.iter(|| {
                    let (id, fresh) = shared.join(black_box(&["chat"]), 16);
                    (fresh, shared.leave(id))
                })
            },
        );
    }
    g.finish();
}

/// Every reader of one channel leaving at once, as after a lost listener connection
/// (`drop_live`): each leave must cost O(1), not a scan of the channel's readers.
fn mass_leave(c: &mut Criterion) {
    let mut g = c.benchmark_group("mass_leave");
    g.sample_size(10);
    for n in [5_000usize, 50_000] {
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(BenchmarkId::new("drop_live_one_channel", n), |b| {
            b.iter_batched(
                || {
                    let mut hub = BenchHub::new();
                    for _ in 0..n {
                        hub.join(&["chat"], 4);
                    }
                    hub
                },
                |mut hub| {
                    assert_eq!(hub.drop_live(), 0);
                    hub
                },
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
}

/// A socket's backlog without the kernel: `batch` frames of 64 bytes queued (as the
/// hub does for a socket still writing), then written by the socket's task, up to 16
/// a write, into an I/O that takes every vectored write whole. What each frame costs
/// at 1, 16 and 64; an idle socket's frame costs one `written_by_the_hub` instead.
fn backlog(c: &mut Criterion) {
    let mut g = c.benchmark_group("backlog");
    let frame = BenchFrame::new(&format!("{:0>64}", 1));
    for batch in [1usize, 16, 64] {
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_function(BenchmarkId::new("queued_then_written", batch), |b| {
            let outbox = BenchOutbox::new(batch, Discard);
            b.iter(|| {
                for _ in 0..batch {
                    assert!(outbox.queue(&frame));
                }
                assert_eq!(outbox.send_all(), batch);
            })
        });
    }
    g.finish();
}

/// Never readable; takes every write whole, vectored like a TCP socket.
struct Discard;

impl AsyncRead for Discard {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        _: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Poll::Pending
    }
}

impl AsyncWrite for Discard {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(Ok(black_box(buf).len()))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(Ok(black_box(bufs).iter().map(|b| b.len()).sum()))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

fn short() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
        .configure_from_args()
}

criterion_group! {
    name = benches;
    config = short();
    targets = token_check, envelopes, dispatch, bookkeeping, mass_leave, backlog
}
criterion_main!(benches);
