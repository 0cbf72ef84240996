//! The connection-level promises of docs/PROTOCOL.md, one test each:
//! `max_connections` over both protocols, `bad_hello`, the server's
//! `idle_timeout`, several subscriptions on one connection, mTLS on the
//! subscription protocol, `shutting_down` for a
//! request still arriving at a stop, and SIGINT.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use edgeflow::ingest::frame::{ErrorCode, Frame, ALPN};
use edgeflow::log::Encoding;
use edgeflow::subscribe::client::{State, SubscribeOptions};
use edgeflow::subscribe::proto::{SubError, SubFrame, Subscribe, ALPN as SUB_ALPN};

use crate::ingest::{
    raw_connect, runtime, send_recording, session, spawn_edge, topology_text, TOKEN,
};
use crate::subscribe::{assert_state, csv_rows, node, node_with, sink_file, CITY};
use crate::support::{assert_expected, data};

/// How long any single answer may take on a loaded machine.
const ANSWER: Duration = Duration::from_secs(15);

/// The first frame the node sends on an ingest stream (None: the stream
/// ended without one).
async fn ingest_frame(recv: &mut quinn::RecvStream) -> Option<Frame> {
    let mut buf = BytesMut::new();
    let read = async {
        loop {
            if let Ok(Some(frame)) = Frame::decode(&mut buf, 1 << 20) {
                return Some(frame);
            }
            match recv.read_chunk(1 << 16, true).await {
                Ok(Some(chunk)) => buf.extend_from_slice(&chunk.bytes),
                _ => return None,
            }
        }
    };
    tokio::time::timeout(ANSWER, read)
        .await
        .expect("the node answers in time")
}

/// Opens an ingest connection and sends HELLO as `sender`; returns the
/// connection, its control stream and the node's answer.
async fn hello(
    node: &crate::ingest::Node,
    token: &str,
    sender: &str,
) -> (quinn::Connection, quinn::SendStream, Option<Frame>) {
    let conn = raw_connect(node, ALPN).await.expect("handshake");
    let (mut control, mut answer) = conn.open_bi().await.expect("control stream");
    let hello = Frame::Hello {
        token: token.into(),
        sender: sender.into(),
    };
    control.write_all(&hello.to_bytes()).await.expect("hello");
    let frame = ingest_frame(&mut answer).await;
    (conn, control, frame)
}

fn code_of(frame: &Option<Frame>) -> Option<u16> {
    match frame {
        Some(Frame::Error { code, .. }) => Some(*code),
        _ => None,
    }
}

/// Opens a subscription stream on `conn` with `req`.
async fn open_subscription(conn: &quinn::Connection, req: Subscribe) -> quinn::RecvStream {
    let (mut send, recv) = conn.open_bi().await.expect("stream");
    let mut buf = BytesMut::new();
    SubFrame::Subscribe(req).encode(&mut buf);
    send.write_all(&buf).await.expect("write");
    let _ = send.finish();
    recv
}

/// Reads subscription frames into `state` until the snapshot marker
/// (`until_snapshot`) or the end of the stream; returns the error frame's
/// code if one came.
async fn follow_stream(
    recv: &mut quinn::RecvStream,
    state: &mut State,
    until_snapshot: bool,
) -> Option<u16> {
    let mut buf = BytesMut::new();
    loop {
        while let Some(frame) = SubFrame::decode(&mut buf, 1 << 24).expect("a valid frame") {
            if let SubFrame::Error(e) = &frame {
                return Some(e.code);
            }
            state.apply(&frame);
            if until_snapshot && state.snapshot_done {
                return None;
            }
        }
        match recv.read_chunk(1 << 16, true).await {
            Ok(Some(chunk)) => buf.extend_from_slice(&chunk.bytes),
            Ok(None) => return None,
            Err(e) => panic!("subscription stream: {e}"),
        }
    }
}

