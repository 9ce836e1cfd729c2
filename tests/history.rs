//! Durable history through the real daemon: resume across restarts, paging and folding, edit and
//! delete permissions, reactions, retention, crash safety with kill -9, and a full disk.

mod common;

use std::process::Command;

use common::{Client, Daemon, token_with};
use serde_json::{Value, json};

fn seqs(messages: &Value) -> Vec<u64> {
    messages.as_array().unwrap().iter().map(|m| m["seq"].as_u64().unwrap()).collect()
}

#[test]
fn resume_after_restart_replays_exactly_and_seq_continues() {
    let d = Daemon::start();
    let mut alice = d.client("alice");
    alice.join("r");
    for i in 1..=5 {
        alice.say("r", json!(i));
    }
    let dir = d.kill();
    let d = Daemon::start_in(dir, &[]);
    let mut bob = d.client("bob");
    let joined = bob.request(json!({"type": "join", "room": "r", "since": 3}), "joined");
    assert_eq!(joined["seq"], 5);
    let replay: Vec<Value> = (0..2).map(|_| bob.recv_type("message")).collect();
    assert_eq!(replay.iter().map(|m| m["seq"].as_u64().unwrap()).collect::<Vec<_>>(), vec![4, 5]);
    assert_eq!(replay[1]["body"], 5);
    let mut alice = d.client("alice");
    alice.join("r");
    assert_eq!(alice.say("r", json!(6))["seq"], 6, "numbering continues after the restart");
    assert_eq!(bob.recv_type("message")["seq"], 6);
}

#[test]
fn live_events_during_a_replay_follow_it_in_order() {
    let d = Daemon::start_with(&[("limits", "rate = 100000"), ("limits", "burst = 100000")]);
    let mut alice = d.client("alice");
    alice.join("r");
    for i in 0..300 {
        alice.send(json!({"type": "send", "room": "r", "body": i}));
    }
    let mut bob = d.client("bob");
    // Joins while alice's stream is still being stored: replay and live events must meet exactly.
    bob.send(json!({"type": "join", "room": "r", "since": 0}));
    for i in 300..600 {
        alice.send(json!({"type": "send", "room": "r", "body": i}));
    }
    let joined = bob.recv_type("joined");
    assert!(joined.get("truncated").is_none(), "{joined}");
    let got: Vec<u64> = (0..600).map(|_| bob.recv_type("message")["seq"].as_u64().unwrap()).collect();
    assert_eq!(got, (1..=600).collect::<Vec<_>>());
}

#[test]
fn join_with_history_n_gets_the_last_messages() {
    let d = Daemon::start();
    let mut alice = d.client("alice");
    alice.join("r");
    for i in 1..=4 {
        alice.say("r", json!(i));
    }
    alice.request(json!({"type": "edit", "room": "r", "target": 4, "body": "four"}), "ack");
    alice.request(json!({"type": "delete", "room": "r", "target": 3}), "ack");
    let mut bob = d.client("bob");
    bob.request(json!({"type": "join", "room": "r", "history": 2}), "joined");
    let last: Vec<Value> = (0..2).map(|_| bob.recv_type("message")).collect();
    let seqs: Vec<u64> = last.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, vec![2, 4], "the newest messages that still exist");
    assert_eq!(last[1]["body"], "four", "with their current body, never a deleted or replaced text");
}

