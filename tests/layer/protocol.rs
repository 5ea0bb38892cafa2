//! WebSocket protocol conformance over raw TCP: the upgrade written by hand, client
//! frames encoded (and masked) by hand, the server's frames parsed by hand
//! (`common::frames`). It mirrors the sections of the Autobahn test suite (fuzzingclient,
//! i.e. Autobahn testing a server) that apply to pgws, which can't run here. Autobahn
//! expects an echo server; pgws NOTIFYs what it receives instead, so "echoed" below
//! becomes "NOTIFYed" (checked with `LISTEN`) and every socket is `rw` on its own
//! channel.
//!
//! The protocol errors are rows of one table ([`failures`], run by
//! `protocol_errors_close_the_socket_and_the_server_keeps_working`, which names the
//! rows that failed); the rest are tests. The last column names both.
//!
//! | Autobahn | what it covers | tests and rows here |
//! |---|---|---|
//! | 1.1.* / 1.2.* | text / binary messages of each length encoding (7-bit, 16-bit, 64-bit) | `text_messages_of_each_length_encoding_are_notified`, `binary_messages_of_each_length_encoding_are_notified_as_text`, `a_message_needing_a_64_bit_length_is_too_big_to_notify` (65536 bytes is over the 8000-byte NOTIFY limit) |
//! | 1.1.8 / 1.2.8, 9.3 / 9.4 (partially) | a message in many fragments | `a_message_in_many_small_fragments_is_reassembled` |
//! | 2.1–2.4 | pings answered with the same payload (up to 125 bytes) | `pings_are_answered_with_the_same_payload` |
//! | 2.5 | a ping over 125 bytes | `a_ping_over_125_bytes_is_1002` |
//! | 2.6 / 2.11 | pings in 1-byte chops | `pings_are_answered_with_the_same_payload`, `ten_pings_get_ten_pongs` |
//! | 2.7–2.9 | unsolicited pongs | `unsolicited_pongs_are_ignored` |
//! | 2.10 | ten pings | `ten_pings_get_ten_pongs` |
//! | 3.1, 3.5–3.7 | RSV bits on text, binary, ping, close | `reserved_bits_are_1002` |
//! | 3.2–3.4 | a good message, then one with RSV bits, then a ping | `a_reserved_bit_after_a_good_message_is_1002_and_the_good_message_stays` |
//! | 4.1.1–4.1.2 / 4.2.1–4.2.2 | reserved non-control (3–7) / control (11–15) opcodes | `reserved_opcodes_are_1002` |
//! | 4.1.3–4.1.5 / 4.2.3–4.2.5 | a good message, a reserved opcode, a ping | `a_reserved_opcode_after_a_good_message_is_1002_and_the_good_message_stays` |
//! | 5.1 / 5.2 | fragmented ping / pong | `fragmented_control_frames_are_1002` |
//! | 5.3–5.5 | a text in fragments (chopped, octet-wise) | `a_fragmented_message_is_notified_once`, `frames_written_one_byte_at_a_time_work` |
//! | 5.6–5.8, 5.19–5.20 | pings between fragments | `a_ping_between_fragments_is_answered_and_the_message_notified`, `frames_written_one_byte_at_a_time_work` |
//! | 5.9–5.14 | a continuation with nothing to continue | `a_continuation_with_no_message_started_is_1002` |
//! | 5.15–5.17 | a continuation after a finished message | `a_continuation_after_a_finished_message_is_1002` |
//! | 5.18 | a new text frame inside a fragmented message | `a_new_message_inside_a_fragmented_one_is_1002` |
//! | 6.1 | empty texts and empty fragments | `text_messages_of_each_length_encoding_are_notified`, `a_message_in_many_small_fragments_is_reassembled` |
//! | 6.2, 6.5–6.7, 6.11, 6.22 (samples) | valid UTF-8, whole and split on and within code points | `valid_utf8_is_notified_however_it_is_fragmented` |
//! | 6.3, 6.8–6.10, 6.12–6.21 (samples) | invalid UTF-8: bad bytes, 5/6-byte forms, overlongs, surrogates, > U+10FFFF, truncated | `invalid_utf8_in_a_text_frame_is_1007`, `invalid_utf8_split_across_fragments_is_1007`, `an_incomplete_code_point_before_an_empty_final_fragment_is_1007` |
//! | 6.4.1–6.4.2 | fail fast on invalid UTF-8, before the message ends | `invalid_utf8_fails_fast_before_the_message_ends` |
//! | 6.4.3–6.4.4 | invalid UTF-8 early in a frame: failed once the frame is in (non-strict) | `invalid_utf8_early_in_a_frame_is_1007_once_the_frame_is_in` |
//! | — (pgws §6) | binary frames carrying UTF-8 are text | `valid_utf8_in_a_binary_frame_is_notified_as_text`, `invalid_utf8_in_a_binary_frame_is_1007` |
//! | 7.1.1, 7.1.6 | close after a message (a large one) | `a_close_is_echoed_and_the_connection_ends` |
//! | 7.1.2–7.1.4 | a second close, a ping, a text after the close | `frames_after_the_close_are_ignored` |
//! | 7.1.5 | a close between fragments | `a_close_between_fragments_ends_the_message_unnotified` |
//! | 7.3.1 | an empty close | `an_empty_close_is_answered` |
//! | 7.3.2 | a 1-byte close | `a_1_byte_close_is_1002` |
//! | 7.3.3–7.3.6 | code only, code + reason, 123-byte reason, 124-byte reason | `a_close_is_echoed_and_the_connection_ends`, `close_reasons_up_to_123_bytes_are_accepted_and_124_is_1002` |
//! | 7.5.1 | a close reason that is not UTF-8 | `a_close_reason_that_is_not_utf8_is_1007` |
//! | 7.7.* | valid close codes | `valid_close_codes_are_echoed` |
//! | 7.9.*, 7.13.* | invalid and out-of-range close codes | `invalid_close_codes_are_1002` |
//! | 9.1 / 9.2 (partially) | large messages: here against `max_message_bytes` | `a_huge_64_bit_length_is_1009_before_any_payload`, `a_message_at_the_limit_is_notified_and_one_byte_more_is_1009`, `a_fragmented_message_over_the_limit_is_1009` |
//! | — (RFC 6455 §5.1, §5.2) | unmasked client frames, non-minimal length encodings | `an_unmasked_frame_is_1002`, `a_non_minimal_length_is_1002` |
//! | — (pgws §6) | a read-only socket sending data | `a_read_only_socket_sending_data_is_1008` |
//!
//! Not applicable: 9.5–9.8 (timing and throughput, not asserted here), 10.* (a client
//! option: auto-fragmentation of what the server sends), 12.* and 13.*
//! (permessage-deflate: pgws negotiates no extension, contract §1, so compressed
//! frames only ever show up as RSV1 frames, which are 1002 above).
//!
//! Every test also checks, after each failure, that the server closed the TCP
//! connection, that nothing of the failed socket was NOTIFYed (one `LISTEN` connection
//! sees notifications in commit order, so the next one must be the fresh socket's),
//! that a fresh socket on the same server still works, and that nothing outside the
//! test code panicked.
//!
//! Who answers: most protocol errors are found by the codec (tungstenite), or by the
//! header check in front of it; pgws then sends the close (1002, 1007 or 1009, reasons
//! from its close table; only the codes are asserted for these rows) and drops the
//! connection at once, since the stream can't be read on. pgws's own checks (mode,
//! binary UTF-8, NOTIFY size) close cleanly: the test answers the close, and then the
//! connection ends.

