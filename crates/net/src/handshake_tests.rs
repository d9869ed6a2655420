//! The handshake as a pure state machine (every message, every mismatch, every mutation)
//! and its blocking driver on real TCP (error messages).

use super::*;
use crate::auth::{FrameMac, JobToken};
use crate::wire::MAGIC;
use proptest::prelude::*;
use std::net::{TcpListener, TcpStream};

fn token(t: &str) -> JobToken {
    JobToken::new(t).unwrap()
}

fn id(t: &JobToken, me: u32, inc: u64) -> Identity {
    Identity::new(t, me, inc, FrameMac::On)
}

fn id_off(t: &JobToken, me: u32, inc: u64) -> Identity {
    Identity::new(t, me, inc, FrameMac::Off)
}

fn enc(f: &Frame<'_>) -> Vec<u8> {
    let mut v = Vec::new();
    wire::encode(f, &mut v);
    v.split_off(4)
}

/// The mesh rule for a world of `size`: a higher rank dials a lower one.
fn mesh(me: u32, size: u32) -> impl Fn(u32) -> std::result::Result<(), String> {
    move |from| {
        if from > me && from < size {
            Ok(())
        } else {
            Err("the higher rank dials".into())
        }
    }
}

/// The messages of one handshake between `d` and `l`, with each message passed through
/// `tamper(index, bytes)` on its way; the outcome on each side.
struct Run {
    msgs: Vec<Vec<u8>>,
    dialer: std::result::Result<Session, Failed>,
    listener: std::result::Result<Session, Failed>,
}

fn run(d: Identity, l: Identity, size: u32, tamper: &mut dyn FnMut(usize, &mut Vec<u8>)) -> Run {
    run_with(d, l, size, 0, tamper)
}

/// `run` with nonces derived from `seed`.
fn run_with(
    d: Identity,
    l: Identity,
    size: u32,
    seed: u8,
    tamper: &mut dyn FnMut(usize, &mut Vec<u8>),
) -> Run {
    let mut msgs = Vec::new();
    let mut send = |f: &Frame<'_>, msgs: &mut Vec<Vec<u8>>| {
        let mut b = enc(f);
        tamper(msgs.len(), &mut b);
        msgs.push(b.clone());
        b
    };
    let lme = l.me;
    let (dialer, hello) = Dialer::new(d, lme, [0xd1 ^ seed; 32]);
    let b = send(&hello, &mut msgs);
    let policy = mesh(lme, size);
    let (lc, challenge) = match on_dial(l, &policy, &b, [0x11 ^ seed; 32]) {
        Ok(x) => x,
        Err(f) => {
            let refusal = f.reply.as_ref().map(|r| send(r, &mut msgs));
            let dialer = match refusal {
                // A challenge here answers a dial of another version: the listener has
                // closed, whatever the dialer makes of it.
                Some(r) => dialer
                    .on_challenge(&r)
                    .and_then(|_| Err(fail(ErrorKind::Io, "closed", None))),
                None => Err(fail(ErrorKind::Io, "closed", None)),
            };
            return Run {
                msgs,
                dialer,
                listener: Err(f),
            };
        }
    };
    let b = send(&challenge, &mut msgs);
    let (dp, proof) = match dialer.on_challenge(&b) {
        Ok(x) => x,
        Err(f) => {
            return Run {
                msgs,
                dialer: Err(f),
                listener: Err(fail(ErrorKind::Io, "closed", None)),
            }
        }
    };
    let b = send(&proof, &mut msgs);
    match lc.on_proof(&b) {
        Ok((ls, lproof)) => {
            let b = send(&lproof, &mut msgs);
            Run {
                dialer: dp.on_proof(&b),
                msgs,
                listener: Ok(ls),
            }
        }
        Err(f) => {
            let dialer = match f.reply.as_ref().map(|r| send(r, &mut msgs)) {
                Some(r) => dp.on_proof(&r),
                None => Err(fail(ErrorKind::Io, "closed", None)),
            };
            Run {
                msgs,
                dialer,
                listener: Err(f),
            }
        }
    }
}