#[test]
fn history_pages_fold_edits_deletes_and_reactions() {
    let d = Daemon::start();
    let mut alice = d.client("alice");
    let mut bob = d.client("bob");
    let mut carol = d.client("carol");
    alice.join("r");
    bob.join("r");
    carol.join("r");
    for i in 1..=10 {
        alice.say("r", json!({"n": i}));
    }
    let edit = alice.request(json!({"type": "edit", "room": "r", "target": 3, "body": {"n": "three"}}), "ack");
    assert_eq!(edit["seq"], 11);
    let edited = bob.recv_type("edited");
    assert_eq!(
        (edited["target"].clone(), edited["from"].clone(), edited["body"].clone()),
        (json!(3), json!("alice"), json!({"n": "three"}))
    );
    alice.request(json!({"type": "delete", "room": "r", "target": 5}), "ack");
    let deleted = bob.recv_type("deleted");
    assert_eq!((deleted["seq"].clone(), deleted["target"].clone()), (json!(12), json!(5)));
    bob.request(json!({"type": "react", "room": "r", "target": 2, "emoji": "👍"}), "ack");
    bob.request(json!({"type": "react", "room": "r", "target": 2, "emoji": "👍"}), "ack");
    alice.request(json!({"type": "react", "room": "r", "target": 2, "emoji": "👍"}), "ack");
    alice.request(json!({"type": "react", "room": "r", "target": 2, "emoji": "🎉"}), "ack");
    alice.request(json!({"type": "unreact", "room": "r", "target": 2, "emoji": "🎉"}), "ack");
    // carol only listens, so she sees every reaction event, in order.
    let reactions: Vec<(Value, Value, Value)> = (0..5)
        .map(|_| carol.recv_type("reaction"))
        .map(|r| (r["op"].clone(), r["emoji"].clone(), r["from"].clone()))
        .collect();
    assert_eq!(reactions[0], (json!("add"), json!("👍"), json!("bob")));
    assert_eq!(reactions[4], (json!("remove"), json!("🎉"), json!("alice")));

    let page = bob.request(json!({"type": "history", "room": "r", "limit": 4, "ref": "h"}), "history");
    assert_eq!(page["ref"], "h");
    assert_eq!(seqs(&page["messages"]), vec![7, 8, 9, 10]);
    assert_eq!(page["more"], true);
    let page = bob.request(json!({"type": "history", "room": "r", "before": 7, "limit": 4}), "history");
    assert_eq!(seqs(&page["messages"]), vec![3, 4, 5, 6]);
    let m = &page["messages"];
    assert_eq!(m[0]["body"], json!({"n": "three"}));
    assert!(m[0]["edited_ts"].as_u64().is_some());
    assert_eq!(m[2]["deleted"], true);
    assert_eq!(m[2]["body"], Value::Null);
    assert_eq!(m[2]["from"], "alice");
    assert!(m[1].get("deleted").is_none() && m[1].get("edited_ts").is_none());
    let page = bob.request(json!({"type": "history", "room": "r", "before": 3}), "history");
    assert_eq!(seqs(&page["messages"]), vec![1, 2]);
    assert_eq!(page["more"], false);
    assert_eq!(
        page["messages"][1]["reactions"],
        json!({"👍": ["bob", "alice"]}),
        "idempotent, in order, unreact removed"
    );
    let page = bob.request(json!({"type": "history", "room": "r", "after": 8}), "history");
    assert_eq!(seqs(&page["messages"]), vec![9, 10]);
    assert_eq!(page["more"], false);
    let page = bob.request(json!({"type": "history", "room": "r", "after": 1, "limit": 2}), "history");
    assert_eq!(seqs(&page["messages"]), vec![2, 3]);
    assert_eq!(page["more"], true);
    assert_eq!(page["messages"][0]["ts"], page["messages"][0]["ts"].as_u64().unwrap());
}

#[test]
fn history_needs_only_permission_and_empty_rooms_page_empty() {
    let d = Daemon::start();
    let mut alice = d.client("alice");
    alice.join("open");
    alice.say("open", json!("hi"));
    let mut carol = d.client("carol");
    let page = carol.request(json!({"type": "history", "room": "open"}), "history");
    assert_eq!(page["messages"][0]["body"], "hi", "not joined, but allowed");
    let page = carol.request(json!({"type": "history", "room": "nothing-here"}), "history");
    assert_eq!((page["messages"].clone(), page["more"].clone()), (json!([]), json!(false)));
    let err = carol.request(json!({"type": "history", "room": "dm:alice:bob"}), "error");
    assert_eq!(err["code"], "forbidden");
}

#[test]
fn edit_and_delete_permissions() {
    let d = Daemon::start();
    let mut alice = d.client("alice");
    let mut bob = d.client("bob");
    let admin_token = token_with("root", None, Some("admin"), None);
    let mut admin = Client::connect_with(&d, "/ws", &[("Authorization", &format!("Bearer {admin_token}"))]).unwrap();
    admin.recv_type("welcome");
    for c in [&mut alice, &mut bob, &mut admin] {
        c.join("r");
    }
    alice.say("r", json!("mine"));
    alice.say("r", json!("also mine"));
    let cases = [
        ("bob", json!({"type": "edit", "room": "r", "target": 1, "body": "x"}), "forbidden"),
        ("bob", json!({"type": "delete", "room": "r", "target": 1}), "forbidden"),
        ("admin", json!({"type": "edit", "room": "r", "target": 1, "body": "x"}), "forbidden"),
        ("alice", json!({"type": "edit", "room": "r", "target": 99, "body": "x"}), "not_found"),
        ("alice", json!({"type": "edit", "room": "r", "target": 0, "body": "x"}), "not_found"),
        ("alice", json!({"type": "edit", "room": "nope", "target": 1, "body": "x"}), "not_in_room"),
    ];
    for (who, frame, code) in cases {
        let client = match who {
            "bob" => &mut bob,
            "admin" => &mut admin,
            _ => &mut alice,
        };
        let err = client.request(frame.clone(), "error");
        assert_eq!(err["code"], code, "{who}: {frame}");
    }
    let ack = alice.request(json!({"type": "edit", "room": "r", "target": 1, "body": "edited"}), "ack");
    assert_eq!(ack["seq"], 3);
    let err = alice.request(json!({"type": "edit", "room": "r", "target": 3, "body": "x"}), "error");
    assert_eq!(err["code"], "not_found", "an edit event is not a message");
    assert_eq!(admin.request(json!({"type": "delete", "room": "r", "target": 1, "ref": "d"}), "ack")["ref"], "d");
    let err = alice.request(json!({"type": "edit", "room": "r", "target": 1, "body": "x"}), "error");
    assert_eq!(err["code"], "not_found", "deleted messages cannot be edited");
    let err = alice.request(json!({"type": "react", "room": "r", "target": 1, "emoji": "x"}), "error");
    assert_eq!(err["code"], "not_found");
    assert_eq!(alice.request(json!({"type": "delete", "room": "r", "target": 2}), "ack")["seq"], 5);
    let big = "x".repeat(10_000);
    let err = alice.request(json!({"type": "edit", "room": "r", "target": 2, "body": big}), "error");
    assert_eq!(err["code"], "too_large");
}