use std::{
    panic::AssertUnwindSafe,
    sync::{
        Once,
        atomic::{AtomicUsize, Ordering},
    },
};

use crate::common::{
    frames::*,
    rows::{check_rows, panic_message},
    *,
};
use futures_util::FutureExt;
use pgws::ConfigBuilder;
use serde_json::Value;

// ---------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------

/// Panics raised outside the test code (in pgws or a dependency): the server's tasks
/// run on the test's runtime, where a panic would only be printed. The count is
/// process-wide, so such a panic (in any test of this binary) fails every test of
/// this module that checks afterwards.
static FOREIGN_PANICS: AtomicUsize = AtomicUsize::new(0);

fn watch_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info
                .location()
                .is_some_and(|l| !l.file().starts_with("tests/"))
            {
                FOREIGN_PANICS.fetch_add(1, Ordering::SeqCst);
            }
            previous(info);
        }));
    });
}

/// A server, a channel of its own and a `LISTEN` on it.
struct Case {
    server: TestServer,
    chan: String,
    listen: Listen,
}

impl Case {
    async fn start() -> Case {
        Case::with(config()).await
    }

    async fn with(config: ConfigBuilder) -> Case {
        watch_panics();
        let server = TestServer::start(config).await;
        let chan = unique("proto");
        let listen = Listen::start(&chan).await;
        Case {
            server,
            chan,
            listen,
        }
    }

    async fn open(&self, mode: &str) -> RawWs {
        let path = format!("/{}", token(claims(mode, Some(&self.chan))));
        RawWs::connect(self.server.addr, &path).await
    }

    /// The payload of the next message NOTIFYed on the channel.
    async fn notified(&mut self) -> String {
        let (channel, payload) = self.listen.next().await;
        assert_eq!(channel, self.chan);
        let envelope: Value = serde_json::from_str(&payload).unwrap();
        assert_eq!(envelope["event"], "WebsocketMessage", "{payload}");
        envelope["payload"].as_str().unwrap().to_owned()
    }

    /// A fresh socket on the same server works, and its message is the next one
    /// NOTIFYed: nothing else was NOTIFYed before it.
    async fn still_works(&mut self) {
        let mut ws = self.open("rw").await;
        let text = unique("still works");
        ws.send(&frame(TEXT, text.as_bytes())).await;
        assert_eq!(self.notified().await, text);
        close_cleanly(&mut ws).await;
        assert_eq!(
            FOREIGN_PANICS.load(Ordering::SeqCst),
            0,
            "a panic outside the test code"
        );
    }
}

/// Our close 1000, the server's answer, the end of the TCP connection.
async fn close_cleanly(ws: &mut RawWs) {
    ws.send(&close(1000, b"")).await;
    let (code, _) = ws.expect_close().await;
    assert_eq!(code, Some(1000));
    ws.expect_eof().await;
}

/// Who closes.
#[derive(Clone, Copy, PartialEq)]
enum By {
    /// The stream is broken (found by the codec): pgws's close, then the TCP connection
    /// ends without waiting for an answer.
    Codec,
    /// pgws closes cleanly: its close, our answer, then the TCP connection ends.
    Pgws,
}

