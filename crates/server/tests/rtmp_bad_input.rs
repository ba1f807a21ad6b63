//! Bad input at the RTMP listener: each case gets a close (with a logged error) while a live
//! publisher and its readers go on untouched.

mod common;

use std::time::Duration;

use bytes::BytesMut;
use common::*;
use ferrocast_rtmp::amf0::{self, Value};
use ferrocast_rtmp::chunk::encode_message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CONFIG: &str = "[rtmp]\nhandshake_timeout_ms = 500\nmax_message_size = 65536\n";

/// Reads until the server closes; panics if it keeps the connection open.
async fn expect_closed(mut s: TcpStream, what: &str) {
    let mut buf = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(_)) => continue,
            Err(_) => panic!("{what}: server kept the connection open"),
        }
    }
}

/// A connection past a plain handshake.
async fn handshaken(server: &Server) -> TcpStream {
    let mut s = TcpStream::connect(server.rtmp).await.unwrap();
    let mut c0c1 = vec![3u8];
    c0c1.extend_from_slice(&[0u8; 1536]);
    s.write_all(&c0c1).await.unwrap();
    let mut s012 = vec![0u8; 1 + 2 * 1536];
    s.read_exact(&mut s012).await.unwrap();
    assert_eq!(s012[0], 3);
    s.write_all(&[0u8; 1536]).await.unwrap();
    s
}

fn message(csid: u32, type_id: u8, stream_id: u32, body: &[u8]) -> BytesMut {
    let mut b = BytesMut::new();
    encode_message(&mut b, csid, 0, type_id, stream_id, body, 128);
    b
}

fn command(values: &[Value]) -> BytesMut {
    message(3, 20, 0, &amf0::encode_all(values))
}

#[tokio::test(flavor = "multi_thread")]
async fn each_bad_input_is_closed_and_others_go_on() {
    let server = Server::with_config(CONFIG);
    let _publisher = publish(test_flv(), &server.rtmp_url("live/ok"));
    wait_published(&server, "live/ok").await;
    // A reader that must see the stream throughout.
    let url = server.rtmp_url("live/ok");
    let reader = tokio::task::spawn_blocking(move || probe(&url, 6));

    // Garbage instead of a handshake.
    let mut s = TcpStream::connect(server.rtmp).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    expect_closed(s, "garbage handshake").await;

    // Opens and sends nothing: the handshake timeout closes it.
    expect_closed(TcpStream::connect(server.rtmp).await.unwrap(), "silent connection").await;

    // Half a handshake, then silence.
    let mut s = TcpStream::connect(server.rtmp).await.unwrap();
    s.write_all(&[3u8; 700]).await.unwrap();
    expect_closed(s, "partial handshake").await;

    let connect = command(&[Value::from("connect"), Value::Number(1.0), Value::object([("app", Value::from("live"))])]);
    let cases: Vec<(&str, Vec<BytesMut>)> = vec![
        ("chunk size 0", vec![message(2, 1, 0, &0u32.to_be_bytes())]),
        ("chunk size above 2^31-1", vec![message(2, 1, 0, &0x8000_0000u32.to_be_bytes())]),
        (
            "message length above the cap",
            vec![BytesMut::from(&[0x04u8, 0, 0, 0, 0x01, 0x00, 0x01, 9, 1, 0, 0, 0, 0][..])],
        ),
        ("unknown message type", vec![connect.clone(), message(3, 42, 0, b"??")]),
        ("malformed AMF", vec![message(3, 20, 0, &[0x02, 0x00, 0x09, b'c', b'o'])]),
        (
            "command before connect",
            vec![command(&[Value::from("publish"), Value::Number(2.0), Value::Null, Value::from("x")])],
        ),
        ("media without publish", vec![connect.clone(), message(6, 9, 1, &[0x17, 1, 0, 0, 0])]),
        (
            "too many chunk streams",
            vec![{
                let mut b = message(2, 1, 0, &1u32.to_be_bytes());
                for csid in 0..70u8 {
                    b.extend_from_slice(&[0x00, csid, 0, 0, 0, 0, 0, 9, 9, 1, 0, 0, 0, 7]);
                }
                b
            }],
        ),
    ];
    for (what, msgs) in cases {
        let mut s = handshaken(&server).await;
        for m in msgs {
            // The server may close before everything is written.
            if s.write_all(&m).await.is_err() {
                break;
            }
        }
        expect_closed(s, what).await;
    }

    let p = reader.await.unwrap();
    p.assert_h264_aac(320, 240, 120);
    // And a new reader still gets the stream.
    let url = server.rtmp_url("live/ok");
    tokio::task::spawn_blocking(move || probe(&url, 2)).await.unwrap().assert_h264_aac(320, 240, 30);
}
