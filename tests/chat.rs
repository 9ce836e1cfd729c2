//! Rooms, fan-out, presence, typing and direct messages through the real daemon.

mod common;

use common::{Client, Daemon, token_with};
use serde_json::json;

#[test]
fn join_send_ack_and_fanout() {
    let d = Daemon::start();
    let mut alice = d.client("alice");
    let mut bob = d.client("bob");
    let joined = alice.request(json!({"type": "join", "room": "lobby", "ref": "j1"}), "joined");
    assert_eq!(joined, json!({"type": "joined", "ref": "j1", "room": "lobby", "seq": 0, "members": 1}));
    let joined = bob.join("lobby");
    assert_eq!(joined["members"], 2);
    let presence = alice.recv_type("presence");
    assert_eq!(presence, json!({"type": "presence", "room": "lobby", "user": "bob", "event": "join"}));

    let ack = alice.request(json!({"type": "send", "room": "lobby", "body": {"text": "hi"}, "ref": "m1"}), "ack");
    assert_eq!(ack["ref"], "m1");
    assert_eq!(ack["room"], "lobby");
    assert_eq!(ack["seq"], 1);
    let msg = bob.recv_type("message");
    assert_eq!(msg["room"], "lobby");
    assert_eq!(msg["seq"], 1);
    assert_eq!(msg["from"], "alice");
    assert_eq!(msg["body"], json!({"text": "hi"}));
    assert_eq!(msg["ts"], ack["ts"]);
    assert!(msg.get("name").is_none());

    let ack = bob.request(json!({"type": "send", "room": "lobby", "body": "yo", "reply_to": 1}), "ack");
    assert_eq!(ack["seq"], 2);
    assert!(ack.get("ref").is_none());
    let msg = alice.recv_type("message");
    assert_eq!((msg["seq"].clone(), msg["reply_to"].clone(), msg["body"].clone()), (json!(2), json!(1), json!("yo")));
}

#[test]
fn sender_gets_ack_not_its_own_message_but_its_other_tabs_do() {
    let d = Daemon::start();
    let mut tab1 = d.client("alice");
    let mut tab2 = d.client("alice");
    tab1.join("r");
    tab2.join("r");
    tab1.say("r", json!(1));
    assert_eq!(tab2.recv_type("message")["seq"], 1);
    tab1.send(json!({"type": "ping", "ref": "p"}));
    // The next frame tab1 sees is the pong: its own message never came back to it.
    let next = tab1.recv();
    assert_eq!(next["type"], "pong", "{next}");
}

#[test]
fn display_name_travels_with_messages() {
    let d = Daemon::start();
    let t = token_with("carol", None, None, Some("Carol \"C\" Doe"));
    let mut carol = Client::connect_with(&d, "/ws", &[("Authorization", &format!("Bearer {t}"))]).unwrap();
    carol.recv_type("welcome");
    let mut bob = d.client("bob");
    carol.join("r");
    bob.join("r");
    carol.say("r", json!("x"));
    assert_eq!(bob.recv_type("message")["name"], "Carol \"C\" Doe");
}

#[test]
fn members_on_both_shards_get_every_message_in_seq_order() {
    let d = Daemon::start_with(&[("server", "shards = 2")]);
    let mut clients: Vec<Client> = (0..6).map(|i| d.client(&format!("u{i}"))).collect();
    // The acceptor balances by load: six connections spread three and three.
    assert_eq!(d.stats()["shards"], json!([3, 3]));
    for c in clients.iter_mut() {
        c.join("fan");
    }
    let per_sender = 30;
    for round in 0..per_sender {
        for (i, c) in clients.iter_mut().enumerate().take(2) {
            c.send(json!({"type": "send", "room": "fan", "body": {"from": i, "n": round}}));
        }
    }
    let total = 2 * per_sender;
    for (i, c) in clients.iter_mut().enumerate() {
        let mut seqs = Vec::new();
        let expect = if i < 2 { total - per_sender } else { total };
        while seqs.len() < expect {
            let v = c.recv();
            if v["type"] == "message" {
                seqs.push(v["seq"].as_u64().unwrap());
            }
        }
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "client {i} saw seqs out of order: {seqs:?}");
        if i >= 2 {
            assert_eq!(seqs, (1..=total as u64).collect::<Vec<_>>(), "client {i} missed events");
        }
    }
}

