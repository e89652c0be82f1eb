//! How a mapping is stored in Redis.
//!
//! An entry is `<version>|` followed by a binary body. The text prefix is
//! what `SET_IF_NEWER` compares; the body is decoded on every cached lookup,
//! so it is built for that: fixed-width integers, length-prefixed strings,
//! and the base snapshot as tagged values rather than JSON text to tokenise.
//! Decoding JSON cost about as much as the `MGET` round trip itself.
//!
//! Body layout (integers little-endian, strings as `u32` length + UTF-8):
//! format byte, id (16 bytes), status (index in [`MappingStatus::ALL`]),
//! attempts `u32`, version `u64`, created and updated (`i64` seconds +
//! `u32` nanoseconds each), tenant, integration, entity type, then source
//! id, target id, idempotency key, last error and base, each behind a
//! presence byte. A value is a tag byte and its payload. Anything that does
//! not decode (an entry of an older format, a torn write) is a miss.

use chrono::{DateTime, Utc};
use serde_json::{Number, Value};
use syncd_core::ids::{IntegrationId, TenantId};
use syncd_core::mapping::{IdMapping, MappingStatus};
use syncd_core::record::Fields;
use uuid::Uuid;

/// Bumped when the body layout changes; older entries then read as misses.
/// (2: numbers other than 64-bit integers as their exact text, not as a
/// double.)
const FORMAT: u8 = 2;

/// Nesting deeper than this in a base value is refused (serde_json's own
/// limit when the value was first parsed).
const MAX_DEPTH: u32 = 128;

const NULL: u8 = 0;
const FALSE: u8 = 1;
const TRUE: u8 = 2;
const INT: u8 = 3;
const UINT: u8 = 4;
/// A number as its text: a decimal of any length kept exactly.
const DECIMAL: u8 = 5;
const STRING: u8 = 6;
const ARRAY: u8 = 7;
const OBJECT: u8 = 8;

/// The full entry, version prefix included.
pub(super) fn encode(m: &IdMapping) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(m.version.to_string().as_bytes());
    out.push(b'|');
    out.push(FORMAT);
    out.extend_from_slice(m.id.as_bytes());
    let status = MappingStatus::ALL
        .iter()
        .position(|s| *s == m.status)
        .expect("a known status");
    out.push(status as u8);
    out.extend_from_slice(&m.attempts.to_le_bytes());
    out.extend_from_slice(&m.version.to_le_bytes());
    put_time(&mut out, &m.created_at);
    put_time(&mut out, &m.updated_at);
    put_str(&mut out, m.tenant_id.as_str());
    put_str(&mut out, m.integration_id.as_str());
    put_str(&mut out, m.entity_type.as_str());
    for s in [&m.source_id, &m.target_id, &m.idempotency_key, &m.last_error] {
        match s {
            None => out.push(0),
            Some(s) => {
                out.push(1);
                put_str(&mut out, s);
            }
        }
    }
    match &m.base {
        None => out.push(0),
        Some(base) => {
            out.push(1);
            put_object(&mut out, base);
        }
    }
    out
}

/// Decodes an entry written by [`encode`]; `None` for anything else.
pub(super) fn decode(entry: &[u8]) -> Option<IdMapping> {
    let body = &entry[entry.iter().position(|&b| b == b'|')? + 1..];
    let mut r = Reader(body);
    if r.u8()? != FORMAT {
        return None;
    }
    let id = Uuid::from_bytes(r.take(16)?.try_into().ok()?);
    let status = *MappingStatus::ALL.get(r.u8()? as usize)?;
    let attempts = r.u32()?;
    let version = r.u64()?;
    let created_at = r.time()?;
    let updated_at = r.time()?;
    let tenant_id = TenantId(r.string()?);
    let integration_id = IntegrationId(r.string()?);
    let entity_type = r.string()?.into();
    let source_id = r.opt_string()?;
    let target_id = r.opt_string()?;
    let idempotency_key = r.opt_string()?;
    let last_error = r.opt_string()?;
    let base = match r.u8()? {
        0 => None,
        1 => Some(r.object(0)?),
        _ => return None,
    };
    if !r.0.is_empty() {
        return None;
    }
    Some(IdMapping {
        id,
        tenant_id,
        integration_id,
        entity_type,
        source_id,
        target_id,
        status,
        base,
        idempotency_key,
        last_error,
        attempts,
        created_at,
        updated_at,
        version,
    })
}