/// Sends `bytes` in one write on a fresh socket in `mode` and expects the close `code`
/// (its reason is returned), the end of the TCP connection, exactly `notified`
/// NOTIFYed, and the server still working.
async fn fails_with(
    case: &mut Case,
    mode: &str,
    bytes: &[u8],
    notified: &[&str],
    code: u16,
    by: By,
) -> String {
    let mut ws = case.open(mode).await;
    ws.send(bytes).await;
    let (got, reason) = ws.expect_close().await;
    assert_eq!(got, Some(code), "close reason {reason:?}");
    if by == By::Pgws {
        ws.send(&close(code, b"")).await;
    }
    ws.expect_eof().await;
    for text in notified {
        assert_eq!(case.notified().await, *text);
    }
    case.still_works().await;
    reason
}

/// A protocol error the codec finds, on a `rw` socket.
async fn fails(case: &mut Case, bytes: &[u8], notified: &[&str], code: u16) -> String {
    fails_with(case, "rw", bytes, notified, code, By::Codec).await
}

fn cat(frames: &[Vec<u8>]) -> Vec<u8> {
    frames.concat()
}

// ---------------------------------------------------------------------------
// Protocol errors: one table, one row per kind of error
// ---------------------------------------------------------------------------

/// How a failure's close reason is checked.
#[derive(Clone, Copy)]
enum Reason {
    /// Not at all: only the code is the contract for a broken stream.
    Any,
    /// It says something.
    Given,
    /// pgws's own reason, which starts with this.
    StartsWith(&'static str),
}

/// A kind of protocol error: each input, sent in one write on a fresh `rw` socket,
/// must end that socket as [`fails_with`] checks, with the same code and reason.
struct Failure {
    /// Reported when the row fails.
    name: &'static str,
    /// On a server with `max_message_bytes` at [`LIMIT`] ([`limited`]).
    limited: bool,
    inputs: Vec<Vec<u8>>,
    /// NOTIFYed before the failure, for each input.
    notified: &'static [&'static str],
    code: u16,
    by: By,
    reason: Reason,
}

/// A failure found by the codec, on a server with the default settings.
fn codec(name: &'static str, code: u16, inputs: Vec<Vec<u8>>) -> Failure {
    Failure {
        name,
        limited: false,
        inputs,
        notified: &[],
        code,
        by: By::Codec,
        reason: Reason::Any,
    }
}

/// A failure pgws finds itself: a clean close whose reason starts with `reason`.
fn pgws(name: &'static str, code: u16, reason: &'static str, inputs: Vec<Vec<u8>>) -> Failure {
    Failure {
        by: By::Pgws,
        reason: Reason::StartsWith(reason),
        ..codec(name, code, inputs)
    }
}

impl Failure {
    fn notified(self, notified: &'static [&'static str]) -> Failure {
        Failure { notified, ..self }
    }

    fn reason_given(self) -> Failure {
        Failure {
            reason: Reason::Given,
            ..self
        }
    }

    fn limited(self) -> Failure {
        Failure {
            limited: true,
            ..self
        }
    }

    /// Runs every input against one server of its own, up to the first that fails.
    async fn check(self) {
        let config = if self.limited { limited() } else { config() };
        let mut case = Case::with(config).await;
        for (i, bytes) in self.inputs.iter().enumerate() {
            let run = async {
                let reason =
                    fails_with(&mut case, "rw", bytes, self.notified, self.code, self.by).await;
                match self.reason {
                    Reason::Any => {}
                    Reason::Given => assert!(!reason.is_empty(), "no close reason"),
                    Reason::StartsWith(start) => {
                        assert!(reason.starts_with(start), "close reason {reason:?}")
                    }
                }
            };
            if let Err(panic) = AssertUnwindSafe(run).catch_unwind().await {
                let head = &bytes[..bytes.len().min(16)];
                panic!(
                    "input {i} ({} bytes, starting {head:02x?}): {}",
                    bytes.len(),
                    panic_message(&*panic)
                );
            }
        }
    }
}

/// Invalid UTF-8 samples after Autobahn 6.3 and 6.8–6.21.
const INVALID_UTF8: &[&[u8]] = &[
    b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited", // 6.3.1: a surrogate
    b"\xf8\x88\x80\x80\x80",                                           // 6.8.1: 5-byte form
    b"\xfc\x84\x80\x80\x80\x80",                                       // 6.8.2: 6-byte form
    b"\xf4\x90\x80\x80",                                               // 6.9.4: over U+10FFFF
    b"\x80",                                                           // 6.14.1: lone continuation
    b"\xbf\x80\xbf",                                                   // 6.14.x: continuations
    b"\xc0 ",                                                          // 6.15.1: lone start
    b"\xce\xba\xe1\xbd",                                               // 6.17.x: truncated
    b"\xfe",                                                           // 6.19.1
    b"\xff",                                                           // 6.19.2
    b"\xc0\xaf",                                                       // 6.20.1: overlong '/'
    b"\xe0\x80\xaf",                                                   // 6.20.2
    b"\xf0\x80\x80\xaf",                                               // 6.20.3
    b"\xed\xbf\xbf",                                                   // 6.21.x: U+DFFF
    b"\xed\xa0\x80\xed\xb0\x80",                                       // 6.21.1: pair
];

