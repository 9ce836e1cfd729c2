//! The shapes of user ids, room names and direct-message room names (contract: "Names and limits").
//! Pure string checks: no I/O, no allocation except when building a `dm:` name.

/// Longest user id or room name the contract allows, in bytes.
pub const MAX_NAME_LEN: usize = 128;

/// Prefix that marks a direct-message room: `dm:<a>:<b>`.
pub const DM_PREFIX: &str = "dm:";

/// `[A-Za-z0-9_.@+-]{1,128}`
pub fn is_valid_user_id(s: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'@' | b'+' | b'-'))
}

/// `[A-Za-z0-9_.:@+-]{1,128}`
pub fn is_valid_room_name(s: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'@' | b'+' | b'-'))
}

/// The direct-message room of two users: `dm:<a>:<b>` with the ids in byte order.
pub fn dm_room_name(a: &str, b: &str) -> String {
    let (first, second) = if a <= b { (a, b) } else { (b, a) };
    format!("{DM_PREFIX}{first}:{second}")
}

/// What a room name says about direct messaging.
#[derive(Debug, PartialEq, Eq)]
pub enum RoomKind<'a> {
    /// An ordinary room.
    Group,
    /// A well-formed `dm:` room of these two users (in byte order; they may be equal).
    Direct(&'a str, &'a str),
    /// Starts with `dm:` but is not `dm:<a>:<b>` with valid ids in byte order.
    MalformedDirect,
}

/// Classifies a room name that already passed [`is_valid_room_name`].
pub fn room_kind(room: &str) -> RoomKind<'_> {
    let Some(rest) = room.strip_prefix(DM_PREFIX) else {
        return RoomKind::Group;
    };
    match rest.split_once(':') {
        Some((a, b)) if is_valid_user_id(a) && is_valid_user_id(b) && a <= b => RoomKind::Direct(a, b),
        _ => RoomKind::MalformedDirect,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids() {
        assert!(is_valid_user_id("alice"));
        assert!(is_valid_user_id("a.b+c-d_e@f"));
        assert!(is_valid_user_id(&"x".repeat(128)));
        assert!(!is_valid_user_id(&"x".repeat(129)));
        assert!(!is_valid_user_id(""));
        assert!(!is_valid_user_id("a:b"));
        assert!(!is_valid_user_id("a b"));
        assert!(!is_valid_user_id("é"));
    }

    #[test]
    fn room_names() {
        assert!(is_valid_room_name("team:general"));
        assert!(is_valid_room_name("dm:a:b"));
        assert!(!is_valid_room_name("a/b"));
        assert!(!is_valid_room_name(""));
        assert!(!is_valid_room_name(&"r".repeat(129)));
    }

    #[test]
    fn dm_rooms() {
        assert_eq!(dm_room_name("bob", "alice"), "dm:alice:bob");
        assert_eq!(dm_room_name("alice", "bob"), "dm:alice:bob");
        assert_eq!(room_kind("dm:alice:bob"), RoomKind::Direct("alice", "bob"));
        assert_eq!(room_kind("dm:alice:alice"), RoomKind::Direct("alice", "alice"));
        assert_eq!(room_kind("dm:bob:alice"), RoomKind::MalformedDirect);
        assert_eq!(room_kind("dm:alice"), RoomKind::MalformedDirect);
        assert_eq!(room_kind("dm:a:b:c"), RoomKind::MalformedDirect);
        assert_eq!(room_kind("general"), RoomKind::Group);
        assert_eq!(room_kind("dmx:a:b"), RoomKind::Group);
    }
}
