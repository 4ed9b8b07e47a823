use proptest::prelude::*;

use super::*;

fn v4(a: [u8; 4]) -> [u8; 16] {
    let mut m = [0u8; 16];
    m[10] = 0xff;
    m[11] = 0xff;
    m[12..].copy_from_slice(&a);
    m
}

fn key() -> impl Strategy<Value = WireKey> {
    (
        any::<[u8; 16]>(),
        any::<[u8; 16]>(),
        any::<u16>(),
        any::<u16>(),
        any::<u8>(),
    )
        .prop_map(|(src, dst, sport, dport, proto)| WireKey {
            src,
            dst,
            sport,
            dport,
            proto,
        })
}

fn add() -> impl Strategy<Value = SessionRecord> {
    (
        any::<u64>(),
        key(),
        any::<[u8; 4]>(),
        any::<[u8; 4]>(),
        any::<u16>(),
        any::<u32>(),
        any::<u32>(),
    )
        .prop_map(
            |(id, key, st, nat_addr, nat_port, age, idle)| SessionRecord {
                id,
                key,
                state: st[0],
                action: st[1],
                flags: st[2],
                service_set: st[3],
                nat_addr,
                nat_port,
                age,
                idle,
            },
        )
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (
            any::<(u32, u32, u32, u64)>(),
            1u16..,
            prop_oneof![Just(ROLE_ACTIVE), Just(ROLE_BACKUP)],
            any::<[u8; 16]>()
        )
            .prop_map(
                |((node_id, group_id, capabilities, services_hash), workers, role, nonce)| {
                    Message::Hello(Hello {
                        node_id,
                        group_id,
                        workers,
                        role,
                        capabilities,
                        services_hash,
                        nonce,
                    })
                }
            ),
        Just(Message::SyncStart),
        Just(Message::Keepalive),
        (any::<u64>(), any::<u64>())
            .prop_map(|(sessions, hash)| Message::Digest(Digest { sessions, hash })),
        prop::collection::vec(("[a-z_.\\[\\]0-9]{0,40}", "\\PC{0,40}"), 0..8)
            .prop_map(Message::Contract),
        prop::collection::vec(add(), 0..20).prop_map(Message::Add),
        prop::collection::vec(
            (any::<u64>(), key()).prop_map(|(id, key)| DeleteRecord { id, key }),
            0..20
        )
        .prop_map(Message::Delete),
        prop::collection::vec(
            (any::<u64>(), key(), any::<u8>(), any::<u32>()).prop_map(|(id, key, state, idle)| {
                RefreshRecord {
                    id,
                    key,
                    state,
                    idle,
                }
            }),
            0..20
        )
        .prop_map(Message::Refresh),
        any::<u64>().prop_map(|sessions| Message::ColdSyncComplete { sessions }),
        any::<u64>().prop_map(|seq| Message::Ack { seq }),
        (
            any::<u64>(),
            prop_oneof![Just(Op::Add), Just(Op::Delete), Just(Op::Refresh)],
            prop::sample::select(NackReason::ALL.to_vec()),
            key()
        )
            .prop_map(|(seq, op, reason, key)| Message::Nack {
                seq,
                op,
                reason,
                key
            }),
    ]
}