/// The protocol errors, by Autobahn section (see the table at the top).
fn failures() -> Vec<Failure> {
    let rsv_bits = [
        RSV1,
        RSV2,
        RSV3,
        RSV1 | RSV2,
        RSV1 | RSV3,
        RSV2 | RSV3,
        RSV1 | RSV2 | RSV3,
    ];
    let rsv_frames = rsv_bits.into_iter().flat_map(|rsv| {
        [
            (TEXT, &b"rsv"[..]),
            (BINARY, b"rsv"),
            (PING, b"rsv"),
            (CLOSE, &1000u16.to_be_bytes()),
        ]
        .map(|(opcode, payload)| masked(FIN | rsv | opcode, payload))
    });
    let mut sixteen = vec![FIN | TEXT, 0x80 | 126, 0, 5];
    sixteen.extend([0; 4]);
    sixteen.extend(b"hello");
    let mut sixty_four = vec![FIN | TEXT, 0x80 | 127];
    sixty_four.extend(5u64.to_be_bytes());
    sixty_four.extend([0; 4]);
    sixty_four.extend(b"hello");
    // A single frame with invalid UTF-8, sent only up to just past the bad bytes.
    // Bad bytes early in a frame whose payload goes on.
    let mut early = b"ok so far \xed\xa0\x80".to_vec();
    early.extend([b'x'; 200]);
    // Samples split at each point over two fragments.
    let split = [&b"\xed\xa0\x80"[..], b"\xf4\x90\x80\x80", b"\xc0\xaf"]
        .into_iter()
        .flat_map(|sample| {
            (0..=sample.len()).map(|at| {
                cat(&[
                    masked(TEXT, &sample[..at]),
                    masked(FIN | CONT, &sample[at..]),
                ])
            })
        });
    let over = "f".repeat(3000);

    vec![
        // Framing (Autobahn 1.*, 5.*, 9.*, RFC 6455 §5.2).
        // 65536 bytes is the default `max_message_bytes` (so the codec takes it),
        // but its NOTIFY would be over 8000 bytes: pgws's own 1009.
        pgws(
            "a_message_needing_a_64_bit_length_is_too_big_to_notify",
            1009,
            "Message too big",
            vec![frame(TEXT, "x".repeat(65536).as_bytes())],
        ),
        codec(
            "a_continuation_with_no_message_started_is_1002",
            1002,
            vec![
                masked(FIN | CONT, b"orphan"),
                masked(CONT, b"orphan"),
                cat(&[
                    masked(CONT, b"orphan"),
                    frame(TEXT, b"x"),
                    masked(FIN | CONT, b"end"),
                ]),
            ],
        ),
        codec(
            "a_continuation_after_a_finished_message_is_1002",
            1002,
            vec![cat(&[
                masked(TEXT, b"fin"),
                masked(FIN | CONT, b"ished"),
                masked(CONT, b"more"),
                masked(FIN | CONT, b"!"),
            ])],
        )
        .notified(&["finished"]),
        codec(
            "a_new_message_inside_a_fragmented_one_is_1002",
            1002,
            vec![
                cat(&[masked(TEXT, b"open"), frame(TEXT, b"again")]),
                cat(&[masked(BINARY, b"open"), masked(TEXT, b"again")]),
                cat(&[masked(TEXT, b"open"), frame(BINARY, b"again")]),
            ],
        ),
        // "The minimal number of bytes MUST be used to encode the length."
        codec(
            "a_non_minimal_length_is_1002",
            1002,
            vec![sixteen, sixty_four],
        ),
        // Reserved bits and opcodes (Autobahn 3.*, 4.*).
        codec(
            "reserved_bits_are_1002",
            1002,
            rsv_frames
                .chain([
                    // The first frame of a fragmented message, and a continuation.
                    masked(RSV1 | TEXT, b"deflated?"),
                    cat(&[masked(TEXT, b"a"), masked(FIN | RSV1 | CONT, b"b")]),
                ])
                .collect(),
        )
        .reason_given(),
        // The ping after the error is not answered: `expect_close` fails on a pong.
        codec(
            "a_reserved_bit_after_a_good_message_is_1002_and_the_good_message_stays",
            1002,
            vec![cat(&[
                frame(TEXT, b"good"),
                masked(FIN | RSV2 | TEXT, b"bad"),
                frame(PING, b"never answered"),
            ])],
        )
        .notified(&["good"]),
        codec(
            "reserved_opcodes_are_1002",
            1002,
            (3..=7)
                .chain(11..=15)
                .flat_map(|opcode| [frame(opcode, b""), frame(opcode, b"reserved payload")])
                .collect(),
        ),
        codec(
            "a_reserved_opcode_after_a_good_message_is_1002_and_the_good_message_stays",
            1002,
            [5, 13]
                .map(|opcode| {
                    cat(&[
                        frame(TEXT, b"good"),
                        frame(opcode, b"bad"),
                        frame(PING, b"never answered"),
                    ])
                })
                .into(),
        )
        .notified(&["good"]),
        // Control frames (Autobahn 2.*, 5.1, 5.2).
        codec(
            "a_ping_over_125_bytes_is_1002",
            1002,
            vec![
                frame(PING, &[b'p'; 126]),
                // Found from the header alone: the payload need not arrive.
                header(FIN | PING, 126),
            ],
        ),
        codec(
            "fragmented_control_frames_are_1002",
            1002,
            vec![
                cat(&[masked(PING, b"frag"), masked(FIN | CONT, b"mented")]),
                cat(&[masked(PONG, b"frag"), masked(FIN | CONT, b"mented")]),
                // Inside a fragmented message too.
                cat(&[
                    masked(TEXT, b"a"),
                    masked(PING, b"p"),
                    masked(FIN | CONT, b"b"),
                ]),
            ],
        ),
        // UTF-8 (Autobahn 6.*). The codec validates text frames.
        codec(
            "invalid_utf8_in_a_text_frame_is_1007",
            1007,
            INVALID_UTF8
                .iter()
                .map(|sample| frame(TEXT, sample))
                .collect(),
        ),
        codec(
            "invalid_utf8_split_across_fragments_is_1007",
            1007,
            // A code point started in one fragment and broken in the next.
            [cat(&[
                masked(TEXT, b"ok \xce"),
                masked(FIN | CONT, b" not"),
            ])]
            .into_iter()
            .chain(split)
            .collect(),
        ),
        codec(
            "invalid_utf8_fails_fast_before_the_message_ends",
            1007,
            // The bad fragment is not the last, and the last never comes (6.4.1,
            // 6.4.2).
            vec![cat(&[
                masked(TEXT, "κόσμε".as_bytes()),
                masked(CONT, b"\xf4\x90\x80\x80"),
            ])],
        ),
        // Within one frame the check comes once the frame is in (6.4.3, 6.4.4 as
        // Autobahn's non-strict pass; PROTOCOL.md §7).
        codec(
            "invalid_utf8_early_in_a_frame_is_1007_once_the_frame_is_in",
            1007,
            vec![frame(TEXT, &early)],
        ),
        // The codec only validates frames with a payload, so a message ending in the
        // first byte of a code point, then an empty final fragment, gets past it:
        // pgws's own check answers, cleanly, with its reason.
        pgws(
            "an_incomplete_code_point_before_an_empty_final_fragment_is_1007",
            1007,
            "Invalid UTF-8",
            vec![cat(&[masked(TEXT, b"abc\xce"), masked(FIN | CONT, b"")])],
        ),
        // The codec leaves binary frames alone; pgws checks them (contract §6).
        pgws(
            "invalid_utf8_in_a_binary_frame_is_1007",
            1007,
            "Invalid UTF-8",
            vec![
                frame(BINARY, b"\xff"),
                frame(BINARY, b"\xed\xa0\x80"),
                frame(BINARY, b"ok \xce"),
                cat(&[masked(BINARY, b"ok \xce"), masked(FIN | CONT, b" no")]),
            ],
        ),
        // Close (Autobahn 7.*).
        codec("a_1_byte_close_is_1002", 1002, vec![frame(CLOSE, &[0x03])]),
        codec(
            "invalid_close_codes_are_1002",
            1002,
            [
                0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
            ]
            .map(|code| close(code, b""))
            .into(),
        )
        .reason_given(),
        // tokio-websockets checks the close reason with `utf8::parse_str`, whose
        // `ProtocolError::InvalidUtf8` it answers like any invalid UTF-8: 1007 (not
        // 1002).
        codec(
            "a_close_reason_that_is_not_utf8_is_1007",
            1007,
            vec![
                close(
                    1000,
                    b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited",
                ),
                close(1000, b"\xff"),
            ],
        ),
        // Masking (RFC 6455 §5.1).
        codec(
            "an_unmasked_frame_is_1002",
            1002,
            vec![
                unmasked(FIN | TEXT, b"unmasked"),
                unmasked(FIN | BINARY, b""),
                unmasked(FIN | PING, b"unmasked"),
                unmasked(FIN | CLOSE, &1000u16.to_be_bytes()),
                // A masked first fragment, then an unmasked continuation.
                cat(&[masked(TEXT, b"a"), unmasked(FIN | CONT, b"b")]),
            ],
        ),
        // Sizes (Autobahn 9.*, partially), against `max_message_bytes`.
        // Only the header is sent: the server must answer without waiting for (or
        // allocating) the 2^62 bytes announced.
        codec(
            "a_huge_64_bit_length_is_1009_before_any_payload",
            1009,
            vec![
                header(FIN | TEXT, 1 << 62),
                header(FIN | BINARY, 1 << 62),
                header(BINARY, u64::MAX >> 1),
                // As a continuation of a started message.
                cat(&[masked(TEXT, b"start"), header(FIN | CONT, 1 << 62)]),
            ],
        )
        .limited(),
        // Each fragment is within the limit, the message is not. tokio-websockets
        // finds this while reassembling and leaves the answer to pgws, which closes
        // with 1009 `Message too big`.
        pgws(
            "a_fragmented_message_over_the_limit_is_1009",
            1009,
            "Message too big",
            vec![cat(&[
                masked(TEXT, over.as_bytes()),
                masked(FIN | CONT, over.as_bytes()),
            ])],
        )
        .limited(),
    ]
}