#[test]
fn seq_has_no_gaps_with_concurrent_senders() {
    let d = Daemon::start_with(&[("server", "shards = 2"), ("limits", "rate = 10000"), ("limits", "burst = 10000")]);
    let mut watcher = d.client("watcher");
    watcher.join("busy");
    let senders: Vec<_> = (0..4)
        .map(|i| {
            let mut c = d.client(&format!("s{i}"));
            c.join("busy");
            std::thread::spawn(move || {
                for n in 0..100 {
                    c.send(json!({"type": "send", "room": "busy", "body": n}));
                }
                (0..100).map(|_| c.recv_type("ack")["seq"].as_u64().unwrap()).collect::<Vec<_>>()
            })
        })
        .collect();
    let mut acked: Vec<u64> = senders.into_iter().flat_map(|h| h.join().unwrap()).collect();
    acked.sort_unstable();
    assert_eq!(acked, (1..=400).collect::<Vec<u64>>());
    let seen: Vec<u64> = (0..400).map(|_| watcher.recv_type("message")["seq"].as_u64().unwrap()).collect();
    assert_eq!(seen, (1..=400).collect::<Vec<u64>>());
}

#[test]
fn leave_stops_delivery_and_announces_presence() {
    let d = Daemon::start();
    let mut alice = d.client("alice");
    let mut bob = d.client("bob");
    alice.join("r");
    bob.join("r");
    alice.recv_type("presence");
    let left = bob.request(json!({"type": "leave", "room": "r", "ref": "l"}), "left");
    assert_eq!(left, json!({"type": "left", "ref": "l", "room": "r"}));
    let p = alice.recv_type("presence");
    assert_eq!((p["user"].clone(), p["event"].clone()), (json!("bob"), json!("leave")));
    alice.say("r", json!("after"));
    let err = bob.request(json!({"type": "send", "room": "r", "body": 1}), "error");
    assert_eq!(err["code"], "not_in_room");
    bob.send(json!({"type": "ping"}));
    assert_eq!(bob.recv()["type"], "pong", "bob got nothing from a room he left");
    let err = bob.request(json!({"type": "leave", "room": "r", "ref": "again"}), "error");
    assert_eq!((err["code"].clone(), err["ref"].clone()), (json!("not_in_room"), json!("again")));
}

#[test]
fn disconnect_of_last_connection_announces_leave() {
    let d = Daemon::start();
    let mut alice = d.client("alice");
    alice.join("r");
    {
        let mut bob1 = d.client("bob");
        let mut bob2 = d.client("bob");
        bob1.join("r");
        bob2.join("r");
        assert_eq!(alice.recv_type("presence")["event"], "join");
        drop(bob1);
        let presence_list = alice.request(json!({"type": "presence", "room": "r"}), "presence_list");
        assert_eq!(presence_list["users"], json!(["alice", "bob"]), "bob still has a connection");
        drop(bob2);
    }
    let p = alice.recv_type("presence");
    assert_eq!((p["user"].clone(), p["event"].clone()), (json!("bob"), json!("leave")));
    let list = alice.request(json!({"type": "presence", "room": "r", "ref": "q"}), "presence_list");
    assert_eq!(list, json!({"type": "presence_list", "ref": "q", "room": "r", "users": ["alice"]}));
}

#[test]
fn typing_reaches_others_not_stored() {
    let d = Daemon::start();
    let mut alice = d.client("alice");
    let mut bob = d.client("bob");
    alice.join("r");
    bob.join("r");
    alice.send(json!({"type": "typing", "room": "r", "active": true}));
    let t = bob.recv_type("typing");
    assert_eq!(t, json!({"type": "typing", "room": "r", "user": "alice", "active": true}));
    let ack = alice.say("r", json!("m"));
    assert_eq!(ack["seq"], 1, "typing took no seq");
    let err = alice.request(json!({"type": "typing", "room": "elsewhere", "active": true}), "error");
    assert_eq!(err["code"], "not_in_room");
}

