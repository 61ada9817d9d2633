//! Unit tests of the protocol: client frames parsed, the contract's JSON byte for
//! byte, and the protobuf of a typed message and of foreign bytes agreeing.

use bytes::Bytes;
use prost::Message as _;

use super::*;
use crate::proto;
use crate::proto::server_message::Body;

fn decode(b: &Bytes) -> proto::ServerMessage {
    proto::ServerMessage::decode(&b[..]).unwrap()
}

#[test]
fn client_messages() {
    assert_eq!(
        parse_text(r#"{"type":"refresh_stats"}"#),
        Ok(ClientMessage::RefreshStats)
    );
    assert_eq!(
        parse_text(r#"{"type":"ping"}"#),
        Ok(ClientMessage::Ping { visitor_id: None })
    );
    let id = "3f1c6a2e-8b4d-4c1e-9a7f-2d5e8c0b1a34";
    assert_eq!(
        parse_text(&format!(r#"{{"type":"heartbeat","visitor_id":"{id}"}}"#)),
        Ok(ClientMessage::Ping {
            visitor_id: Some(VisitorId::parse(id).unwrap())
        })
    );
    assert_eq!(parse_text("nope").unwrap_err(), NOT_AN_OBJECT);
    assert_eq!(parse_text("[]").unwrap_err(), NOT_AN_OBJECT);
    assert_eq!(
        parse_text(r#"["refresh_stats"]"#).unwrap_err(),
        NOT_AN_OBJECT
    );
    assert_eq!(parse_text(r#"{"type":3}"#).unwrap_err(), NOT_AN_OBJECT);
    assert_eq!(
        parse_text("{}").unwrap_err(),
        "the message has no \"type\" field."
    );
    assert_eq!(
        parse_text(r#"{"type":"ping","visitor_id":"x"}"#),
        Ok(ClientMessage::Ping { visitor_id: None })
    );
    assert_eq!(
        parse_text(r#"{"type":"heartbeat","visitor_id":7}"#),
        Ok(ClientMessage::Ping { visitor_id: None })
    );
}

#[test]
fn client_messages_of_the_extensions() {
    assert_eq!(
        parse_text(r#"{"type":"subscribe","events":["page_view"]}"#),
        Ok(ClientMessage::Subscribe(vec!["page_view".into()]))
    );
    assert_eq!(
        parse_text(r#"{"type":"unsubscribe","events":[]}"#),
        Ok(ClientMessage::Unsubscribe(vec![]))
    );
    assert_eq!(
        parse_text(r#"{"type":"resume","epoch":"e","last_seq":3}"#),
        Ok(ClientMessage::Resume(Resume {
            from: Some(("e".into(), 3))
        }))
    );
    assert_eq!(
        parse_text(r#"{"type":"resume"}"#),
        Ok(ClientMessage::Resume(Resume { from: None }))
    );
    for bad in [
        r#"{"type":"subscribe"}"#,
        r#"{"type":"subscribe","events":[1]}"#,
        r#"{"type":"resume","epoch":"e"}"#,
        r#"{"type":"resume","epoch":"","last_seq":1}"#,
        r#"{"type":"resume","epoch":"e","last_seq":-1}"#,
        r#"{"type":"dance"}"#,
        "nope",
    ] {
        let e = parse_text(bad).unwrap_err();
        assert!(e.ends_with('.'), "{bad}: {e}");
    }
    let long = format!(r#"{{"type":"{}"}}"#, "é".repeat(100));
    let e = parse_text(&long).unwrap_err();
    assert!(
        e.contains(&"é".repeat(60)) && !e.contains(&"é".repeat(61)),
        "{e}"
    );

    let encode = |body| proto::ClientMessage { body: Some(body) }.encode_to_vec();
    use proto::client_message::Body as C;
    assert_eq!(
        parse_binary(&encode(C::Ping(proto::Ping { visitor_id: None }))),
        Ok(ClientMessage::Ping { visitor_id: None })
    );
    assert_eq!(
        parse_binary(&encode(C::Resume(proto::Resume {
            epoch: Some("e".into()),
            last_seq: Some(2)
        }))),
        Ok(ClientMessage::Resume(Resume {
            from: Some(("e".into(), 2))
        }))
    );
    assert!(
        parse_binary(&encode(C::Resume(proto::Resume {
            epoch: Some(String::new()),
            last_seq: None
        })))
        .is_err()
    );
    assert!(parse_binary(b"\xff\xff").is_err());
    assert!(parse_binary(b"").unwrap_err().ends_with('.'));
}

fn stats() -> Stats {
    Stats {
        current_visitors: 12,
        unique_today: 145,
        total_events: 2340,
        letters_today: 23,
        timestamp: 1733683200,
    }
}

#[test]
fn the_json_is_the_contracts_byte_for_byte() {
    assert_eq!(
        &initial_stats(&stats())[..],
        br#"{"type":"initial_stats","data":{"current_visitors":12,"unique_today":145,"total_events":2340,"letters_today":23,"timestamp":1733683200}}"#
    );
    let id = VisitorId::parse("3f1c6a2e-8b4d-4c1e-9a7f-2d5e8c0b1a34").unwrap();
    let mut data = serde_json::Map::new();
    data.insert("b".into(), 1.into());
    data.insert("a".into(), "x".into());
    let event = NewEvent {
        id: uuid::Uuid::nil(),
        event_type: crate::domain::EventType::parse("page_view").unwrap(),
        visitor_id: id,
        event_data: data,
        page_url: None,
        referrer: None,
        occurred_at: chrono::DateTime::from_timestamp(1733661296, 5).unwrap(),
    };
    assert_eq!(
        &super::event(&event)[..],
        br#"{"type":"page_view","visitor_id":"3f1c6a2e-8b4d-4c1e-9a7f-2d5e8c0b1a34","timestamp":"2024-12-08T12:34:56.000000005Z","page_url":"","data":{"a":"x","b":1}}"#
    );
    assert_eq!(
        &presence(Presence::Disconnected, id, 5)[..],
        br#"{"type":"visitor_disconnected","visitor_id":"3f1c6a2e-8b4d-4c1e-9a7f-2d5e8c0b1a34","timestamp":5}"#
    );
    assert_eq!(&pong(7)[..], br#"{"type":"pong","time":7}"#);
    assert_eq!(&error("no.")[..], br#"{"type":"error","error":"no."}"#);
    let f = Filter::from_query("b,a").unwrap();
    assert_eq!(
        &ServerMessage::subscribed(&f).to_json()[..],
        br#"{"type":"subscribed","events":["a","b"]}"#
    );
    let mut all_but = Filter::All;
    all_but.unsubscribe(vec!["a".into()]).unwrap();
    assert_eq!(
        &ServerMessage::subscribed(&all_but).to_json()[..],
        br#"{"type":"subscribed","events":["*"],"except":["a"]}"#
    );
    assert_eq!(
        &ServerMessage::Resumed {
            epoch: "ep".into(),
            last_seq: 1,
            replayed: 2
        }
        .to_json()[..],
        br#"{"type":"resumed","epoch":"ep","last_seq":1,"replayed":2}"#
    );
    assert_eq!(
        &ServerMessage::ResumeFailed {
            epoch: "ep".into(),
            last_seq: 1,
            error: "gone.".into()
        }
        .to_json()[..],
        br#"{"type":"resume_failed","epoch":"ep","last_seq":1,"error":"gone."}"#
    );
}

#[test]
fn the_protobuf_of_a_typed_message_and_of_foreign_bytes_agree() {
    let typed = [
        ServerMessage::Heartbeat(stats()),
        ServerMessage::Event(Event {
            event_type: "letter_generate".into(),
            visitor_id: "v".into(),
            timestamp: "2025-12-08T12:34:56Z".into(),
            page_url: Some("/l".into()),
            data: serde_json::from_str(r#"{"a":1}"#).unwrap(),
        }),
        ServerMessage::Pong { time: 3 },
        ServerMessage::error("no."),
        ServerMessage::Resumed {
            epoch: "e".into(),
            last_seq: 1,
            replayed: 0,
        },
    ];
    for m in typed {
        let json = m.to_json();
        let kind = read_kind(&json).unwrap();
        assert_eq!(&*kind, m.kind());
        assert_eq!(ServerMessage::from_json(&json, &kind).as_ref(), Some(&m));
        assert_eq!(foreign_to_proto(&json, &kind, Some(4)), m.to_proto(Some(4)));
    }
    let ev = decode(
        &ServerMessage::from_json(
            br#"{"type":"x","visitor_id":"v","timestamp":"t","data":{"a":1}}"#,
            "x",
        )
        .unwrap()
        .to_proto(Some(9)),
    );
    assert_eq!((ev.r#type.as_str(), ev.seq), ("x", Some(9)));
    assert_eq!(
        ev.body,
        Some(Body::Event(proto::Event {
            visitor_id: "v".into(),
            timestamp: "t".into(),
            page_url: None,
            data_json: r#"{"a":1}"#.into(),
        }))
    );
    let odd = decode(&foreign_to_proto(br#"{"type":"x","foo":1}"#, "x", Some(1)));
    assert_eq!(odd.body, Some(Body::Json(r#"{"type":"x","foo":1}"#.into())));
}