/// Every row of [`failures`], each on a server of its own.
#[tokio::test]
async fn protocol_errors_close_the_socket_and_the_server_keeps_working() {
    check_rows(failures().into_iter().map(|row| (row.name, row.check()))).await;
}

// ---------------------------------------------------------------------------
// Framing (Autobahn 1.*, 5.*, 9.*)
// ---------------------------------------------------------------------------

#[tokio::test]
async fn text_messages_of_each_length_encoding_are_notified() {
    let mut case = Case::start().await;
    let mut ws = case.open("rw").await;
    for len in [0, 1, 125, 126, 127, 128, 1000, 7000] {
        let text = "t".repeat(len);
        ws.send(&frame(TEXT, text.as_bytes())).await;
        assert_eq!(case.notified().await, text, "length {len}");
    }
    close_cleanly(&mut ws).await;
    case.still_works().await;
}

#[tokio::test]
async fn binary_messages_of_each_length_encoding_are_notified_as_text() {
    let mut case = Case::start().await;
    let mut ws = case.open("rw").await;
    for len in [0, 1, 125, 126, 127, 128, 1000, 7000] {
        let text = "b".repeat(len);
        ws.send(&frame(BINARY, text.as_bytes())).await;
        assert_eq!(case.notified().await, text, "length {len}");
    }
    close_cleanly(&mut ws).await;
    case.still_works().await;
}