#[test]
fn direct_messages_reach_every_connection_of_both_users() {
    let d = Daemon::start();
    let mut alice1 = d.client("alice");
    let mut alice2 = d.client("alice");
    let mut bob = d.client("bob");
    let mut eve = d.client("eve");
    let ack = alice1.request(json!({"type": "direct", "to": "bob", "body": "psst", "ref": "d"}), "ack");
    assert_eq!((ack["room"].clone(), ack["seq"].clone()), (json!("dm:alice:bob"), json!(1)));
    for c in [&mut bob, &mut alice2] {
        let m = c.recv_type("message");
        assert_eq!(
            (m["room"].clone(), m["from"].clone(), m["body"].clone()),
            (json!("dm:alice:bob"), json!("alice"), json!("psst"))
        );
    }
    eve.send(json!({"type": "ping"}));
    assert_eq!(eve.recv()["type"], "pong", "eve saw nothing");
    let err = eve.request(json!({"type": "join", "room": "dm:alice:bob"}), "error");
    assert_eq!(err["code"], "forbidden");
    let err = alice1.request(json!({"type": "join", "room": "dm:bob:alice"}), "error");
    assert_eq!(err["code"], "bad_request");
    let err = alice1.request(json!({"type": "direct", "to": "no:colons", "body": 1}), "error");
    assert_eq!(err["code"], "bad_request");
    // Bob resumes the DM room and gets what he missed.
    let joined = bob.request(json!({"type": "join", "room": "dm:alice:bob", "since": 0}), "joined");
    assert_eq!(joined["seq"], 1);
    assert_eq!(bob.recv_type("message")["body"], "psst");
}

#[test]
fn resume_with_since_replays_exactly_the_missed_events() {
    let d = Daemon::start();
    let mut alice = d.client("alice");
    alice.join("r");
    for i in 1..=5 {
        alice.say("r", json!(i));
    }
    let mut bob = d.client("bob");
    let joined = bob.request(json!({"type": "join", "room": "r", "since": 2}), "joined");
    assert_eq!(joined["seq"], 5);
    assert!(joined.get("truncated").is_none());
    let replay: Vec<u64> = (0..3).map(|_| bob.recv_type("message")["seq"].as_u64().unwrap()).collect();
    assert_eq!(replay, vec![3, 4, 5]);
    alice.say("r", json!(6));
    assert_eq!(bob.recv_type("message")["seq"], 6);

    let mut carol = d.client("carol");
    let joined = carol.request(json!({"type": "join", "room": "r", "history": 2}), "joined");
    assert_eq!(joined["seq"], 6);
    let last: Vec<u64> = (0..2).map(|_| carol.recv_type("message")["seq"].as_u64().unwrap()).collect();
    assert_eq!(last, vec![5, 6]);
}

#[test]
fn resume_past_max_replay_is_truncated() {
    let d = Daemon::start_with(&[("history", "max_replay = 3")]);
    let mut alice = d.client("alice");
    alice.join("r");
    for i in 1..=6 {
        alice.say("r", json!(i));
    }
    let mut bob = d.client("bob");
    let joined = bob.request(json!({"type": "join", "room": "r", "since": 1}), "joined");
    assert_eq!(joined["truncated"], true);
    let replay: Vec<u64> = (0..3).map(|_| bob.recv_type("message")["seq"].as_u64().unwrap()).collect();
    assert_eq!(replay, vec![4, 5, 6], "the newest max_replay events");
}

