//! Scripted hostile peers against real ranks on 127.0.0.1.

use crate::wire::{self, DataHeader, Frame, Hello, Tag, FLAG_LAST};
use crate::{loopback_comms, NetConfig};
use lazarus_format::Rank;
use std::io::Read;
use std::net::TcpStream;
use std::time::Duration;

fn cfg() -> NetConfig {
    NetConfig {
        heartbeat_interval: Duration::from_millis(50),
        failure_timeout: Duration::from_millis(3000),
        connect_timeout: Duration::from_secs(10),
        max_frame: 4096,
        spin: Duration::from_micros(20),
    }
}

fn read_one(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    wire::read_frame(s, 1 << 16, &mut buf).ok()?;
    Some(buf)
}

/// The relay attack of issue #11 item 1: an attacker without the token asks rank 1 for a
/// proof while claiming to be rank 0, forwards it to rank 0 claiming to be rank 1, then
/// injects a Data frame with the next sequence number.
#[test]
fn handshake_relay_is_refused() {
    let comms = loopback_comms(2, cfg()).unwrap();
    let addrs = comms[0].transport_for_tests().unwrap().addrs();
    let mut to1 = TcpStream::connect(addrs[1]).unwrap();
    let mut to0 = TcpStream::connect(addrs[0]).unwrap();
    for s in [&to1, &to0] {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    }
    let h1 =
        match read_one(&mut to1).map(|b| wire::decode(&b).map(|f| f.clone().into_owned_hello())) {
            Some(Ok(Some(h))) => h,
            _ => panic!("rank 1 said nothing"),
        };
    let h0 =
        match read_one(&mut to0).map(|b| wire::decode(&b).map(|f| f.clone().into_owned_hello())) {
            Some(Ok(Some(h))) => h,
            _ => panic!("rank 0 said nothing"),
        };
    // To rank 0 as rank 1 with rank 1's nonce; to rank 1 as rank 0 with rank 0's nonce.
    wire::write_frame(
        &mut to0,
        &Frame::Hello(Hello {
            rank: 1,
            nonce: h1.nonce,
            ..h0
        }),
    )
    .unwrap();
    wire::write_frame(
        &mut to1,
        &Frame::Hello(Hello {
            rank: 0,
            nonce: h0.nonce,
            ..h1
        }),
    )
    .unwrap();
    let _rank0_proof = read_one(&mut to0);
    eprintln!("rank0 proof {:?}", _rank0_proof.as_ref().map(|b| b.len()));
    if let Some(p) = read_one(&mut to1) {
        let mut out = Vec::new();
        out.extend_from_slice(&(p.len() as u32).to_le_bytes());
        out.extend_from_slice(&p);
        let _ = std::io::Write::write_all(&mut to0, &out);
    }
    // Resume and the forged frame leave together: the reader of the hijacked connection
    // finds the frame before the real rank 1 reconnects and supersedes it.
    let forged = postcard::to_allocvec(&666u64).unwrap();
    let h = DataHeader {
        flags: FLAG_LAST,
        tag: Tag::user(1),
        src: 1,
        incarnation: h0.incarnation,
        epoch: 0,
        seq: 0,
        ack: 0,
    };
    let mut out = Vec::new();
    wire::encode(&Frame::Resume(0), &mut out);
    wire::write_data(&mut out, &h, &forged).unwrap();
    let _ = std::io::Write::write_all(&mut to0, &out);
    let r = read_one(&mut to0);
    eprintln!("after forward: {:?}", r.as_ref().map(|b| wire::decode(b)));
    std::thread::sleep(Duration::from_millis(300));
    let mut c = comms.into_iter();
    let (c0, c1) = (c.next().unwrap(), c.next().unwrap());
    c1.send(Rank(0), 1, &42u64).unwrap();
    let got: u64 = c0.recv(Rank(1), 1).unwrap();
    assert_eq!(
        got, 42,
        "rank 0 accepted a frame forged by a relaying attacker"
    );
    let mut sink = Vec::new();
    let _ = to0.read_to_end(&mut sink);
}