#[tokio::test]
async fn a_fragmented_message_is_notified_once() {
    let mut case = Case::start().await;
    let mut ws = case.open("rw").await;
    let bytes = cat(&[
        masked(TEXT, b"frag"),
        masked(CONT, b"men"),
        masked(FIN | CONT, b"ted"),
    ]);
    ws.send(&bytes).await;
    assert_eq!(case.notified().await, "fragmented");
    // Binary fragments too, each frame in its own write.
    ws.send(&masked(BINARY, b"bin")).await;
    ws.send(&masked(CONT, b"")).await;
    ws.send(&masked(FIN | CONT, b"ary")).await;
    assert_eq!(case.notified().await, "binary");
    close_cleanly(&mut ws).await;
    case.still_works().await;
}

#[tokio::test]
async fn a_ping_between_fragments_is_answered_and_the_message_notified() {
    let mut case = Case::start().await;
    let mut ws = case.open("rw").await;
    let bytes = cat(&[
        masked(TEXT, b"before "),
        frame(PING, b"between"),
        masked(FIN | CONT, b"after"),
    ]);
    ws.send(&bytes).await;
    assert_eq!(ws.expect_pong().await, b"between");
    assert_eq!(case.notified().await, "before after");
    // Several pings among five fragments, sent one after the other.
    ws.send(&masked(TEXT, b"a")).await;
    ws.send(&frame(PING, b"p1")).await;
    assert_eq!(ws.expect_pong().await, b"p1");
    ws.send(&masked(CONT, b"b")).await;
    ws.send(&masked(CONT, b"c")).await;
    ws.send(&masked(CONT, b"d")).await;
    ws.send(&frame(PING, b"p2")).await;
    assert_eq!(ws.expect_pong().await, b"p2");
    ws.send(&masked(FIN | CONT, b"e")).await;
    assert_eq!(case.notified().await, "abcde");
    close_cleanly(&mut ws).await;
    case.still_works().await;
}

#[tokio::test]
async fn frames_written_one_byte_at_a_time_work() {
    let mut case = Case::start().await;
    let mut ws = case.open("rw").await;
    let bytes = cat(&[
        frame(TEXT, b"one"),
        masked(TEXT, b"tw"),
        frame(PING, b"ping"),
        masked(FIN | CONT, b"o"),
        frame(TEXT, "κόσμε".as_bytes()),
        frame(BINARY, &[b'z'; 300]),
    ]);
    ws.send_bytewise(&bytes).await;
    assert_eq!(ws.expect_pong().await, b"ping");
    assert_eq!(case.notified().await, "one");
    assert_eq!(case.notified().await, "two");
    assert_eq!(case.notified().await, "κόσμε");
    assert_eq!(case.notified().await, "z".repeat(300));
    close_cleanly(&mut ws).await;
    case.still_works().await;
}

#[tokio::test]
async fn several_frames_in_one_write_work() {
    let mut case = Case::start().await;
    let mut ws = case.open("rw").await;
    let bytes = cat(&[
        frame(TEXT, b"first"),
        frame(PING, b"p"),
        frame(BINARY, b"second"),
        masked(TEXT, b"thi"),
        masked(FIN | CONT, b"rd"),
        frame(TEXT, b"fourth"),
    ]);
    ws.send(&bytes).await;
    assert_eq!(ws.expect_pong().await, b"p");
    for text in ["first", "second", "third", "fourth"] {
        assert_eq!(case.notified().await, text);
    }
    close_cleanly(&mut ws).await;
    case.still_works().await;
}

#[tokio::test]
async fn a_message_in_many_small_fragments_is_reassembled() {
    let mut case = Case::start().await;
    let mut ws = case.open("rw").await;
    let text: String = (0..6000).map(|i| (b'a' + (i % 26) as u8) as char).collect();
    let chunks: Vec<&[u8]> = text.as_bytes().chunks(60).collect();
    let mut bytes = masked(TEXT, b"");
    for chunk in &chunks {
        bytes.extend(masked(CONT, chunk));
        bytes.extend(masked(CONT, b""));
    }
    bytes.extend(masked(FIN | CONT, b""));
    ws.send(&bytes).await;
    assert_eq!(case.notified().await, text);
    close_cleanly(&mut ws).await;
    case.still_works().await;
}

// ---------------------------------------------------------------------------
// Control frames (Autobahn 2.*, 5.1, 5.2)
// ---------------------------------------------------------------------------