#[test]
fn retention_keeps_the_newest_per_room_and_replay_reports_truncation() {
    // Polling history until pruning shows needs more than the default rate limit.
    let d = Daemon::start_with(&[
        ("history", "retention_per_room = 5"),
        ("limits", "rate = 10000"),
        ("limits", "burst = 10000"),
    ]);
    let mut alice = d.client("alice");
    alice.join("r");
    for i in 1..=20 {
        alice.say("r", json!(i));
    }
    let page = common::eventually("pruning to run", || {
        let page = alice.request(json!({"type": "history", "room": "r", "limit": 100}), "history");
        (seqs(&page["messages"]).len() == 5).then_some(page)
    });
    assert_eq!(seqs(&page["messages"]), vec![16, 17, 18, 19, 20]);
    assert_eq!(page["more"], false);
    let mut bob = d.client("bob");
    let joined = bob.request(json!({"type": "join", "room": "r", "since": 10}), "joined");
    assert_eq!(joined["truncated"], true);
    let got: Vec<u64> = (0..5).map(|_| bob.recv_type("message")["seq"].as_u64().unwrap()).collect();
    assert_eq!(got, vec![16, 17, 18, 19, 20]);
    assert_eq!(alice.say("r", json!(21))["seq"], 21);
}

#[test]
fn every_acked_event_survives_kill_9() {
    let d = Daemon::start_with(&[("limits", "rate = 100000"), ("limits", "burst = 100000")]);
    let senders: Vec<_> = (0..4)
        .map(|i| {
            let mut c = d.client(&format!("w{i}"));
            let room = format!("crash{}", i % 2);
            c.join(&room);
            std::thread::spawn(move || {
                let mut acked = Vec::new();
                for n in 0..2000 {
                    let frame = json!({"type": "send", "room": room, "body": n}).to_string();
                    if c.ws.send(tungstenite::Message::text(frame)).is_err() {
                        break; // killed mid-stream
                    }
                    // Keep at most 32 unacked so the kill lands mid-stream with acks in flight.
                    if n >= 32 {
                        match read_ack(&mut c) {
                            Some(seq) => acked.push((room.clone(), seq)),
                            None => return acked,
                        }
                    }
                }
                while let Some(seq) = read_ack(&mut c) {
                    acked.push((room.clone(), seq));
                }
                acked
            })
        })
        .collect();
    // Kill once a good share of the messages is stored.
    common::eventually("messages to flow", || (d.stats()["messages_in"].as_u64()? > 3000).then_some(()));
    let dir = d.kill();
    let acked: Vec<(String, u64)> = senders.into_iter().flat_map(|h| h.join().unwrap()).collect();
    assert!(acked.len() > 1000, "only {} acks before the kill", acked.len());

    let d = Daemon::start_in(dir, &[]);
    let mut reader = d.client("reader");
    for room in ["crash0", "crash1"] {
        let stored = all_seqs(&mut reader, room);
        let max = *stored.last().unwrap();
        assert_eq!(stored, (1..=max).collect::<Vec<_>>(), "{room}: stored seqs are gap-free");
        for (_, seq) in acked.iter().filter(|(r, _)| r == room) {
            assert!(*seq <= max, "{room}: acked seq {seq} was lost (max stored {max})");
        }
        reader.join(room);
        assert_eq!(reader.say(room, json!("after"))["seq"], max + 1, "{room}: continues after the highest stored seq");
    }
}