fn keys_match(a: &mut Session, b: &mut Session) -> bool {
    let check = |tx: &mut Sealer, rx: &mut Opener| {
        let mac = tx.seal(&[b"frame"]);
        let mut h = rx.start();
        h.update(b"frame");
        rx.verify(&h, &mac).is_ok()
    };
    check(&mut a.tx, &mut b.rx) && check(&mut b.tx, &mut a.rx)
}

fn no_tamper() -> impl FnMut(usize, &mut Vec<u8>) {
    |_, _| {}
}

fn refusal_sent(r: &Run) -> Option<Refusal> {
    r.msgs.iter().find_map(|m| match wire::decode(m) {
        Ok(Frame::Refused(x)) => Some(x),
        _ => None,
    })
}

fn proofs_sent(r: &Run) -> usize {
    r.msgs
        .iter()
        .filter(|m| matches!(wire::decode(m), Ok(Frame::Proof(_))))
        .count()
}

proptest! {
    #[test]
    fn honest_ranks_authenticate_with_matching_fresh_keys(
        l in 0u32..50, gap in 1u32..50, inc: u64, secret in "[a-z]{16,40}",
    ) {
        let t = token(&secret);
        let d = l + gap;
        let r = run(id(&t, d, inc), id(&t, l, inc), d + 1, &mut no_tamper());
        let (mut ds, mut ls) = (r.dialer.unwrap(), r.listener.unwrap());
        prop_assert_eq!(ds.peer, l);
        prop_assert_eq!(ls.peer, d);
        prop_assert!(keys_match(&mut ds, &mut ls));
        prop_assert_eq!(r.msgs.len(), 4);
        // A second handshake of the same pair gets other keys: no splicing of sessions.
        let mut r2 = run_with(id(&t, d, inc), id(&t, l, inc), d + 1, 1, &mut no_tamper());
        let mut ds2 = r2.dialer.take_ok();
        prop_assert!(!keys_match(&mut ds2, &mut ls));
    }

    /// The listener's first answer is a function of the dial's ranks and its own nonce
    /// only: whatever the token, job or incarnation, it reveals nothing about them.
    #[test]
    fn the_listener_reveals_nothing_before_the_dialer_proves(
        from: u32, to in 0u32..4, nonce: [u8; 32], inc_a: u64, inc_b: u64,
    ) {
        let dial = enc(&Frame::Hello(Hello::Dial { from, to, nonce }));
        let answer = |t: &str, inc: u64| match on_dial(id(&token(t), 1, inc), &mesh(1, 4), &dial, [9; 32]) {
            Ok((_, f)) => enc(&f),
            Err(f) => f.reply.map(|r| enc(&r)).unwrap_or_default(),
        };
        let a = answer("token-a-token-a-token-a", inc_a);
        prop_assert_eq!(&a, &answer("token-b-token-b-token-b", inc_b));
        let ok = to == 1 && from > 1 && from < 4;
        let expect = if ok {
            enc(&Frame::Hello(Hello::Challenge { nonce: [9; 32] }))
        } else {
            enc(&Frame::Refused(Refusal::NotAllowed))
        };
        prop_assert_eq!(a, expect);
    }

    /// Any change to any byte of any message: no session on either side (or, for the
    /// last message, at least the listener's session is the only one), never a panic.
    #[test]
    fn tampered_messages_never_authenticate(which in 0usize..4, at: usize, val: u8) {
        let t = token("tamper-tamper-tamper");
        let mut changed = false;
        let r = run(id(&t, 3, 7), id(&t, 1, 7), 4, &mut |i, b: &mut Vec<u8>| {
            if i == which {
                let k = at % b.len();
                changed = b[k] != val;
                b[k] = val;
            }
        });
        if changed {
            prop_assert!(r.dialer.is_err(), "dialer accepted message {which} tampered");
            if which < 3 {
                prop_assert!(r.listener.is_err(), "listener accepted message {which} tampered");
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = fuzz_handshake(&bytes);
        let t = token("garbage-garbage-garbage");
        let _ = on_dial(id(&t, 0, 0), &|_| Ok(()), &bytes, [0; 32]);
        let (d, _) = Dialer::new(id(&t, 1, 0), 0, [1; 32]);
        let _ = d.on_challenge(&bytes);
    }
}

trait TakeOk {
    fn take_ok(&mut self) -> Session;
}

impl TakeOk for std::result::Result<Session, Failed> {
    fn take_ok(&mut self) -> Session {
        match std::mem::replace(self, Err(fail(ErrorKind::Io, "taken", None))) {
            Ok(s) => s,
            Err(f) => panic!("handshake failed: {}", f.error),
        }
    }
}

#[test]
fn every_mismatch_is_refused_and_the_listener_never_proves_to_a_stranger() {
    let t = token("right-token-right-token");
    let other = token("wrong-token-wrong-token");
    let mut wrong_job = id(&t, 2, 0);
    wrong_job.keys.job = [0xee; 8];
    let cases: Vec<(&str, Identity, Identity, Refusal, &str)> = vec![
        (
            "wrong token",
            id(&other, 2, 0),
            id(&t, 1, 0),
            Refusal::Auth,
            "does not know the job token",
        ),
        (
            "wrong job id",
            wrong_job,
            id(&t, 1, 0),
            Refusal::Auth,
            "does not know the job token",
        ),
        (
            "older incarnation",
            id(&t, 2, 4),
            id(&t, 1, 5),
            Refusal::Incarnation(5),
            "is incarnation 4",
        ),
        (
            "newer incarnation",
            id(&t, 2, 6),
            id(&t, 1, 5),
            Refusal::Incarnation(5),
            "is incarnation 6",
        ),
        (
            "frame MAC off dials on",
            id_off(&t, 2, 0),
            id(&t, 1, 0),
            Refusal::FrameMac(FrameMac::On),
            "rank 2 runs with frame MAC off, rank 1 with on",
        ),
        (
            "frame MAC on dials off",
            id(&t, 2, 0),
            id_off(&t, 1, 0),
            Refusal::FrameMac(FrameMac::Off),
            "rank 2 runs with frame MAC on, rank 1 with off",
        ),
        (
            "lower rank dials",
            id(&t, 0, 0),
            id(&t, 1, 0),
            Refusal::NotAllowed,
            "rank 0 may not dial rank 1",
        ),
        (
            "same rank dials",
            id(&t, 1, 0),
            id(&t, 1, 0),
            Refusal::NotAllowed,
            "rank 1 may not dial rank 1",
        ),
        (
            "rank outside the world",
            id(&t, 9, 0),
            id(&t, 1, 0),
            Refusal::NotAllowed,
            "rank 9 may not dial",
        ),
    ];
    for (what, d, l, refusal, msg) in cases {
        let r = run(d, l, 3, &mut no_tamper());
        let le = r
            .listener
            .as_ref()
            .err()
            .unwrap_or_else(|| panic!("{what}: listener accepted"));
        assert_eq!(le.error.kind(), ErrorKind::Auth, "{what}");
        assert!(le.error.to_string().contains(msg), "{what}: {}", le.error);
        assert_eq!(refusal_sent(&r), Some(refusal), "{what}");
        // The listener's proof is never among the messages; a rank refusal comes before
        // the challenge, so the stranger does not even get a nonce.
        assert!(proofs_sent(&r) <= 1, "{what}: the listener proved itself");
        if refusal == Refusal::NotAllowed {
            assert_eq!(r.msgs.len(), 2, "{what}: {:?}", r.msgs);
        }
        let de = r
            .dialer
            .as_ref()
            .err()
            .unwrap_or_else(|| panic!("{what}: dialer accepted"));
        assert_eq!(de.error.kind(), ErrorKind::Auth, "{what}");
    }
    // Wrong target rank: the dialer wants rank 2, this is rank 1.
    let (_, hello) = Dialer::new(id(&t, 3, 0), 2, [1; 32]);
    let f = on_dial(id(&t, 1, 0), &mesh(1, 4), &enc(&hello), [2; 32]).unwrap_err();
    assert!(
        f.error
            .to_string()
            .contains("wants to reach rank 2, this is rank 1"),
        "{}",
        f.error
    );
    assert_eq!(f.reply, Some(Frame::Refused(Refusal::NotAllowed)));
}

/// Both settings authenticate between ranks that agree, with keys of their own: a frame
/// sealed under one setting never verifies under the other, and with the setting off the
/// payload is outside the MAC while the header is not. A mismatch is refused on both
/// sides with an error that names both settings and the variable.
#[test]
fn frame_mac_settings_are_proven_and_a_mismatch_is_refused_on_both_sides() {
    let t = token("setting-setting-setting");
    let mut on = run(id(&t, 2, 0), id(&t, 1, 0), 3, &mut no_tamper());
    let mut off = run(id_off(&t, 2, 0), id_off(&t, 1, 0), 3, &mut no_tamper());
    let (mut d_on, mut l_on) = (on.dialer.take_ok(), on.listener.take_ok());
    let (mut d_off, mut l_off) = (off.dialer.take_ok(), off.listener.take_ok());
    assert!(keys_match(&mut d_on, &mut l_on));
    assert!(keys_match(&mut d_off, &mut l_off));
    assert!(!keys_match(&mut d_on, &mut l_off));
    assert!(
        l_on.rx.covers_payload() && d_on.tx.seal_data(b"h", b"a") != d_on.tx.seal_data(b"h", b"b")
    );
    assert!(!l_off.rx.covers_payload());
    // Off: same counter, same header, another payload: the same MAC.
    let mut d_off2 = run(id_off(&t, 2, 0), id_off(&t, 1, 0), 3, &mut no_tamper())
        .dialer
        .take_ok();
    let mut d_off3 = run(id_off(&t, 2, 0), id_off(&t, 1, 0), 3, &mut no_tamper())
        .dialer
        .take_ok();
    assert_eq!(
        d_off2.tx.seal_data(b"head", b"payload a"),
        d_off3.tx.seal_data(b"head", b"payload b")
    );
    for (d, l, theirs, ours) in [
        (id_off(&t, 2, 0), id(&t, 1, 0), "off", "on"),
        (id(&t, 2, 0), id_off(&t, 1, 0), "on", "off"),
    ] {
        let r = run(d, l, 3, &mut no_tamper());
        let le = r
            .listener
            .as_ref()
            .expect_err("listener accepted a mismatch");
        let de = r.dialer.as_ref().expect_err("dialer accepted a mismatch");
        let want_l = format!(
            "the dialer proved the job token, but rank 2 runs with frame MAC {theirs}, \
             rank 1 with {ours} (LAZARUS_FRAME_MAC)"
        );
        let want_d =
            format!("rank 1 runs with frame MAC {ours}, rank 2 with {theirs} (LAZARUS_FRAME_MAC)");
        assert!(le.error.to_string().contains(&want_l), "{}", le.error);
        assert!(de.error.to_string().contains(&want_d), "{}", de.error);
        assert_eq!(de.error.kind(), ErrorKind::Auth);
        // The listener never proved itself to the mismatched dialer.
        assert_eq!(proofs_sent(&r), 1);
    }
}

/// An attacker on the path rewrites the setting in the dialer's proof (to downgrade the
/// connection to unauthenticated payloads, or the other way round): the proof covers the
/// setting, so the listener takes the dialer for a stranger and nobody gets a session.
#[test]
fn the_frame_mac_setting_cannot_be_changed_in_flight() {
    let t = token("downgrade-downgrade-downgrade");
    for (mk, to) in [
        (id as fn(&JobToken, u32, u64) -> Identity, FrameMac::Off),
        (id_off, FrameMac::On),
    ] {
        let r = run(mk(&t, 2, 0), mk(&t, 1, 0), 3, &mut |i, b: &mut Vec<u8>| {
            if i == 2 {
                // kind, incarnation u64, then the setting.
                b[9] = to.code();
            }
        });
        let le = r
            .listener
            .as_ref()
            .expect_err("listener accepted a rewritten setting");
        assert!(
            le.error.to_string().contains("does not know the job token"),
            "{}",
            le.error
        );
        assert_eq!(refusal_sent(&r), Some(Refusal::Auth));
        assert!(r.dialer.is_err());
        // The rewritten listener proof: the dialer refuses it too.
        let r = run(mk(&t, 2, 0), mk(&t, 1, 0), 3, &mut |i, b: &mut Vec<u8>| {
            if i == 3 {
                b[9] = to.code();
            }
        });
        assert!(r.listener.is_ok());
        let de = r
            .dialer
            .as_ref()
            .expect_err("dialer accepted a rewritten setting");
        assert!(
            de.error
                .to_string()
                .contains("listener's proof does not verify"),
            "{}",
            de.error
        );
    }
}

/// The relay of issue #11 at the protocol level: an attacker with no token between two
/// honest ranks gets no proof it can use anywhere.
#[test]
fn no_proof_can_be_relayed_or_reflected() {
    let t = token("relay-relay-relay-relay");
    // Attacker dials rank 1 claiming rank 0: refused before a challenge.
    let dial0 = enc(&Frame::Hello(Hello::Dial {
        from: 0,
        to: 1,
        nonce: [3; 32],
    }));
    let f = on_dial(id(&t, 1, 0), &mesh(1, 2), &dial0, [4; 32]).unwrap_err();
    assert_eq!(f.reply, Some(Frame::Refused(Refusal::NotAllowed)));
    // A proof rank 1 made as a dialer (to rank 0, challenge c) does not open a session
    // with rank 0 under another challenge, nor with any other listener, nor in reverse.
    let (d, hello) = Dialer::new(id(&t, 2, 0), 0, [5; 32]);
    let (l0, ch0) = on_dial(id(&t, 0, 0), &mesh(0, 3), &enc(&hello), [6; 32]).unwrap();
    let (_, proof) = d.on_challenge(&enc(&ch0)).unwrap();
    let (l0b, _) = on_dial(id(&t, 0, 0), &mesh(0, 3), &enc(&hello), [7; 32]).unwrap();
    assert!(
        l0b.on_proof(&enc(&proof)).is_err(),
        "proof accepted under another challenge"
    );
    let (l1, _) = on_dial(
        id(&t, 1, 0),
        &mesh(1, 3),
        &enc(&Frame::Hello(Hello::Dial {
            from: 2,
            to: 1,
            nonce: [5; 32],
        })),
        [6; 32],
    )
    .unwrap();
    assert!(
        l1.on_proof(&enc(&proof)).is_err(),
        "proof accepted by another listener"
    );
    // Reflection: the dialer's own proof sent back to it as the listener's proof.
    let (d, hello) = Dialer::new(id(&t, 2, 0), 0, [8; 32]);
    let Frame::Hello(Hello::Dial { nonce, .. }) = hello else {
        unreachable!()
    };
    // The attacker even echoes the dialer's nonce as the challenge.
    let (dp, proof) = d
        .on_challenge(&enc(&Frame::Hello(Hello::Challenge { nonce })))
        .unwrap();
    let e = dp.on_proof(&enc(&proof)).unwrap_err();
    assert!(
        e.error
            .to_string()
            .contains("listener's proof does not verify"),
        "{}",
        e.error
    );
    // The genuine listener proof for this transcript is still fine (the test is sound).
    assert!(l0.on_proof(&enc(&proof)).is_err());
}

#[test]
fn a_peer_of_another_version_is_told_ours_and_named() {
    let t = token("version-version-version");
    // A version 1 hello: kind 1, magic, version 1, job id, rank, incarnation, nonce.
    let mut v1 = vec![1u8];
    v1.extend_from_slice(&MAGIC);
    v1.extend_from_slice(&1u16.to_le_bytes());
    v1.extend_from_slice(&[0; 52]);
    let f = on_dial(id(&t, 0, 0), &mesh(0, 2), &v1, [1; 32]).unwrap_err();
    assert!(
        f.error.to_string().contains("wire protocol version 1"),
        "{}",
        f.error
    );
    // The reply is our own hello, so a version 1 peer reports "wire version 2".
    let reply = enc(&f.reply.unwrap());
    assert_eq!(wire::hello_version(&reply), Some(VERSION));
    // Our dialer facing a version 1 listener (which sends its hello first).
    let (d, _) = Dialer::new(id(&t, 1, 0), 0, [1; 32]);
    let e = d.on_challenge(&v1).unwrap_err();
    assert!(
        e.error
            .to_string()
            .contains("rank 0 speaks wire protocol version 1"),
        "{}",
        e.error
    );
}

/// The blocking driver on real TCP: refusals and malformed, truncated or oversized
/// messages give errors naming the peer's address and, once known, its claimed rank.
#[test]
fn driver_errors_name_the_address_and_the_claimed_rank() {
    let t = token("driver-driver-driver-driver");
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let at = l.local_addr().unwrap();
    type Script = Box<dyn FnOnce(&mut TcpStream) + Send>;
    let dial = |from: u32| {
        enc(&Frame::Hello(Hello::Dial {
            from,
            to: 0,
            nonce: [1; 32],
        }))
    };
    let framed = |b: Vec<u8>| {
        let mut v = (b.len() as u32).to_le_bytes().to_vec();
        v.extend(b);
        v
    };
    let d2 = framed(dial(2));
    let cases: Vec<(&str, Script, Vec<&str>)> = vec![
        (
            "nothing",
            Box::new(|_s: &mut TcpStream| {}),
            vec!["reading the dial"],
        ),
        (
            "truncated dial",
            Box::new(move |s: &mut TcpStream| {
                s.write_all(&framed(dial(2))[..20]).unwrap();
            }),
            vec!["reading the dial"],
        ),
        (
            "oversized",
            Box::new(|s: &mut TcpStream| {
                s.write_all(&u32::MAX.to_le_bytes()).unwrap();
            }),
            vec!["outside 1..=128"],
        ),
        (
            "garbage",
            Box::new(|s: &mut TcpStream| {
                s.write_all(&[6, 0, 0, 0, 77, 1, 2, 3, 4, 5]).unwrap();
            }),
            vec!["malformed dial", "unknown frame kind 77"],
        ),
        (
            "not allowed",
            Box::new(move |s: &mut TcpStream| {
                s.write_all(&framed(enc(&Frame::Hello(Hello::Dial {
                    from: 0,
                    to: 0,
                    nonce: [1; 32],
                }))))
                .unwrap();
            }),
            vec!["claims rank 0", "rank 0 may not dial rank 0"],
        ),
        (
            "truncated proof",
            Box::new({
                let d2 = d2.clone();
                move |s: &mut TcpStream| {
                    s.write_all(&d2).unwrap();
                    s.write_all(&[42, 0, 0, 0, 2, 0]).unwrap();
                }
            }),
            vec!["claims rank 2", "reading the dialer's proof"],
        ),
        (
            "bad proof",
            Box::new({
                let d2 = d2.clone();
                move |s: &mut TcpStream| {
                    s.write_all(&d2).unwrap();
                    let p = enc(&Frame::Proof(Proof {
                        incarnation: 0,
                        frame_mac: FrameMac::On,
                        mac: [0; 32],
                    }));
                    s.write_all(&framed(p)).unwrap();
                }
            }),
            vec!["claims rank 2", "does not know the job token"],
        ),
        (
            "hello instead of proof",
            Box::new(move |s: &mut TcpStream| {
                s.write_all(&d2).unwrap();
                s.write_all(&d2).unwrap();
            }),
            vec![
                "claims rank 2",
                "expected the dialer's proof, got a dial hello",
            ],
        ),
    ];
    for (what, script, expect) in cases {
        let h = std::thread::spawn(move || {
            let mut s = TcpStream::connect(at).unwrap();
            let local = s.local_addr().unwrap();
            script(&mut s);
            let _ = s.shutdown(std::net::Shutdown::Write);
            // Whatever the listener answers, then its close.
            let mut sink = Vec::new();
            let _ = s.read_to_end(&mut sink);
            (local, sink)
        });
        let (mut s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let peer = s.peer_addr().unwrap().to_string();
        let e = accept(&mut s, &id(&t, 0, 0), &mesh(0, 3), &peer).unwrap_err();
        drop(s);
        let (local, answer) = h.join().unwrap();
        let msg = e.to_string();
        assert!(msg.contains(&local.to_string()), "{what}: {msg}");
        for x in expect {
            assert!(msg.contains(x), "{what}: {msg}");
        }
        // Never a proof for a stranger: at most a challenge (random) and a refusal.
        let mut r = &answer[..];
        let mut buf = Vec::new();
        while wire::read_plain(&mut r, 128, &mut buf).is_ok() {
            let f = wire::decode(&buf).unwrap();
            assert!(
                matches!(f, Frame::Hello(Hello::Challenge { .. }) | Frame::Refused(_)),
                "{what}: {f:?}"
            );
        }
        assert!(r.is_empty(), "{what}: {} stray bytes", r.len());
    }
}

#[test]
fn same_token_authenticates_over_tcp_and_a_wrong_one_fails_on_both_sides() {
    let pair = |ta: &str, tb: &str| {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let tb = token(tb);
        let h = std::thread::spawn(move || {
            let mut s = TcpStream::connect(addr).unwrap();
            dial(&mut s, &id(&tb, 1, 0), 0, &addr.to_string())
        });
        let (mut s, peer) = l.accept().unwrap();
        let a = accept(
            &mut s,
            &id(&token(ta), 0, 0),
            &mesh(0, 2),
            &peer.to_string(),
        );
        drop(s);
        (a, h.join().unwrap())
    };
    let (a, b) = pair("secret-secret-secret", "secret-secret-secret");
    assert_eq!(a.unwrap().peer, 1);
    assert_eq!(b.unwrap().peer, 0);
    let (a, b) = pair("secret-secret-secret", "other-other-other-other");
    assert_eq!(a.unwrap_err().kind(), ErrorKind::Auth);
    let e = b.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Auth);
    assert!(e.to_string().contains("refused our proof"), "{e}");
}

/// A connected pair on loopback: (the listener's side, the dialer's side).
fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let d = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (a, _) = l.accept().unwrap();
    (a, d)
}

/// Whether the far end of `d` was shut down (EOF) within a short wait.
fn shut(d: &mut TcpStream) -> bool {
    d.set_read_timeout(Some(std::time::Duration::from_millis(200)))
        .unwrap();
    let mut b = [0u8; 1];
    matches!(d.read(&mut b), Ok(0))
        || matches!(&d.read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset)
}

/// A full gate takes a place from the address holding the most (its oldest handshake),
/// not from the oldest overall: one flooding address pushes out its own connections, not
/// an older handshake from another address (review). IPv6 addresses of one /64 count as
/// one address; an IPv4 address mapped into IPv6 as the IPv4 one.
#[test]
fn a_full_gate_pushes_out_the_busiest_address_first() {
    let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
    let gate = Gate::new(0); // 64 places
    let (rank_side, mut rank) = pair();
    let _rank_ticket = gate.enter(&rank_side, ip("10.0.0.2")).unwrap();
    let mut flood = Vec::new();
    for i in 0..63 {
        let (a, d) = pair();
        // One /64, any address in it.
        let t = gate
            .enter(&a, ip(&format!("2001:db8::{:x}", i + 1)))
            .unwrap();
        flood.push((a, d, t));
    }
    // Full: the next one from the flood's /64 pushes out the flood's oldest.
    let (a, d) = pair();
    let _t = gate.enter(&a, ip("2001:db8::ffff:1")).unwrap();
    assert!(shut(&mut flood[0].1), "the flood's oldest kept its place");
    assert!(
        !shut(&mut flood[1].1),
        "a newer one of the flood was pushed out"
    );
    assert!(
        !shut(&mut rank),
        "the rank's older handshake was pushed out"
    );
    drop((a, d));
    // A mapped IPv4 address is the IPv4 one: with the rank's address now the busiest
    // (after the flood's places are given back), it gives way.
    flood.clear();
    let mut rest = Vec::new();
    for _ in 0..63 {
        let (a, d) = pair();
        let t = gate.enter(&a, ip("::ffff:10.0.0.2")).unwrap();
        rest.push((a, d, t));
    }
    let (a2, _d2) = pair();
    let _t2 = gate.enter(&a2, ip("192.0.2.7")).unwrap();
    assert!(
        shut(&mut rank),
        "the busiest address's oldest (the rank's) kept its place"
    );
}