#[tokio::test]
async fn pings_are_answered_with_the_same_payload() {
    let mut case = Case::start().await;
    let mut ws = case.open("rw").await;
    let max: Vec<u8> = (0..125u8).collect();
    let binary: Vec<u8> = vec![0x00, 0xff, 0xfe, 0xfd, 0xfc, 0xfb, 0x00, 0xff];
    for payload in [&b""[..], b"Hello, world!", &binary[..], &max[..]] {
        ws.send(&frame(PING, payload)).await;
        assert_eq!(ws.expect_pong().await, payload);
    }
    ws.send_bytewise(&frame(PING, &max)).await;
    assert_eq!(ws.expect_pong().await, max);
    // The socket is still usable.
    ws.send(&frame(TEXT, b"after pings")).await;
    assert_eq!(case.notified().await, "after pings");
    close_cleanly(&mut ws).await;
    case.still_works().await;
}

#[tokio::test]
async fn unsolicited_pongs_are_ignored() {
    let mut case = Case::start().await;
    let mut ws = case.open("rw").await;
    ws.send(&frame(PONG, b"")).await;
    ws.send(&frame(PONG, b"unsolicited pong payload")).await;
    ws.send(&frame(PING, b"ping after pongs")).await;
    assert_eq!(ws.expect_pong().await, b"ping after pongs");
    ws.send(&frame(TEXT, b"after pongs")).await;
    assert_eq!(case.notified().await, "after pongs");
    close_cleanly(&mut ws).await;
    case.still_works().await;
}

#[tokio::test]
async fn ten_pings_get_ten_pongs() {
    let mut case = Case::start().await;
    let mut ws = case.open("rw").await;
    let pings: Vec<Vec<u8>> = (0..10).map(|i| format!("ping {i}").into_bytes()).collect();
    let bytes = cat(&pings.iter().map(|p| frame(PING, p)).collect::<Vec<_>>());
    ws.send(&bytes).await;
    for p in &pings {
        assert_eq!(&ws.expect_pong().await, p);
    }
    ws.send_bytewise(&bytes).await;
    for p in &pings {
        assert_eq!(&ws.expect_pong().await, p);
    }
    close_cleanly(&mut ws).await;
    case.still_works().await;
}

// ---------------------------------------------------------------------------
// UTF-8 (Autobahn 6.*)
// ---------------------------------------------------------------------------

#[tokio::test]
async fn valid_utf8_is_notified_however_it_is_fragmented() {
    let mut case = Case::start().await;
    let mut ws = case.open("rw").await;
    // 6.2 (Hello-µ@ßöäüàá-UTF-8!!), 6.5 (κόσμε), 6.7 and 6.11 (first / last code
    // points of each length, U+FFFD, U+FFFF, U+10FFFF), 6.22 (noncharacters).
    let text = "Hello-µ@ßöäüàá-UTF-8!! κόσμε \u{7f}\u{80}\u{7ff}\u{800}\u{d7ff}\u{e000}\
                \u{fffd}\u{fffe}\u{ffff}\u{10000}\u{10ffff}\u{1fffe}𝄞";
    ws.send(&frame(TEXT, text.as_bytes())).await;
    assert_eq!(case.notified().await, text);
    // Split into two fragments at every byte, within code points included.
    let short = "κ𝄞\u{ffff}ß";
    let bytes = short.as_bytes();
    for at in 0..=bytes.len() {
        let message = cat(&[masked(TEXT, &bytes[..at]), masked(FIN | CONT, &bytes[at..])]);
        ws.send(&message).await;
        assert_eq!(case.notified().await, short, "split at {at}");
    }
    // One byte per fragment.
    let mut message = masked(TEXT, b"");
    for b in text.as_bytes() {
        message.extend(masked(CONT, &[*b]));
    }
    message.extend(masked(FIN | CONT, b""));
    ws.send(&message).await;
    assert_eq!(case.notified().await, text);
    close_cleanly(&mut ws).await;
    case.still_works().await;
}

#[tokio::test]
async fn valid_utf8_in_a_binary_frame_is_notified_as_text() {
    let mut case = Case::start().await;
    let mut ws = case.open("rw").await;
    ws.send(&frame(BINARY, "binary κόσμε 𝄞".as_bytes())).await;
    assert_eq!(case.notified().await, "binary κόσμε 𝄞");
    // Split within a code point: binary is checked once reassembled.
    let bytes = "ß".as_bytes();
    ws.send(&cat(&[
        masked(BINARY, &bytes[..1]),
        masked(FIN | CONT, &bytes[1..]),
    ]))
    .await;
    assert_eq!(case.notified().await, "ß");
    close_cleanly(&mut ws).await;
    case.still_works().await;
}

// ---------------------------------------------------------------------------
// Close (Autobahn 7.*)
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_close_is_echoed_and_the_connection_ends() {
    let mut case = Case::start().await;
    // 7.1.1 / 7.3.4: a message, then a close with a reason.
    let mut ws = case.open("rw").await;
    ws.send(&frame(TEXT, b"before the close")).await;
    ws.send(&close(1000, b"bye")).await;
    let (code, _) = ws.expect_close().await;
    assert_eq!(code, Some(1000));
    ws.expect_eof().await;
    assert_eq!(case.notified().await, "before the close");
    // 7.1.6: a large message and the close in one write: the message still counts.
    let mut ws = case.open("rw").await;
    let large = "L".repeat(7000);
    ws.send(&cat(&[frame(TEXT, large.as_bytes()), close(1000, b"")]))
        .await;
    let (code, _) = ws.expect_close().await;
    assert_eq!(code, Some(1000));
    ws.expect_eof().await;
    assert_eq!(case.notified().await, large);
    // 7.3.3: a code only.
    let mut ws = case.open("rw").await;
    close_cleanly(&mut ws).await;
    case.still_works().await;
}