/// Reads until an ack (Some(seq)) or until the connection dies (None).
fn read_ack(c: &mut Client) -> Option<u64> {
    loop {
        match c.ws.read() {
            Ok(tungstenite::Message::Text(t)) => {
                let v: Value = serde_json::from_str(t.as_str()).ok()?;
                if v["type"] == "ack" {
                    return v["seq"].as_u64();
                }
            }
            Ok(_) => {}
            Err(_) => return None,
        }
    }
}

/// Every stored message seq of a room, by paging `history` forward.
fn all_seqs(c: &mut Client, room: &str) -> Vec<u64> {
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let page = c.request(json!({"type": "history", "room": room, "after": after, "limit": 500}), "history");
        let page_seqs = seqs(&page["messages"]);
        all.extend(&page_seqs);
        match page_seqs.last() {
            Some(last) if page["more"] == true => after = *last,
            _ => return all,
        }
    }
}

#[test]
fn a_full_disk_refuses_sends_keeps_live_traffic_and_recovers_without_gaps() {
    let dir = common::temp_dir("fulldisk");
    let mount = dir.join("mnt");
    std::fs::create_dir_all(&mount).unwrap();
    let status = Command::new("mount").args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"]).arg(&mount).status();
    assert!(
        status.is_ok_and(|s| s.success()),
        "this test needs to mount a small tmpfs (run as root, as CI does) to fill a disk for real"
    );
    let _unmount = Unmount(mount.clone());
    let db = mount.join("roomcast.db");
    let path = format!("path = {:?}", db.to_str().unwrap());
    let mut d =
        Daemon::start_in(dir.clone(), &[("history", &path), ("limits", "rate = 100000"), ("limits", "burst = 100000")]);
    let mut alice = d.client("alice");
    let mut bob = d.client("bob");
    let mut carol = d.client("carol");
    alice.join("r");
    bob.join("r");
    carol.join("r");
    assert_eq!(alice.say("r", json!("before"))["seq"], 1);

    // Fill the disk, then keep sending until the daemon refuses.
    let filler = mount.join("filler");
    let _ = std::fs::write(&filler, vec![0u8; 4 << 20]);
    let body = "x".repeat(4000);
    let mut last_ok = 1;
    let refusal = loop {
        alice.send(json!({"type": "send", "room": "r", "body": body}));
        let reply = alice.recv();
        match reply["type"].as_str() {
            Some("ack") => last_ok = reply["seq"].as_u64().unwrap(),
            Some("error") => break reply,
            _ => {}
        }
        assert!(last_ok < 2000, "the disk never filled up");
    };
    assert!(matches!(refusal["code"].as_str(), Some("overloaded" | "internal")), "{refusal}");
    // Live traffic that needs no storage still flows; reads still work.
    // (carol checks these, so that bob's stream of messages stays whole for the end.)
    alice.send(json!({"type": "typing", "room": "r", "active": true}));
    assert_eq!(carol.recv_type("typing")["user"], "alice");
    let page = carol.request(json!({"type": "history", "room": "r", "after": 0, "limit": 1}), "history");
    assert_eq!(page["messages"][0]["seq"], 1);
    let line = d.wait_for_log("cannot store events");
    assert!(line.contains("ERROR") && line.contains("full"), "one clear log line: {line}");

    std::fs::remove_file(&filler).unwrap();
    let ack = alice.say("r", json!("after"));
    assert_eq!(ack["seq"], last_ok + 1, "no gap, no reuse: the refused events took no seq");
    let seen: Vec<u64> = (0..last_ok + 1).map(|_| bob.recv_type("message")["seq"].as_u64().unwrap()).collect();
    assert_eq!(seen, (1..=last_ok + 1).collect::<Vec<_>>(), "bob saw every stored event and nothing refused");
    drop(d);
}

/// Unmounts the test's tmpfs even when the test fails.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn startup_refuses_a_corrupt_or_foreign_database() {
    for (name, content) in [("garbage", vec![0x42u8; 16384]), ("foreign", Vec::new())] {
        let dir = common::temp_dir(name);
        let db = dir.join("roomcast.db");
        if content.is_empty() {
            let c = rusqlite::Connection::open(&db).unwrap();
            c.execute_batch("CREATE TABLE invoices (id INTEGER)").unwrap();
        } else {
            std::fs::write(&db, content).unwrap();
        }
        std::fs::write(dir.join("roomcast.toml"), common::config_text(&dir, &[])).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_roomcast"))
            .args(["serve", "--config"])
            .arg(dir.join("roomcast.toml"))
            .output()
            .unwrap();
        assert!(!out.status.success(), "{name}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("roomcast.db"), "{name}: {err}");
        assert!(err.contains("not a") || err.contains("cannot open"), "{name}: {err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