fn framed(m: &Message, seq: u64) -> Vec<u8> {
    let mut body = Vec::new();
    m.put_body(&mut body);
    let h = Header {
        kind: m.kind(),
        tagged: false,
        len: body.len() as u32,
        seq,
    };
    let mut out = h.encode().to_vec();
    out.extend_from_slice(&body);
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_message_round_trips(m in message(), seq in any::<u64>()) {
        let bytes = framed(&m, seq);
        let f = frame(&bytes).unwrap().unwrap();
        prop_assert_eq!(f.total, bytes.len());
        prop_assert_eq!(f.header.seq, seq);
        prop_assert_eq!(f.header.kind, m.kind());
        prop_assert_eq!(Message::decode(f.header.kind, &bytes[f.body]).unwrap(), m);
        // Every proper prefix is incomplete, never an error or a frame.
        for cut in [0, 1, HEADER_LEN - 1, HEADER_LEN, bytes.len() - 1] {
            if cut < bytes.len() {
                prop_assert_eq!(frame(&bytes[..cut]), Ok(None));
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(Some(f)) = frame(&bytes) {
            let _ = Message::decode(f.header.kind, &bytes[f.body]);
        }
        for kind in Kind::ALL {
            let _ = Message::decode(kind, &bytes);
        }
    }
}

#[test]
fn record_sizes_are_as_documented() {
    let sizes = [
        (Message::Add(vec![SessionRecord::default()]), ADD_LEN),
        (Message::Delete(vec![DeleteRecord::default()]), DELETE_LEN),
        (
            Message::Refresh(vec![RefreshRecord::default()]),
            REFRESH_LEN,
        ),
    ];
    for (m, len) in sizes {
        let mut b = Vec::new();
        m.put_body(&mut b);
        assert_eq!(b.len(), 4 + len, "{:?}", m.kind());
    }
    let mut b = Vec::new();
    Message::Hello(Hello {
        workers: 1,
        role: ROLE_ACTIVE,
        ..Hello::default()
    })
    .put_body(&mut b);
    assert_eq!(b.len(), HELLO_LEN);
}

#[test]
fn bad_frames_are_refused_with_their_reason() {
    let good = framed(&Message::Ack { seq: 5 }, 1);
    let with = |i: usize, v: u8| {
        let mut b = good.clone();
        b[i] = v;
        frame(&b)
    };
    assert_eq!(with(0, 0x99), Err(DecodeError::BadHeader), "magic");
    assert_eq!(with(2, 1), Err(DecodeError::Version(1)), "version 1");
    assert_eq!(
        with(2, VERSION + 1),
        Err(DecodeError::Version(VERSION + 1)),
        "a later version"
    );
    assert_eq!(with(3, 0), Err(DecodeError::BadKind(0)));
    assert_eq!(with(3, 42), Err(DecodeError::BadKind(42)));
    assert_eq!(with(4, 2), Err(DecodeError::BadHeader), "unknown flag");
    assert_eq!(with(6, 1), Err(DecodeError::BadHeader), "reserved byte");
    assert_eq!(with(9, 0x10), Err(DecodeError::BadLength), "over 1 MiB");

    // Fixed-size bodies of the wrong size.
    assert_eq!(
        Message::decode(Kind::Ack, &[0; 7]),
        Err(DecodeError::BadLength)
    );
    assert_eq!(
        Message::decode(Kind::SyncStart, &[0]),
        Err(DecodeError::BadLength)
    );
    assert_eq!(
        Message::decode(Kind::Hello, &[0; 43]),
        Err(DecodeError::BadLength)
    );
    // A batch whose count disagrees with its length.
    let mut b = Vec::new();
    Message::Delete(vec![DeleteRecord::default(); 2]).put_body(&mut b);
    b[3] = 3;
    assert_eq!(
        Message::decode(Kind::Delete, &b),
        Err(DecodeError::BadLength)
    );
    assert_eq!(
        Message::decode(Kind::Add, &[0; 3]),
        Err(DecodeError::BadLength)
    );
    // Padding must be zero.
    let mut b = Vec::new();
    Message::Add(vec![SessionRecord::default()]).put_body(&mut b);
    b[4 + 63] = 1;
    assert_eq!(Message::decode(Kind::Add, &b), Err(DecodeError::BadRecord));
    // A hello with no workers, or an unknown role.
    let mut b = Vec::new();
    Message::Hello(Hello {
        workers: 1,
        role: 3,
        ..Hello::default()
    })
    .put_body(&mut b);
    assert_eq!(
        Message::decode(Kind::Hello, &b),
        Err(DecodeError::BadRecord)
    );
    b[10] = ROLE_BACKUP;
    b[8..10].copy_from_slice(&[0, 0]);
    assert_eq!(
        Message::decode(Kind::Hello, &b),
        Err(DecodeError::BadRecord)
    );
    // A nack with an unknown reason.
    let mut b = Vec::new();
    Message::Nack {
        seq: 1,
        op: Op::Add,
        reason: NackReason::TableFull,
        key: WireKey::default(),
    }
    .put_body(&mut b);
    b[9] = 99;
    assert_eq!(Message::decode(Kind::Nack, &b), Err(DecodeError::BadRecord));
}

#[test]
fn records_are_validated_field_by_field() {
    let good = SessionRecord {
        id: 1,
        key: WireKey {
            src: v4([198, 18, 1, 10]),
            dst: v4([198, 18, 2, 10]),
            sport: 40000,
            dport: 80,
            proto: 6,
        },
        state: 3,
        flags: REC_NAT,
        nat_addr: [198, 18, 2, 100],
        nat_port: 1024,
        ..SessionRecord::default()
    };
    assert_eq!(good.validate(1), Ok(()));
    let bad = |f: &dyn Fn(&mut SessionRecord)| {
        let mut r = good;
        f(&mut r);
        r.validate(1)
    };
    let illegal = Err(NackReason::IllegalFlow);
    assert_eq!(bad(&|r| r.key.proto = 47), illegal, "protocol");
    assert_eq!(bad(&|r| r.state = TCP_STATES), illegal, "TCP state");
    assert_eq!(bad(&|r| r.action = ACTIONS), illegal, "action");
    assert_eq!(bad(&|r| r.flags = 4), illegal, "flags");
    assert_eq!(bad(&|r| r.nat_port = 0), illegal, "NAT without a port");
    assert_eq!(bad(&|r| r.key.src = [1; 16]), illegal, "NAT on IPv6");
    assert_eq!(
        bad(&|r| r.flags = 0),
        illegal,
        "a NAT binding without the flag"
    );
    assert_eq!(bad(&|r| r.key.dst = [2; 16]), illegal, "mixed families");
    assert_eq!(
        bad(&|r| {
            r.key.proto = 58;
            r.state = 0;
            r.flags = 0;
            r.nat_addr = [0; 4];
            r.nat_port = 0;
        }),
        illegal,
        "ICMPv6 between IPv4 addresses"
    );
    assert_eq!(
        bad(&|r| {
            r.key.proto = 17;
            r.state = 0;
        }),
        Ok(())
    );
    assert_eq!(
        bad(&|r| {
            r.key.proto = 17;
            r.state = ANSWERED;
        }),
        Ok(()),
        "an answered UDP session"
    );
    assert_eq!(
        bad(&|r| {
            r.key.proto = 17;
            r.state = ANSWERED + 1;
        }),
        illegal,
        "a UDP session has no TCP state"
    );
    assert_eq!(
        bad(&|r| r.service_set = 1),
        Err(NackReason::IllegalServiceSet)
    );
}

#[test]
fn refreshes_of_protocols_that_do_not_replicate_are_invalid() {
    let mut r = RefreshRecord {
        id: 1,
        key: WireKey {
            src: v4([198, 18, 1, 10]),
            dst: v4([198, 18, 2, 10]),
            sport: 0,
            dport: 0,
            proto: 17,
        },
        state: 0,
        idle: 5,
    };
    assert!(r.validate());
    r.state = ANSWERED;
    assert!(r.validate(), "the answer of a UDP session");
    r.state = ANSWERED + 1;
    assert!(!r.validate(), "a UDP session has no TCP state");
    r.state = 0;
    r.key.proto = 47;
    assert!(!r.validate(), "GRE sessions are not replicated");
}