#[test]
fn max_connections_counts_ingest_and_subscription_sessions() {
    let node = node_with("max_connections = 2", "");
    runtime().block_on(async {
        // Slot 1: an ingest session. Slot 2: a subscription connection,
        // authenticated by its first SUBSCRIBE.
        let (_ingest, _control) = session(&node, "first").await;
        let subscriber = raw_connect(&node, SUB_ALPN).await.expect("handshake");
        let mut recv =
            open_subscription(&subscriber, SubscribeOptions::request(CITY, "charging")).await;
        let mut state = State::default();
        let error = tokio::time::timeout(ANSWER, follow_stream(&mut recv, &mut state, true))
            .await
            .expect("snapshot in time");
        assert_eq!(error, None);

        // Full: a third session's HELLO is answered `overloaded`...
        let (_third, _control, answer) = hello(&node, TOKEN, "third").await;
        assert_eq!(
            code_of(&answer),
            Some(ErrorCode::Overloaded as u16),
            "{answer:?}"
        );
        // ...and another subscription connection is closed with that code.
        let other = raw_connect(&node, SUB_ALPN).await.expect("handshake");
        let _stream = open_subscription(&other, SubscribeOptions::request(CITY, "charging")).await;
        let closed = tokio::time::timeout(ANSWER, other.closed())
            .await
            .expect("closed in time");
        match &closed {
            quinn::ConnectionError::ApplicationClosed(c) => {
                assert_eq!(c.error_code.into_inner(), SubError::Overloaded as u64);
                assert!(String::from_utf8_lossy(&c.reason).contains("max_connections"));
            }
            other => panic!("expected an application close, got {other}"),
        }

        // The subscriber leaves: its slot is free for a fleet.
        subscriber.close(0u32.into(), b"done");
        let deadline = tokio::time::Instant::now() + ANSWER;
        loop {
            let (_conn, _control, answer) = hello(&node, TOKEN, "fourth").await;
            match answer {
                Some(Frame::Welcome { .. }) => break,
                other => assert!(
                    tokio::time::Instant::now() < deadline,
                    "the slot was not given back: {other:?}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let mut node = node;
    node.stop();
}

#[test]
fn a_bad_hello_closes_the_connection_with_bad_hello() {
    let mut node = crate::ingest::start("");
    runtime().block_on(async {
        // Not HELLO first: a BATCH.
        let conn = raw_connect(&node, ALPN).await.expect("handshake");
        let (mut control, mut answer) = conn.open_bi().await.expect("stream");
        let batch = Frame::Batch {
            sender_seq: 0,
            encoding: Encoding::JsonLines,
            records: Bytes::from_static(b"{}\n"),
        };
        control.write_all(&batch.to_bytes()).await.expect("write");
        let frame = ingest_frame(&mut answer).await;
        assert_eq!(
            code_of(&frame),
            Some(ErrorCode::BadHello as u16),
            "{frame:?}"
        );
        let closed = tokio::time::timeout(ANSWER, conn.closed())
            .await
            .expect("closed");
        assert!(
            matches!(&closed, quinn::ConnectionError::ApplicationClosed(c)
                if c.error_code.into_inner() == ErrorCode::BadHello as u64),
            "{closed}"
        );

        // A HELLO whose payload is not one.
        let conn = raw_connect(&node, ALPN).await.expect("handshake");
        let (mut control, mut answer) = conn.open_bi().await.expect("stream");
        let mut garbage = vec![edgeflow::ingest::frame::kind::HELLO, 0, 0, 0, 3];
        garbage.extend_from_slice(b"\xff\x00\x01");
        control.write_all(&garbage).await.expect("write");
        let frame = ingest_frame(&mut answer).await;
        assert_eq!(
            code_of(&frame),
            Some(ErrorCode::BadHello as u16),
            "{frame:?}"
        );

        // A sender id the node cannot keep (TELEMETRY.md §6: ids are
        // 1-64 bytes of letters, digits and `-_.:#/`).
        for sender in ["", "has space", &"x".repeat(65)] {
            let (_conn, _control, frame) = hello(&node, TOKEN, sender).await;
            assert_eq!(
                code_of(&frame),
                Some(ErrorCode::BadHello as u16),
                "sender {sender:?}: {frame:?}"
            );
        }
        // The longest id is fine.
        let (_conn, _control, frame) = hello(&node, TOKEN, &"x".repeat(64)).await;
        assert!(matches!(frame, Some(Frame::Welcome { .. })), "{frame:?}");
    });
    let stopped = node.stop();
    assert_eq!(stopped.summary.ingest.records, 0, "nothing was taken");
}

#[test]
fn a_connection_silent_for_the_idle_timeout_is_closed_and_keep_alive_holds_it() {
    let mut node = crate::ingest::start("idle_timeout = \"1s\"");
    let client = |keep_alive: Option<Duration>| {
        let mut config = edgeflow::wire::tls::client_config(&node.ca, None, ALPN).expect("config");
        let mut transport = quinn::TransportConfig::default();
        // The client would wait a minute: only the node's 1 s can close it.
        transport.max_idle_timeout(Some(Duration::from_secs(60).try_into().expect("idle")));
        transport.keep_alive_interval(keep_alive);
        config.transport_config(std::sync::Arc::new(transport));
        let mut endpoint =
            quinn::Endpoint::client((std::net::Ipv4Addr::LOCALHOST, 0).into()).expect("endpoint");
        endpoint.set_default_client_config(config);
        endpoint
    };
    runtime().block_on(async {
        let hello_on = |conn: quinn::Connection| async move {
            let (mut control, mut answer) = conn.open_bi().await.expect("control");
            let hello = Frame::Hello {
                token: TOKEN.into(),
                sender: "quiet".into(),
            };
            control.write_all(&hello.to_bytes()).await.expect("hello");
            let frame = ingest_frame(&mut answer).await;
            assert!(matches!(frame, Some(Frame::Welcome { .. })), "{frame:?}");
            (conn, control, answer)
        };
        // Silent: gone after about a second.
        let silent = client(None)
            .connect(node.addr(), "localhost")
            .expect("connect")
            .await
            .expect("handshake");
        let (silent, _c, _a) = hello_on(silent).await;
        let started = tokio::time::Instant::now();
        let closed = tokio::time::timeout(ANSWER, silent.closed())
            .await
            .expect("closed by the node's idle timeout");
        assert!(
            matches!(closed, quinn::ConnectionError::TimedOut),
            "{closed}"
        );
        assert!(started.elapsed() < Duration::from_secs(10));

        // With keep-alive pings every 200 ms it outlives three timeouts and
        // is still served.
        let alive = client(Some(Duration::from_millis(200)))
            .connect(node.addr(), "localhost")
            .expect("connect")
            .await
            .expect("handshake");
        let (alive, _c, _a) = hello_on(alive).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(alive.close_reason().is_none(), "{:?}", alive.close_reason());
        let good = r#"{"type":"vehicle","vehicle_id":"v-1","ts_ms":1767258001000,"lat":60.53,"lon":26.95,"speed_mps":7.5,"segment_id":"-172093298"}"#;
        let batch = Frame::Batch {
            sender_seq: 0,
            encoding: Encoding::JsonLines,
            records: Bytes::from(format!("{good}\n")),
        };
        match crate::ingest::exchange(&alive, batch.to_bytes()).await {
            Frame::Ack { accepted: 1, .. } => {}
            other => panic!("expected an ACK of one record, got {other:?}"),
        }
    });
    node.stop();
}

#[test]
fn several_subscriptions_share_one_connection() {
    let mut node = node("[privacy]\nmin_vehicles = 1\n");
    let rt = runtime();
    let (conn, streams) = rt.block_on(async {
        let conn = raw_connect(&node, SUB_ALPN).await.expect("handshake");
        let mut streams = Vec::new();
        for kind in ["congestion", "charging", "zone"] {
            let mut recv = open_subscription(&conn, SubscribeOptions::request(CITY, kind)).await;
            let mut state = State::default();
            let error = tokio::time::timeout(ANSWER, follow_stream(&mut recv, &mut state, true))
                .await
                .expect("snapshot in time");
            assert_eq!(error, None, "{kind}");
            streams.push((kind, recv, state));
        }
        (conn, streams)
    });
    // Follow all three while the recording arrives.
    let followers: Vec<_> = streams
        .into_iter()
        .map(|(kind, mut recv, mut state)| {
            std::thread::spawn(move || {
                let error = runtime().block_on(follow_stream(&mut recv, &mut state, false));
                (kind, state, error)
            })
        })
        .collect();
    send_recording(&node);
    node.stop();
    for follower in followers {
        let (kind, state, error) = follower.join().expect("follower");
        assert_eq!(error, None, "{kind}");
        let file = sink_file(kind);
        assert_state(&state, &csv_rows(&node.sink(file)), kind);
    }
    drop(conn);
}

#[test]
fn a_node_requiring_client_certificates_requires_them_of_subscribers_too() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = edgeflow::node::make_certs(dir.path(), &["localhost".into()]).expect("certs");
    let hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(CITY.as_bytes()));
    let text = topology_text(dir.path(), "client_ca = \"ca.pem\"")
        + &format!("[[operator]]\nname = \"city\"\ntoken_sha256 = \"{hash}\"\n");
    std::fs::write(dir.path().join("edge.toml"), text).expect("topology");
    let handle = crate::ingest::restart_in(dir.path());
    let mut node = crate::ingest::Node::new(dir, certs.ca.clone(), handle);
    let identity = (certs.client_cert.clone(), certs.client_key.clone());
    runtime().block_on(async {
        let connect = |identity: Option<&(std::path::PathBuf, std::path::PathBuf)>| {
            let config =
                edgeflow::wire::tls::client_config(&certs.ca, identity, SUB_ALPN).expect("config");
            let mut endpoint = quinn::Endpoint::client((std::net::Ipv4Addr::LOCALHOST, 0).into())
                .expect("endpoint");
            endpoint.set_default_client_config(config);
            endpoint.connect(node.addr(), "localhost").expect("connect")
        };
        // Without a certificate: refused in the handshake (TLS 1.3 clients
        // learn it at their first read).
        let refused = match connect(None).await {
            Err(e) => e.to_string(),
            Ok(conn) => {
                let attempt = async {
                    let (mut send, mut recv) = conn.open_bi().await?;
                    send.write_all(b"\x11").await?;
                    let mut buf = [0u8; 64];
                    recv.read(&mut buf).await?;
                    anyhow::Ok(())
                };
                match tokio::time::timeout(ANSWER, attempt).await {
                    // Why the connection went.
                    Ok(Err(_)) => conn.closed().await.to_string(),
                    other => panic!("served without a client certificate: {other:?}"),
                }
            }
        };
        assert!(refused.to_lowercase().contains("certificate"), "{refused}");
        // With the client certificate: served.
        let conn = connect(Some(&identity)).await.expect("handshake");
        let mut recv = open_subscription(&conn, SubscribeOptions::request(CITY, "charging")).await;
        let mut state = State::default();
        let error = tokio::time::timeout(ANSWER, follow_stream(&mut recv, &mut state, true))
            .await
            .expect("snapshot in time");
        assert_eq!(error, None);
        assert!(state.snapshot_done);
        conn.close(0u32.into(), b"done");
    });
    node.stop();
}

#[test]
fn a_subscribe_still_arriving_at_a_stop_is_answered_shutting_down() {
    // The request may take its time: only the stop can answer it.
    let node = node_with("hello_timeout = \"60s\"", "");
    let rt = runtime();
    let (conn, mut send, mut recv) = rt.block_on(async {
        let conn = raw_connect(&node, SUB_ALPN).await.expect("handshake");
        let (mut send, recv) = conn.open_bi().await.expect("stream");
        // The first byte of a SUBSCRIBE, the rest never comes.
        send.write_all(&[0x11]).await.expect("write");
        (conn, send, recv)
    });
    let mut node = node;
    let stopper = std::thread::spawn(move || {
        node.stop();
        node
    });
    let code = rt.block_on(async {
        let mut state = State::default();
        tokio::time::timeout(ANSWER, follow_stream(&mut recv, &mut state, false))
            .await
            .expect("answered in time")
    });
    assert_eq!(code, Some(SubError::ShuttingDown as u16));
    stopper.join().expect("stopped");
    let _ = send.finish();
    drop(conn);
}

#[test]
fn sigint_drains_the_node_and_exits_zero() {
    let _deadline = crate::support::deadline();
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = edgeflow::node::make_certs(dir.path(), &["localhost".into()]).expect("certs");
    std::fs::write(dir.path().join("edge.toml"), topology_text(dir.path(), "")).expect("topology");
    let (mut child, addr) = spawn_edge(dir.path());
    let sent = std::process::Command::new(env!("CARGO_BIN_EXE_edgeflow"))
        .args(["send", "--to", &addr.to_string(), "--token", TOKEN])
        .args(["--server-name", "localhost", "--ca"])
        .arg(&certs.ca)
        .arg(data("sumo-public/telemetry.jsonl"))
        .output()
        .expect("send runs");
    assert!(
        sent.status.success(),
        "{}",
        String::from_utf8_lossy(&sent.stderr)
    );
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let exit = loop {
        if let Some(exit) = child.try_wait().expect("wait") {
            break exit;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the node did not stop within 60 s of SIGINT");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "SIGINT stops with exit 0: {exit}");
    // Drained: every acknowledged record is in the sink's final windows.
    let read = |f: &str| std::fs::read_to_string(dir.path().join("out").join(f)).expect("sink");
    assert_expected(&read("congestion.csv"), &read("charging.csv"));
}