#[test]
fn room_patterns_in_the_token_are_enforced() {
    let d = Daemon::start();
    let rooms = vec!["team:*".to_string(), "lobby".to_string()];
    let t = token_with("guest", Some(&rooms), None, None);
    let mut guest = Client::connect_with(&d, "/ws", &[("Authorization", &format!("Bearer {t}"))]).unwrap();
    guest.recv_type("welcome");
    assert_eq!(guest.join("team:a")["room"], "team:a");
    assert_eq!(guest.join("lobby")["room"], "lobby");
    let err = guest.request(json!({"type": "join", "room": "lobby2", "ref": "x"}), "error");
    assert_eq!((err["code"].clone(), err["ref"].clone()), (json!("forbidden"), json!("x")));
    let err = guest.request(json!({"type": "presence", "room": "secret"}), "error");
    assert_eq!(err["code"], "forbidden");
    let err = guest.request(json!({"type": "direct", "to": "bob", "body": 1}), "error");
    assert_eq!(err["code"], "forbidden", "a scoped token cannot open DMs");
    let err = guest.request(json!({"type": "join", "room": "bad room!"}), "error");
    assert_eq!(err["code"], "bad_request");
}

#[test]
fn bad_requests_get_errors_and_the_connection_stays() {
    let d = Daemon::start();
    let mut c = d.client("alice");
    let cases = [
        ("not json", "bad_json"),
        ("[1,2]", "bad_json"),
        (r#"{"room":"r"}"#, "unknown_type"),
        (r#"{"type":"teleport"}"#, "unknown_type"),
        (r#"{"type":"join"}"#, "bad_request"),
        (r#"{"type":"send","room":"r","body":1}"#, "not_in_room"),
        (r#"{"type":"join","room":"r","since":"x"}"#, "bad_request"),
    ];
    for (frame, code) in cases {
        c.send_raw(frame);
        let err = c.recv_type("error");
        assert_eq!(err["code"], code, "{frame}");
        assert!(err["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let long_ref = "r".repeat(65);
    let err = c.request(json!({"type": "ping", "ref": long_ref}), "error");
    assert_eq!(err["code"], "bad_request");
    assert!(err.get("ref").is_none());
    let pong = c.request(json!({"type": "ping", "ref": "still-here"}), "pong");
    assert_eq!(pong["ref"], "still-here");
    assert!(pong["ts"].as_u64().unwrap() > 1_700_000_000_000);
}

#[test]
fn body_larger_than_the_limit_is_too_large() {
    let d = Daemon::start_with(&[("limits", "max_body_bytes = 100")]);
    let mut c = d.client("alice");
    c.join("r");
    let err = c.request(json!({"type": "send", "room": "r", "body": "x".repeat(200), "ref": "big"}), "error");
    assert_eq!((err["code"].clone(), err["ref"].clone()), (json!("too_large"), json!("big")));
    c.say("r", json!("small"));
}

#[test]
fn room_cap_per_connection() {
    let d = Daemon::start_with(&[("limits", "max_rooms_per_connection = 2")]);
    let mut c = d.client("alice");
    c.join("a");
    c.join("b");
    let err = c.request(json!({"type": "join", "room": "c"}), "error");
    assert_eq!(err["code"], "bad_request");
    assert!(err["message"].as_str().unwrap().contains("max_rooms_per_connection"));
    assert_eq!(c.join("a")["room"], "a", "re-joining a room already joined is fine");
    c.request(json!({"type": "leave", "room": "a"}), "left");
    assert_eq!(c.join("c")["room"], "c");
}

#[test]
fn stats_count_connections_users_rooms_and_messages() {
    let d = Daemon::start();
    let mut a = d.client("alice");
    let mut a2 = d.client("alice");
    let mut b = d.client("bob");
    let _anon = Client::anonymous(&d);
    a.join("big");
    a2.join("big");
    b.join("big");
    b.join("small");
    a.say("big", json!(1));
    b.recv_type("message");
    a2.recv_type("message");
    let s = d.stats();
    assert_eq!(s["connections"], 4);
    assert_eq!(s["authenticated"], 3);
    assert_eq!(s["users"], 2);
    assert_eq!(s["rooms"], 2);
    assert_eq!(s["shards"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).sum::<u64>(), 4);
    assert_eq!(s["top_rooms"], json!({"big": 2, "small": 1}));
    assert!(s["messages_in"].as_u64().unwrap() >= 5);
    assert!(s["messages_out"].as_u64().unwrap() >= 2);
    assert!(s["uptime_s"].as_u64().is_some());
    drop(a2);
    common::eventually("the closed connection to leave the count", || (d.stats()["connections"] == 3).then_some(()));
}
