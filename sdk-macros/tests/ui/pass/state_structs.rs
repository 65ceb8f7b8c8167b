//! `#[state]` on named, tuple and unit structs, with docs, other derives, a
//! serde option and a skipped field: each implements `State` and survives a
//! round trip through the checkpoint codec.

use exactly::State;
use exactly::codec::Codec;

/// A cache that is rebuilt after a restart and so is not checkpointed.
#[derive(Default, Debug, PartialEq)]
pub struct Cache(Vec<u8>);

/// Named fields, a serde option and a skipped field.
#[exactly::state]
#[derive(Default, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Session {
    /// Events seen.
    pub event_count: u64,
    /// Last page visited.
    pub last_page: Option<String>,
    #[serde(skip)]
    cache: Cache,
}

/// A tuple struct.
#[exactly::state]
#[derive(Default, Debug, PartialEq)]
pub struct Total(pub u64, pub Vec<(String, i32)>);

/// `#[derive]` may also come before `#[state]`.
#[derive(Default, Debug, PartialEq)]
#[exactly::state]
pub struct DeriveFirst {
    /// A value.
    pub value: i64,
}

/// A unit struct.
#[exactly::state]
#[derive(Default, Debug, PartialEq)]
pub struct Marker;

fn round_trip<S: State + std::fmt::Debug + PartialEq>(value: &S, expected: &S) {
    for codec in [Codec::Bincode, Codec::Postcard] {
        let bytes = codec.encode(value, "state").unwrap();
        let decoded: S = codec.decode(&bytes, "state").unwrap();
        assert_eq!(&decoded, expected);
    }
}

fn main() {
    let session = Session {
        event_count: 2,
        last_page: Some("/home".to_owned()),
        cache: Cache(vec![1]),
    };
    // The skipped cache comes back empty.
    let restored = Session {
        event_count: 2,
        last_page: Some("/home".to_owned()),
        cache: Cache::default(),
    };
    round_trip(&session, &restored);

    let total = Total(3, vec![("a".to_owned(), -1)]);
    round_trip(&total, &Total(3, vec![("a".to_owned(), -1)]));
    round_trip(&Marker, &Marker);
    round_trip(&DeriveFirst { value: -4 }, &DeriveFirst { value: -4 });
}