fn put_time(out: &mut Vec<u8>, t: &DateTime<Utc>) {
    out.extend_from_slice(&t.timestamp().to_le_bytes());
    out.extend_from_slice(&t.timestamp_subsec_nanos().to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_object(out: &mut Vec<u8>, fields: &Fields) {
    out.extend_from_slice(&(fields.len() as u32).to_le_bytes());
    for (k, v) in fields {
        put_str(out, k);
        put_value(out, v);
    }
}

fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Null => out.push(NULL),
        Value::Bool(false) => out.push(FALSE),
        Value::Bool(true) => out.push(TRUE),
        // An integer written as such (not `-0`, `1.0` or `1e2`) in 8
        // bytes; any other number as its text, so that it comes back with
        // every digit and as it was written.
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) if i.to_string() == n.as_str() => {
                out.push(INT);
                out.extend_from_slice(&i.to_le_bytes());
            }
            (_, Some(u)) if u.to_string() == n.as_str() => {
                out.push(UINT);
                out.extend_from_slice(&u.to_le_bytes());
            }
            _ => {
                out.push(DECIMAL);
                put_str(out, n.as_str());
            }
        },
        Value::String(s) => {
            out.push(STRING);
            put_str(out, s);
        }
        Value::Array(items) => {
            out.push(ARRAY);
            out.extend_from_slice(&(items.len() as u32).to_le_bytes());
            for item in items {
                put_value(out, item);
            }
        }
        Value::Object(fields) => {
            out.push(OBJECT);
            put_object(out, fields);
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    fn time(&mut self) -> Option<DateTime<Utc>> {
        let secs = i64::from_le_bytes(self.take(8)?.try_into().ok()?);
        DateTime::from_timestamp(secs, self.u32()?)
    }

    fn string(&mut self) -> Option<String> {
        let len = self.u32()? as usize;
        std::str::from_utf8(self.take(len)?).ok().map(str::to_owned)
    }

    fn opt_string(&mut self) -> Option<Option<String>> {
        match self.u8()? {
            0 => Some(None),
            1 => Some(Some(self.string()?)),
            _ => None,
        }
    }

    fn object(&mut self, depth: u32) -> Option<Fields> {
        let len = self.u32()? as usize;
        // Each entry takes at least 5 bytes: a bogus length fails here, not
        // in an allocation.
        if len > self.0.len() / 5 {
            return None;
        }
        let mut fields = Fields::new();
        for _ in 0..len {
            let key = self.string()?;
            fields.insert(key, self.value(depth + 1)?);
        }
        Some(fields)
    }

    fn value(&mut self, depth: u32) -> Option<Value> {
        if depth > MAX_DEPTH {
            return None;
        }
        Some(match self.u8()? {
            NULL => Value::Null,
            FALSE => Value::Bool(false),
            TRUE => Value::Bool(true),
            INT => Value::from(i64::from_le_bytes(self.take(8)?.try_into().ok()?)),
            UINT => Value::from(u64::from_le_bytes(self.take(8)?.try_into().ok()?)),
            DECIMAL => Value::Number(serde_json::from_str::<Number>(&self.string()?).ok()?),
            STRING => Value::String(self.string()?),
            ARRAY => {
                let len = self.u32()? as usize;
                if len > self.0.len() {
                    return None;
                }
                let mut items = Vec::with_capacity(len);
                for _ in 0..len {
                    items.push(self.value(depth + 1)?);
                }
                Value::Array(items)
            }
            OBJECT => Value::Object(self.object(depth)?),
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            (-1e300f64..1e300).prop_map(Value::from),
            // Decimals of any length, and numbers written unlike integers.
            "-?[1-9][0-9]{0,40}\\.[0-9]{1,30}".prop_map(|n| serde_json::from_str(&n).unwrap()),
            prop_oneof![Just("-0"), Just("1.0"), Just("1e2"), Just("18446744073709551616")]
                .prop_map(|n| serde_json::from_str(n).unwrap()),
            ".{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(".{0,6}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn mapping() -> impl Strategy<Value = IdMapping> {
        (
            (".{0,8}", ".{0,8}", ".{1,8}"),
            (
                prop::option::of(".{0,10}"),
                prop::option::of(".{0,10}"),
                prop::option::of(".{0,10}"),
                prop::option::of(".{0,10}"),
            ),
            (0..4usize, any::<u32>(), any::<u64>(), any::<u128>()),
            (0i64..4_000_000_000, 0u32..1_000_000_000),
            prop::option::of(prop::collection::btree_map(".{0,6}", value(), 0..6)),
        )
            .prop_map(
                |((t, i, e), (s, g, k, err), (st, attempts, version, id), (secs, nanos), base)| {
                    let at = DateTime::from_timestamp(secs, nanos).unwrap();
                    IdMapping {
                        id: Uuid::from_u128(id),
                        tenant_id: TenantId(t),
                        integration_id: IntegrationId(i),
                        entity_type: e.into(),
                        source_id: s,
                        target_id: g,
                        status: MappingStatus::ALL[st],
                        base: base.map(|b| b.into_iter().collect()),
                        idempotency_key: k,
                        last_error: err,
                        attempts,
                        created_at: at,
                        updated_at: at + chrono::Duration::nanoseconds(nanos as i64),
                        version,
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn every_mapping_round_trips(m in mapping()) {
            let bytes = encode(&m);
            let prefix = format!("{}|", m.version);
            prop_assert!(bytes.starts_with(prefix.as_bytes()));
            let back = decode(&bytes).expect("decodes");
            prop_assert_eq!(serde_json::to_value(&back).unwrap(), serde_json::to_value(&m).unwrap());
        }

        #[test]
        fn a_damaged_entry_is_a_miss_not_a_panic(m in mapping(), cut in any::<prop::sample::Index>(), flip in any::<u8>()) {
            let bytes = encode(&m);
            let at = cut.index(bytes.len());
            // Truncated anywhere: never decodes into something else.
            prop_assert!(decode(&bytes[..at]).is_none());
            // A flipped byte may still decode (inside a string); it must not panic.
            let mut flipped = bytes.clone();
            flipped[at] ^= flip | 1;
            let _ = decode(&flipped);
        }
    }

    #[test]
    fn an_entry_of_another_format_is_a_miss() {
        assert!(decode(b"3|{\"id\":\"x\"}").is_none());
        assert!(decode(b"no separator").is_none());
    }
}