#[tokio::test]
async fn an_empty_close_is_answered() {
    let mut case = Case::start().await;
    let mut ws = case.open("rw").await;
    ws.send(&frame(CLOSE, b"")).await;
    let (code, reason) = ws.expect_close().await;
    // An empty close is answered with an empty close (or 1000; both are right).
    assert!(code.is_none() || code == Some(1000), "{code:?} {reason}");
    ws.expect_eof().await;
    case.still_works().await;
}

#[tokio::test]
async fn valid_close_codes_are_echoed() {
    let mut case = Case::start().await;
    for code in [
        1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999,
    ] {
        let mut ws = case.open("rw").await;
        ws.send(&close(code, b"a reason")).await;
        let (got, _) = ws.expect_close().await;
        assert_eq!(got, Some(code));
        ws.expect_eof().await;
    }
    case.still_works().await;
}

#[tokio::test]
async fn close_reasons_up_to_123_bytes_are_accepted_and_124_is_1002() {
    let mut case = Case::start().await;
    let mut ws = case.open("rw").await;
    ws.send(&close(1000, &[b'r'; 123])).await;
    let (code, _) = ws.expect_close().await;
    assert_eq!(code, Some(1000));
    ws.expect_eof().await;
    // 2 + 124 bytes: a control frame over 125 bytes.
    fails(&mut case, &close(1000, &[b'r'; 124]), &[], 1002).await;
}

#[tokio::test]
async fn frames_after_the_close_are_ignored() {
    let mut case = Case::start().await;
    // In one write, so that what follows the close is read with it (bytes left unread
    // in the kernel would turn the server's FIN into a reset).
    let after = [
        frame(TEXT, b"text after the close"), // 7.1.4
        close(1000, b"second close"),         // 7.1.2
        frame(PING, b"ping after the close"), // 7.1.3
        frame(BINARY, b"binary after the close"),
    ];
    for extra in after {
        let mut ws = case.open("rw").await;
        ws.send(&cat(&[close(1000, b""), extra])).await;
        // `expect_close` fails on a pong; `expect_eof` on anything after the close.
        let (code, _) = ws.expect_close().await;
        assert_eq!(code, Some(1000));
        ws.expect_eof().await;
        // Nothing of it was NOTIFYed.
        case.still_works().await;
    }
}

#[tokio::test]
async fn a_close_between_fragments_ends_the_message_unnotified() {
    let mut case = Case::start().await;
    let mut ws = case.open("rw").await;
    let bytes = cat(&[
        masked(TEXT, b"never "),
        close(1000, b""),
        masked(FIN | CONT, b"finished"),
    ]);
    ws.send(&bytes).await;
    let (code, _) = ws.expect_close().await;
    assert_eq!(code, Some(1000));
    ws.expect_eof().await;
    case.still_works().await;
}

// ---------------------------------------------------------------------------
// Sizes (Autobahn 9.*, partially)
// ---------------------------------------------------------------------------

const LIMIT: usize = 4096;

fn limited() -> ConfigBuilder {
    config().max_message_bytes(LIMIT)
}

#[tokio::test]
async fn a_message_at_the_limit_is_notified_and_one_byte_more_is_1009() {
    // 4096 bytes still fit a NOTIFY (its envelope stays under 8000 bytes).
    let mut case = Case::with(limited()).await;
    let mut ws = case.open("rw").await;
    let at_limit = "m".repeat(LIMIT);
    ws.send(&frame(TEXT, at_limit.as_bytes())).await;
    assert_eq!(case.notified().await, at_limit);
    let near = "n".repeat(3000);
    ws.send(&frame(BINARY, near.as_bytes())).await;
    assert_eq!(case.notified().await, near);
    // Reassembled from fragments, exactly at the limit.
    let half = "h".repeat(LIMIT / 2);
    ws.send(&cat(&[
        masked(TEXT, half.as_bytes()),
        masked(FIN | CONT, half.as_bytes()),
    ]))
    .await;
    assert_eq!(case.notified().await, half.repeat(2));
    close_cleanly(&mut ws).await;
    // One byte over, in one frame: the codec's 1009 (reason `max length: 4096`).
    let over = "o".repeat(LIMIT + 1);
    fails(&mut case, &frame(TEXT, over.as_bytes()), &[], 1009).await;
    fails(&mut case, &frame(BINARY, over.as_bytes()), &[], 1009).await;
}

// ---------------------------------------------------------------------------
// Mode (contract §6)
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_read_only_socket_sending_data_is_1008() {
    let mut case = Case::start().await;
    // A read-only socket still answers pings and gets notifications.
    let mut ws = case.open("r").await;
    ws.send(&frame(PING, b"reader")).await;
    assert_eq!(ws.expect_pong().await, b"reader");
    close_cleanly(&mut ws).await;
    for bytes in [
        frame(TEXT, b"not allowed"),
        frame(BINARY, b"not allowed"),
        // Checked once the message is whole (README: differences from the contract).
        cat(&[masked(TEXT, b"not "), masked(FIN | CONT, b"allowed")]),
    ] {
        let reason = fails_with(&mut case, "r", &bytes, &[], 1008, By::Pgws).await;
        assert!(reason.starts_with("Write not allowed"), "{reason}");
    }
}
