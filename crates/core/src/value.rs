//! Exact field values, and the one place where a value changes type between
//! two systems.
//!
//! A field value crosses the engine as JSON (`serde_json` with arbitrary
//! precision), in a *canonical* form, so that two values are equal exactly
//! when the systems hold the same thing:
//!
//! - numbers keep every digit as the system gave them (a PostgreSQL
//!   `numeric` of 40 digits, a 64-bit integer, the shortest text that reads
//!   back as the same double), written without exponent, leading zeros or
//!   trailing fractional zeros: `12.50` and `12.5` are the same value, and a
//!   change in the 20th digit is a change;
//! - a float that JSON cannot hold is the text `NaN`, `Infinity`,
//!   `-Infinity` (PostgreSQL's spelling) or `-0`;
//! - a time is RFC 3339 text with six fractional digits, in UTC (`…Z`) when
//!   the column holds an instant, without zone when it holds a wall-clock
//!   time; a date is `YYYY-MM-DD`; a UUID is lower-case text.
//!
//! Each field has a [`Kind`], agreed once from the columns of both sides
//! ([`Kind::agree`]). Reading a column converts its value into that kind
//! ([`read`]); writing converts back into what the column holds
//! ([`write`]). Both either keep the value exactly or refuse it with a
//! reason naming the problem: a value is never rounded, blanked or turned
//! into null. Pure: no I/O.

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use serde_json::{Number, Value};

/// What a column holds, as far as exactness is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// Anything JSON holds, kept as is (API fields, untyped columns).
    Any,
    Text,
    /// Fixed-width text that drops trailing spaces when read back (MySQL's
    /// `CHAR(n)`): text ending in a space cannot be held exactly.
    PaddedText,
    /// A string of bits (PostgreSQL's `bit(n)`, `bit varying`): text of
    /// `0`s and `1`s, which reads as a decimal number but is none.
    Bits,
    Boolean,
    /// A signed integer of `bits` bits.
    Integer {
        bits: u8,
    },
    /// An unsigned integer of `bits` bits (MySQL's `... UNSIGNED`).
    Unsigned {
        bits: u8,
    },
    /// An exact decimal: `precision` digits, `scale` of them after the
    /// point, when the column limits them; `special` when it also holds
    /// `NaN` and ±`Infinity` (PostgreSQL's unconstrained `numeric`).
    Decimal {
        precision: Option<u32>,
        scale: Option<i32>,
        special: bool,
    },
    /// A binary float of `bits` bits; `nan` and `negative_zero` when the
    /// column keeps those (SQLite's `REAL` keeps neither).
    Float {
        bits: u8,
        nan: bool,
        negative_zero: bool,
    },
    /// SQLite's NUMERIC affinity: a 64-bit integer, or a double.
    Numeric,
    /// A point in time; `zoned` when the column holds an instant, and
    /// `digits` of a second it keeps (6 unless the column says fewer).
    Timestamp {
        zoned: bool,
        digits: u8,
    },
    Date,
    Uuid,
    Json,
    Bytes,
}

/// What a field's values are in the engine, agreed for both sides.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Kind {
    /// Kept as the system gives it.
    #[default]
    Any,
    Text,
    Boolean,
    /// An exact decimal or integer: `-0.00` is zero.
    Number,
    /// A binary float: `-0` is its negative zero.
    Float,
    Timestamp {
        zoned: bool,
    },
    Date,
    Uuid,
    Json,
    Bytes,
}

/// How a dialect takes values it has no JSON form for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// Through `jsonb_populate_recordset`: a JSON string is read by the
    /// column type's input function.
    Postgres,
    /// Through `json_each(...) ->> path`: a JSON number too large for a
    /// double reads as an infinity.
    Sqlite,
    /// A JSON API: what JSON holds.
    Json,
    /// MySQL and MariaDB, through bound parameters: a time as
    /// `YYYY-MM-DD HH:MM:SS.ffffff` (UTC for an instant: the session's time
    /// zone is UTC), a document as its text; no `NaN` or infinities.
    Mysql,
}

impl Class {
    /// The class of a PostgreSQL column from `format_type`'s name.
    pub fn postgres(type_name: &str) -> Class {
        let t = type_name.to_ascii_lowercase();
        let (base, args) = match t.split_once('(') {
            Some((b, rest)) => (
                b.trim().to_owned(),
                rest.split(')').next().unwrap_or("").to_owned(),
            ),
            None => (t.clone(), String::new()),
        };
        let is_array = t.ends_with("[]");
        if is_array {
            return Class::Json;
        }
        match base.as_str() {
            "smallint" | "int2" => Class::Integer { bits: 16 },
            "integer" | "int" | "int4" | "serial" => Class::Integer { bits: 32 },
            "bigint" | "int8" | "bigserial" => Class::Integer { bits: 64 },
            "numeric" | "decimal" => {
                let mut parts = args.split(',').map(|p| p.trim().parse::<i32>().ok());
                let precision = parts.next().flatten().and_then(|p| u32::try_from(p).ok());
                let scale = parts.next().flatten().or(precision.map(|_| 0));
                Class::Decimal {
                    precision,
                    scale,
                    special: precision.is_none(),
                }
            }
            "double precision" | "float8" => Class::Float {
                bits: 64,
                nan: true,
                negative_zero: true,
            },
            "real" | "float4" => Class::Float {
                bits: 32,
                nan: true,
                negative_zero: true,
            },
            "boolean" | "bool" => Class::Boolean,
            // `character(n)` pads what it holds with spaces, and its
            // spaces count for nothing: read without them, as MySQL's
            // `CHAR(n)` is.
            "character" | "char" => Class::PaddedText,
            "text" | "character varying" | "varchar" | "name" | "citext" => Class::Text,
            "bit" | "bit varying" | "varbit" => Class::Bits,
            "date" => Class::Date,
            "uuid" => Class::Uuid,
            "json" | "jsonb" => Class::Json,
            "bytea" => Class::Bytes,
            _ if base.starts_with("timestamp") => Class::Timestamp {
                zoned: t.contains("with time zone"),
                digits: args.trim().parse().unwrap_or(6).min(6),
            },
            _ => Class::Any,
        }
    }

    /// The class of a SQLite column from its declared type: SQLite's
    /// affinity rules, refined by the names that say what the text or
    /// number stands for (`BOOLEAN`, `TIMESTAMP`, `DATE`, `UUID`, `JSON`).
    pub fn sqlite(declared: &str) -> Class {
        let t = declared.to_ascii_uppercase();
        if t.contains("BOOL") {
            Class::Boolean
        } else if t.contains("INT") {
            Class::Integer { bits: 64 }
        } else if t.contains("TIMESTAMPTZ") || t.contains("DATETIME") || t.contains("TIMESTAMP") {
            Class::Timestamp {
                zoned: true,
                digits: 6,
            }
        } else if t.contains("DATE") {
            Class::Date
        } else if t.contains("UUID") {
            Class::Uuid
        } else if t.contains("JSON") {
            Class::Json
        } else if t.contains("CHAR") || t.contains("CLOB") || t.contains("TEXT") {
            Class::Text
        } else if t.contains("BLOB") {
            Class::Bytes
        } else if t.is_empty() {
            Class::Any
        } else if t.contains("REAL") || t.contains("FLOA") || t.contains("DOUB") {
            Class::Float {
                bits: 64,
                nan: false,
                negative_zero: false,
            }
        } else {
            Class::Numeric
        }
    }

    /// The class of a MySQL or MariaDB column from its `COLUMN_TYPE`
    /// (`decimal(12,2)`, `bigint(20) unsigned`, `datetime(6)`); `json` is
    /// also a MariaDB `longtext` checked by `json_valid` (the connector
    /// says so).
    pub fn mysql(column_type: &str) -> Class {
        let t = column_type.to_ascii_lowercase();
        let (base, args) = match t.split_once('(') {
            Some((b, rest)) => (b.trim(), rest.split(')').next().unwrap_or("")),
            None => (t.split_whitespace().next().unwrap_or(""), ""),
        };
        let unsigned = t.contains("unsigned");
        let integer = |bits: u8| match unsigned {
            true => Class::Unsigned { bits },
            false => Class::Integer { bits },
        };
        let float = |bits: u8| Class::Float {
            bits,
            nan: false,
            negative_zero: false,
        };
        match base {
            "tinyint" if args.trim() == "1" && !unsigned => Class::Boolean,
            "bool" | "boolean" => Class::Boolean,
            "tinyint" => integer(8),
            "smallint" => integer(16),
            "mediumint" => integer(24),
            "int" | "integer" => integer(32),
            "bigint" => integer(64),
            "decimal" | "numeric" | "dec" | "fixed" => {
                let mut parts = args.split(',').map(|p| p.trim().parse::<u32>().ok());
                let precision = parts.next().flatten().unwrap_or(10);
                let scale = parts.next().flatten().unwrap_or(0);
                Class::Decimal {
                    precision: Some(precision),
                    scale: Some(scale as i32),
                    special: false,
                }
            }
            "float" => float(32),
            "double" | "real" => float(64),
            // Read as the unsigned number its bits make (the connector
            // selects it so), written as one.
            "bit" => Class::Unsigned {
                bits: args.trim().parse::<u8>().unwrap_or(1).clamp(1, 64),
            },
            // `CHAR(n)` gives its text back without trailing spaces.
            "char" => Class::PaddedText,
            "varchar" | "tinytext" | "text" | "mediumtext" | "longtext" | "enum" | "set" => Class::Text,
            "json" => Class::Json,
            "date" => Class::Date,
            // Both hold instants: syncd's sessions run in UTC, so a
            // `DATETIME` is read and written as UTC (as a `TIMESTAMP` is
            // converted to and from it).
            "datetime" | "timestamp" => Class::Timestamp {
                zoned: true,
                digits: args.trim().parse().unwrap_or(0).min(6),
            },
            "binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob" => Class::Bytes,
            _ => Class::Any,
        }
    }

    /// The kind of value this class holds.
    pub fn kind(self) -> Kind {
        match self {
            Class::Any => Kind::Any,
            Class::Text | Class::PaddedText | Class::Bits => Kind::Text,
            Class::Boolean => Kind::Boolean,
            Class::Integer { .. } | Class::Unsigned { .. } | Class::Decimal { .. } | Class::Numeric => {
                Kind::Number
            }
            Class::Float { .. } => Kind::Float,
            Class::Timestamp { zoned, .. } => Kind::Timestamp { zoned },
            Class::Date => Kind::Date,
            Class::Uuid => Kind::Uuid,
            Class::Json => Kind::Json,
            Class::Bytes => Kind::Bytes,
        }
    }
}

impl Kind {
    /// The kind a field has in the engine, given the classes of its two
    /// columns: the same kind when they agree; the more specific one when
    /// one side holds text (or anything), so that text carries numbers,
    /// times and UUIDs exactly; otherwise the source's, and [`write`]
    /// refuses what the target cannot hold.
    /// Whether fields of kinds `a` and `b` can be synced between each other
    /// at all (a value may still be refused alone: a time of day into a
    /// date, a digit too many): the same kind, text or anything on one
    /// side, numbers, times and dates among themselves.
    pub fn can_meet(a: Kind, b: Kind) -> bool {
        use Kind::*;
        matches!(
            (a, b),
            (Any | Text, _)
                | (_, Any | Text)
                | (Number | Float, Number | Float)
                | (Timestamp { .. } | Date, Timestamp { .. } | Date)
        ) || a == b
    }

    pub fn agree(source: Class, target: Class) -> Kind {
        let (s, t) = (source.kind(), target.kind());
        match (s, t) {
            _ if s == t => s,
            (Kind::Any, other) | (other, Kind::Any) => other,
            (Kind::Text, other) | (other, Kind::Text) => other,
            (Kind::Timestamp { .. }, Kind::Timestamp { .. }) => Kind::Timestamp { zoned: true },
            _ => s,
        }
    }
}

/// The canonical form of a decimal number's text (JSON, PostgreSQL or
/// Rust's float formatting): no exponent, no leading zeros, no trailing
/// fractional zeros; `-0` keeps its sign. `None` when `s` is not a number.
pub fn canonical_number(s: &str) -> Option<String> {
    let (negative, rest) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let (mantissa, exponent) = match rest.find(['e', 'E']) {
        Some(i) => (&rest[..i], rest[i + 1..].parse::<i64>().ok()?),
        None => (rest, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if int.is_empty() && frac.is_empty()
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    // Written out in full, an exponent this large is not a real value.
    if !(-100_000..=100_000).contains(&exponent) {
        return None;
    }
    let digits: String = format!("{int}{frac}");
    let point = int.len() as i64 + exponent;
    let lead = digits.bytes().take_while(|b| *b == b'0').count();
    let digits = &digits[lead..];
    let point = point - lead as i64;
    let digits = digits.trim_end_matches('0');
    let sign = if negative { "-" } else { "" };
    if digits.is_empty() {
        return Some(format!("{sign}0"));
    }
    let n = digits.len() as i64;
    let body = if point <= 0 {
        format!("0.{}{digits}", "0".repeat((-point) as usize))
    } else if point >= n {
        format!("{digits}{}", "0".repeat((point - n) as usize))
    } else {
        format!("{}.{}", &digits[..point as usize], &digits[point as usize..])
    };
    Some(format!("{sign}{body}"))
}

/// Whether number text is in canonical form already: digits, at most one
/// point with no trailing zero after it, no exponent, no leading zero
/// before other digits, and no `-0`.
fn is_canonical(s: &str) -> bool {
    let unsigned = s.strip_prefix('-').unwrap_or(s);
    let (int, frac) = match unsigned.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (unsigned, None),
    };
    !int.is_empty()
        && int.bytes().all(|b| b.is_ascii_digit())
        && (int == "0" || !int.starts_with('0'))
        && frac.is_none_or(|f| !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()) && !f.ends_with('0'))
        && !(unsigned.trim_start_matches(['0', '.']).is_empty() && s.starts_with('-'))
}

/// A JSON number from canonical text.
fn number(canonical: &str) -> Value {
    Value::Number(serde_json::from_str::<Number>(canonical).expect("canonical numbers are JSON numbers"))
}

/// A float as the engine carries it.
pub fn float_value(f: f64) -> Value {
    if f.is_nan() {
        Value::String("NaN".into())
    } else if f.is_infinite() {
        Value::String(if f > 0.0 { "Infinity" } else { "-Infinity" }.into())
    } else {
        numeric_value(&canonical_number(&f.to_string()).expect("a finite float formats as a number"))
    }
}

/// A float column's number as every reader here gives it: the shortest
/// text that reads back as the same float, by Rust's rule where two such
/// texts are equally near (`-1391674849710224.25` is `…224.3` here, and
/// `-1.3916748497102242e+15` in PostgreSQL's output). Without it the same
/// float read from PostgreSQL and from SQLite would be two values. A value
/// that is not a finite number of that width is returned as it is.
pub fn float_column_value(v: Value, bits: u8) -> Value {
    let Value::Number(n) = &v else { return v };
    let text = if bits == 32 {
        n.as_str()
            .parse::<f32>()
            .ok()
            .filter(|f| f.is_finite())
            .map(|f| f.to_string())
    } else {
        n.as_str()
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .map(|f| f.to_string())
    };
    match text.as_deref().and_then(canonical_number) {
        Some(text) => numeric_value(&text),
        None => v,
    }
}

/// `v` with each number (itself, or inside a document) that names a double
/// lying exactly between two shortest texts given as syncd prints it: for
/// `-1391674849710224.25`, JavaScript and PostgreSQL print `…224.2` and
/// Rust `…224.3`; read from a system that keeps doubles, both are the one
/// value. Every other number is left as it is (`9007199254740993` reads as
/// the double `…992`, but no printer of doubles writes it, and changing it
/// would round it).
pub fn as_double_prints(v: Value) -> Value {
    match v {
        Value::Number(ref n) => match canonical_number(n.as_str()) {
            Some(text) => match other_of_tie(&text) {
                Some(ours) => numeric_value(&ours),
                None => v,
            },
            None => v,
        },
        Value::Array(items) => Value::Array(items.into_iter().map(as_double_prints).collect()),
        Value::Object(map) => Value::Object(map.into_iter().map(|(k, v)| (k, as_double_prints(v))).collect()),
        other => other,
    }
}

/// Rust's shortest text of the double `text` names, when `text` is the
/// other text of a tie: the double's exact value ends in a 5 one digit
/// past both, which round it down and up.
fn other_of_tie(text: &str) -> Option<String> {
    let f = text.parse::<f64>().ok().filter(|f| f.is_finite())?;
    let ours = canonical_number(&f.to_string())?;
    if ours == text {
        return None;
    }
    // The exact value: a double has at most 1,074 digits after the point.
    let (exact, exp) = significand(&canonical_number(&format!("{:.1100}", f.abs()))?);
    let down = exact.strip_suffix('5').filter(|d| !d.is_empty())?;
    let up = increment(down);
    let carried = up.len() > down.len();
    let candidates = [
        trimmed(down.to_owned(), exp),
        trimmed(up, exp + i32::from(carried)),
    ];
    let unsigned = |t: &str| significand(t.trim_start_matches('-'));
    (candidates.contains(&unsigned(text)) && candidates.contains(&unsigned(&ours))).then_some(ours)
}

/// A non-negative number's digits without leading or trailing zeros, and
/// where they start: `("12", -1)` for `0.0120`, `("12", 2)` for `12`.
fn significand(text: &str) -> (String, i32) {
    let (int, frac) = text.split_once('.').unwrap_or((text, ""));
    let all = format!("{int}{frac}");
    let lead = all.len() - all.trim_start_matches('0').len();
    let digits = all.trim_matches('0').to_owned();
    (digits, int.len() as i32 - lead as i32)
}

fn trimmed(digits: String, exp: i32) -> (String, i32) {
    (digits.trim_end_matches('0').to_owned(), exp)
}

/// Decimal digits plus one in the last place (`"199"` → `"200"`, `"99"` →
/// `"100"`).
fn increment(digits: &str) -> String {
    let mut out: Vec<u8> = digits.bytes().collect();
    for d in out.iter_mut().rev() {
        if *d == b'9' {
            *d = b'0';
        } else {
            *d += 1;
            return String::from_utf8(out).expect("digits");
        }
    }
    format!("1{}", String::from_utf8(out).expect("digits"))
}

/// Floats JSON has no number for, carried as text: a JSON `-0` is read
/// back as `0` by many (PostgreSQL's `jsonb` among them).
const SPECIALS: [&str; 4] = ["NaN", "Infinity", "-Infinity", "-0"];

/// The text of a number value, or of a special float's name.
fn numeric_text(v: &Value) -> Option<String> {
    match v {
        Value::Number(n) if is_canonical(n.as_str()) => Some(n.as_str().to_owned()),
        Value::Number(n) => canonical_number(n.as_str()),
        Value::String(s) if SPECIALS.contains(&s.as_str()) => Some(s.clone()),
        Value::String(s) => canonical_number(s.trim()),
        _ => None,
    }
}

/// Whether number text `s` says nothing its number drops: canonical, or
/// at most with zeros after the point (`12.50`).
fn keeps_its_number(s: &str) -> bool {
    if SPECIALS.contains(&s) || canonical_number(s).as_deref() == Some(s) {
        return true;
    }
    let digits = s.strip_prefix('-').unwrap_or(s);
    let leading_zero = digits.len() > 1 && digits.starts_with('0') && digits.as_bytes()[1].is_ascii_digit();
    s.trim() == s && !s.starts_with('+') && !digits.contains(['e', 'E']) && !leading_zero
}

/// A number value (or special float) from its canonical text.
fn numeric_value(text: &str) -> Value {
    if SPECIALS.contains(&text) {
        Value::String(text.to_owned())
    } else {
        number(text)
    }
}

/// The canonical text of a time, or `None` when `s` is not one. A time
/// outside what chrono holds (PostgreSQL's `infinity`, years past 9999) is
/// not a time here; the caller keeps it as text.
fn canonical_time(s: &str, zoned: bool) -> Option<String> {
    // Digits past the microsecond would be cut off: not a time here.
    let fraction = s
        .split_once('.')
        .map(|(_, f)| f.bytes().take_while(u8::is_ascii_digit).collect::<Vec<u8>>())
        .unwrap_or_default();
    if fraction.iter().skip(6).any(|d| *d != b'0') {
        return None;
    }
    // A leap second (`23:59:60`), which chrono reads and no database here
    // keeps (PostgreSQL takes it for the next minute): not a time here.
    let leap = |nanos: u32| nanos >= 1_000_000_000;
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        // A wall-clock time does not hold the offset: not one here.
        return (zoned && !leap(chrono::Timelike::nanosecond(&t)))
            .then(|| t.with_timezone(&Utc).format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string());
    }
    let naive = NaiveDateTime::parse_from_str(&s.replacen(' ', "T", 1), "%Y-%m-%dT%H:%M:%S%.f")
        .ok()
        .filter(|t| !leap(chrono::Timelike::nanosecond(t)))?;
    Some(if zoned {
        naive.and_utc().format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
    } else {
        naive.format("%Y-%m-%dT%H:%M:%S%.6f").to_string()
    })
}

fn describe(v: &Value) -> String {
    let text = v.to_string();
    if text.len() > 80 {
        format!(
            "{}… ({} bytes)",
            &text[..text.floor_char_boundary(77)],
            text.len()
        )
    } else {
        text
    }
}

/// `at`, a row's `updated_at` as a change scan read it, moved back to
/// `bound` when it is later: written as `at` is (a `T` or a space, as many
/// digits of a second, cut rather than rounded, and the same offset or
/// none), so that a column of text compares it as it does its own values.
/// A number stays a number in its own unit ([`epoch_units`]). A bare date
/// is moved back to two days before `bound`'s: every row edited on a day
/// carries the same stamp, so a cursor on that day (and an id) would pass
/// over a later edit of a row with a smaller id, and a local date may be a
/// day behind UTC's. `None` when `at` is no
/// later, or is not a time written either way: then the caller keeps it.
pub fn no_later_than(at: &Value, bound: DateTime<Utc>) -> Option<Value> {
    if let Some(n) = at.as_i64() {
        let bound = epoch_of(bound, epoch_units(n)?);
        return (n > bound).then(|| Value::from(bound));
    }
    let text = at.as_str()?;
    if let Some(day) = bare_date(text) {
        // Two days back: a table stamped with its local date (west of UTC
        // a day behind) still has the bound's day and the one before read
        // whole, whatever the cursor's id.
        let before = bound.date_naive().pred_opt()?.pred_opt()?;
        return (day > before).then(|| Value::String(before.format("%Y-%m-%d").to_string()));
    }
    let (layout, instant) = TextTime::read(text)?;
    (instant > bound).then(|| Value::String(layout.write(bound, layout.digits)))
}

/// `s` when it is a date alone, `YYYY-MM-DD`: a change time of a day.
pub fn bare_date(s: &str) -> Option<NaiveDate> {
    (s.len() == 10)
        .then(|| NaiveDate::parse_from_str(s, "%Y-%m-%d").ok())
        .flatten()
}

/// The last second of year 9999, in Unix seconds.
const LAST_SECOND: i64 = 253_402_300_799;

/// How many units a second an integer change time counts: Unix seconds
/// up to year 9999; past that, milliseconds (JavaScript's `Date.now()`),
/// microseconds or nanoseconds where the number places the time between
/// 1973 and 2262 in that unit. `None` between those ranges: a number such
/// as `20260101100000` (a time written as digits) is no count of either.
pub fn epoch_units(n: i64) -> Option<i64> {
    let n = n.unsigned_abs();
    match n {
        _ if n <= LAST_SECOND as u64 => Some(1),
        100_000_000_000..10_000_000_000_000 => Some(1_000),
        100_000_000_000_000..10_000_000_000_000_000 => Some(1_000_000),
        100_000_000_000_000_000.. => Some(1_000_000_000),
        _ => None,
    }
}

/// The instant an integer change time says, in its unit ([`epoch_units`]).
pub fn epoch_time(n: i64) -> Option<DateTime<Utc>> {
    let units = epoch_units(n)?;
    let nanos = n.rem_euclid(units) * (1_000_000_000 / units);
    DateTime::from_timestamp(n.div_euclid(units), nanos as u32)
}

/// `t` as an integer change time of `units` a second, cut (never rounded
/// up) to the unit.
pub fn epoch_of(t: DateTime<Utc>, units: i64) -> i64 {
    match units {
        1 => t.timestamp(),
        1_000 => t.timestamp_millis(),
        1_000_000 => t.timestamp_micros(),
        _ => t.timestamp_nanos_opt().unwrap_or(i64::MAX),
    }
}

/// `t` written as `example` writes its time (a `T` or a space, the same
/// offset, or none for UTC), with microseconds: how a table whose change
/// times are text is stamped, so that they order as its own. `None` when
/// `example` is not a time written that way.
pub fn time_like(example: &str, t: DateTime<Utc>) -> Option<String> {
    let (layout, _) = TextTime::read(example)?;
    Some(layout.write(t, 6))
}

/// How a time is written as text: `YYYY-MM-DD`, a `T` or a space,
/// `HH:MM:SS`, `digits` of a second, and a zone as written (`Z`, an offset,
/// or nothing for UTC).
struct TextTime<'a> {
    sep: char,
    digits: usize,
    zone: &'a str,
    offset: chrono::FixedOffset,
}

impl<'a> TextTime<'a> {
    /// The layout of `s` and the instant it says.
    fn read(s: &'a str) -> Option<(TextTime<'a>, DateTime<Utc>)> {
        let sep = s
            .get(10..11)
            .and_then(|c| c.chars().next())
            .filter(|c| *c == 'T' || *c == ' ')?;
        let naive = NaiveDateTime::parse_from_str(s.get(..19)?, &format!("%Y-%m-%d{sep}%H:%M:%S")).ok()?;
        let after = &s[19..];
        let digits = after
            .strip_prefix('.')
            .map_or(0, |f| f.bytes().take_while(u8::is_ascii_digit).count());
        let zone = &after[if digits > 0 { digits + 1 } else { 0 }..];
        let offset = match zone {
            "" | "Z" | "z" => chrono::FixedOffset::east_opt(0)?,
            z => {
                let full = if z.len() == 3 {
                    format!("{z}:00")
                } else {
                    z.to_owned()
                };
                *DateTime::parse_from_rfc3339(&format!("2000-01-01T00:00:00{full}"))
                    .ok()?
                    .offset()
            }
        };
        let fraction: u32 = match digits {
            0 => 0,
            n => after[1..=n.min(9)].parse::<u32>().ok()? * 10u32.pow(9 - n.min(9) as u32),
        };
        let utc = naive.and_utc() - chrono::Duration::seconds(offset.local_minus_utc().into())
            + chrono::Duration::nanoseconds(fraction.into());
        Some((
            TextTime {
                sep,
                digits,
                zone,
                offset,
            },
            utc,
        ))
    }

    /// `t` in this layout with `digits` of a second, cut rather than
    /// rounded.
    fn write(&self, t: DateTime<Utc>, digits: usize) -> String {
        let local = t.with_timezone(&self.offset);
        let mut text = local.format(&format!("%Y-%m-%d{}%H:%M:%S", self.sep)).to_string();
        if digits > 0 {
            let nanos = format!("{:09}", local.timestamp_subsec_nanos());
            text.push('.');
            text.push_str(&nanos[..digits.min(9)]);
            text.extend(std::iter::repeat_n('0', digits.saturating_sub(9)));
        }
        text.push_str(self.zone);
        text
    }
}

/// Converts a value read from a column of class `native` into a field of
/// kind `kind`, in canonical form; `Err` says why it cannot be.
pub fn read(kind: Kind, native: Class, v: Value) -> Result<Value, String> {
    if v.is_null() {
        return Ok(v);
    }
    // The padding of a fixed-width column (PostgreSQL gives it back).
    let v = match v {
        Value::String(s) if native == Class::PaddedText && s.ends_with(' ') => {
            Value::String(s.trim_end_matches(' ').to_owned())
        }
        other => other,
    };
    // Only a float has a negative zero: elsewhere `-0` (a decimal written
    // `-0.00`) is zero.
    let float = kind == Kind::Float || matches!(native, Class::Float { .. } | Class::Any);
    let number_of = |text: String| match text.as_str() {
        "-0" if !float => number("0"),
        _ => numeric_value(&text),
    };
    let too_long = |v: &Value| format!("{} has an exponent too large to write out", describe(v));
    // Most numbers are canonical as read: kept without a copy.
    let canonical_as_is = |v: &Value| matches!(v, Value::Number(n) if is_canonical(n.as_str()));
    match kind {
        Kind::Any | Kind::Bytes | Kind::Number | Kind::Float if canonical_as_is(&v) => Ok(v),
        // Kept as given when it cannot be written out.
        Kind::Any | Kind::Bytes => Ok(match numeric_text(&v) {
            Some(text) if v.is_number() => number_of(text),
            _ => v,
        }),
        Kind::Number | Kind::Float => match &v {
            Value::Number(_) => numeric_text(&v).map(number_of).ok_or_else(|| too_long(&v)),
            // Text that is a number only once something it says is
            // dropped (a leading zero, a sign, spaces, an exponent's form)
            // would not come back as it was.
            Value::String(s) if native == Class::Bits => Err(format!(
                "`{s}` is a string of bits, not a number, and the field is a number on the other side"
            )),
            // (Text from a column of any type too: SQLite keeps `'007'` as
            // text in a column declared without one.)
            Value::String(s)
                if matches!(native.kind(), Kind::Text | Kind::Any)
                    && numeric_text(&v).is_some()
                    && !keeps_its_number(s) =>
            {
                Err(format!(
                    "`{s}` is text a number would not give back (a leading zero, a `+`, spaces or an exponent are \
                 dropped), and the field is a number on the other side"
                ))
            }
            Value::String(s) => numeric_text(&v)
                .map(number_of)
                .ok_or_else(|| format!("`{s}` is not a number")),
            Value::Bool(b) if native == Class::Boolean => Ok(number(if *b { "1" } else { "0" })),
            other => Err(format!("{} is not a number", describe(other))),
        },
        Kind::Boolean => match &v {
            Value::Bool(_) => Ok(v),
            Value::Number(n) if n.to_string() == "0" => Ok(Value::Bool(false)),
            Value::Number(n) if n.to_string() == "1" => Ok(Value::Bool(true)),
            Value::String(s) if matches!(s.as_str(), "true" | "t" | "1") => Ok(Value::Bool(true)),
            Value::String(s) if matches!(s.as_str(), "false" | "f" | "0") => Ok(Value::Bool(false)),
            other => Err(format!("{} is not a boolean", describe(other))),
        },
        Kind::Timestamp { zoned } => match &v {
            // A date column's day, where the other side keeps times: its
            // midnight (UTC), as a time written there at midnight is kept.
            Value::String(s) if native == Class::Date && bare_date(s).is_some() => {
                let midnight = format!("{s}T00:00:00{}", if zoned { "Z" } else { "" });
                Ok(Value::String(
                    canonical_time(&midnight, zoned).unwrap_or_else(|| s.clone()),
                ))
            }
            Value::String(s) => Ok(Value::String(
                canonical_time(s, zoned).unwrap_or_else(|| s.clone()),
            )),
            other => Err(format!("{} is not a time", describe(other))),
        },
        Kind::Date => match &v {
            // `2024-1-5` and `2024-01-05` are one date.
            Value::String(s) if NaiveDate::parse_from_str(s, "%Y-%m-%d").is_ok() => Ok(Value::String(
                NaiveDate::parse_from_str(s, "%Y-%m-%d")
                    .map(|d| d.format("%Y-%m-%d").to_string())
                    .unwrap_or_else(|_| s.clone()),
            )),
            Value::String(s) if matches!(s.as_str(), "infinity" | "-infinity") => Ok(v),
            Value::String(s) => match canonical_time(s, false).or_else(|| canonical_time(s, true)) {
                Some(t) if t.ends_with("T00:00:00.000000") => Ok(Value::String(t[..10].to_owned())),
                _ => Err(format!("`{s}` is not a date")),
            },
            other => Err(format!("{} is not a date", describe(other))),
        },
        Kind::Uuid => match &v {
            Value::String(s) => uuid::Uuid::parse_str(s)
                .map(|u| Value::String(u.hyphenated().to_string()))
                .map_err(|_| format!("`{s}` is not a UUID")),
            other => Err(format!("{} is not a UUID", describe(other))),
        },
        Kind::Json => match v {
            // A document a text column carries.
            Value::String(s) if native.kind() == Kind::Text => {
                serde_json::from_str::<Value>(&s).map_err(|e| format!("`{s}` is not a JSON document: {e}"))
            }
            other => Ok(other),
        },
        Kind::Text => match v {
            Value::String(_) => Ok(v),
            Value::Number(ref n) => Ok(Value::String(numeric_text(&v).unwrap_or_else(|| n.to_string()))),
            Value::Bool(b) => Ok(Value::String(b.to_string())),
            other => Ok(Value::String(other.to_string())),
        },
    }
}

/// Converts a field of kind `kind` into what a column of class `native`
/// holds, in the form `dialect` takes; `Err` says why the column cannot hold
/// it exactly.
pub fn write(kind: Kind, native: Class, dialect: Dialect, v: &Value) -> Result<Value, String> {
    if v.is_null() {
        return Ok(Value::Null);
    }
    match native {
        // An untyped SQLite column keeps what `json_each` gives it: a
        // number as a 64-bit integer or a double, a document as text.
        Class::Any if dialect == Dialect::Sqlite => match v {
            Value::Number(n) if !is_exact_in_sqlite(n.as_str()) => Err(format!(
                "{n} would be read back as a double from an untyped SQLite column (declare it TEXT for exact \
                 decimals)"
            )),
            Value::Object(_) | Value::Array(_) => Err(
                "a JSON document would be read back as text from an untyped SQLite column (declare it JSON)"
                    .into(),
            ),
            _ => Ok(v.clone()),
        },
        // (PostgreSQL refuses what is no string of bits, or of another
        // length than a `bit(n)`'s.)
        Class::Any | Class::Bits => Ok(v.clone()),
        // SQLite and MySQL take a document as its text; PostgreSQL takes
        // the document itself.
        // A document that is a bare number reads as a number literal to a
        // SQLite `JSON` column (NUMERIC affinity): stored as an integer or
        // a double, it must come back the same.
        Class::Json if dialect == Dialect::Sqlite => match v {
            Value::Number(n) if !is_exact_in_sqlite(n.as_str()) => Err(format!(
                "the document {n} is a number a SQLite JSON column would store as a double (its affinity is \
                 NUMERIC) and give back rounded; declare the column TEXT to keep its text"
            )),
            _ => Ok(Value::String(v.to_string())),
        },
        Class::Json if dialect == Dialect::Mysql => Ok(Value::String(v.to_string())),
        Class::Json => Ok(v.clone()),
        Class::Text | Class::PaddedText => {
            let text = match v {
                _ if kind == Kind::Json => v.to_string(),
                Value::String(s) => s.clone(),
                Value::Number(n) => numeric_text(v).unwrap_or_else(|| n.to_string()),
                Value::Bool(b) => b.to_string(),
                other => other.to_string(),
            };
            if dialect == Dialect::Postgres && text.contains('\0') {
                return Err("text holding a NUL character cannot be stored in PostgreSQL text".into());
            }
            if native == Class::PaddedText && text.ends_with(' ') {
                return Err(format!(
                    "{} ends with a space, which a fixed-width CHAR column does not keep apart from its padding",
                    describe(&Value::String(text))
                ));
            }
            Ok(Value::String(text))
        }
        Class::Boolean => match v {
            Value::Bool(_) => Ok(v.clone()),
            other => match read(Kind::Boolean, Class::Any, other.clone()) {
                Ok(b) => Ok(b),
                Err(why) => Err(format!("{why}, and the column holds booleans")),
            },
        },
        Class::Integer { bits } => {
            let text = numeric_text(v).ok_or_else(|| format!("{} is not an integer", describe(v)))?;
            let fits = match text.parse::<i64>() {
                Ok(i) => bits >= 64 || (i >= -(1i64 << (bits - 1)) && i < (1i64 << (bits - 1))),
                Err(_) => false,
            };
            if text == "-0" {
                return Err("-0 (a float's negative zero) cannot be held by an integer column".into());
            }
            if !fits {
                return Err(format!("{text} does not fit a {bits}-bit integer column"));
            }
            Ok(number(&text))
        }
        Class::Unsigned { bits } => {
            let text = numeric_text(v).ok_or_else(|| format!("{} is not an integer", describe(v)))?;
            let fits = text.parse::<u128>().is_ok_and(|u| u < 1u128 << bits);
            if !fits {
                return Err(format!(
                    "{text} does not fit an unsigned {bits}-bit integer column"
                ));
            }
            Ok(number(&text))
        }
        Class::Decimal {
            precision,
            scale,
            special,
        } => {
            let text = numeric_text(v).ok_or_else(|| format!("{} is not a number", describe(v)))?;
            if text == "-0" {
                return Err("-0 (a float's negative zero) cannot be held by a decimal column".into());
            }
            if SPECIALS.contains(&text.as_str()) {
                if !special || text == "NaN" && dialect != Dialect::Postgres {
                    return Err(format!(
                        "{text} cannot be held by a decimal column of limited precision"
                    ));
                }
                return Ok(Value::String(text));
            }
            if let (Some(p), Some(s)) = (precision, scale) {
                let unsigned = text.trim_start_matches('-');
                let (int, frac) = unsigned.split_once('.').unwrap_or((unsigned, ""));
                let int_digits = if int == "0" { 0 } else { int.len() as i64 };
                // A negative scale rounds to tens, hundreds, ...: the
                // digits it drops must be zeros.
                let zeros = (int.len() - int.trim_end_matches('0').len()) as i64;
                let (p, s) = (i64::from(p), i64::from(s));
                if frac.len() as i64 > s.max(0) || (s < 0 && int != "0" && zeros < -s) {
                    return Err(format!(
                        "{text} has {} digits after the point; the column (numeric({p},{s})) keeps {s}",
                        frac.len()
                    ));
                }
                if int_digits > p - s {
                    return Err(format!(
                        "{text} has {int_digits} digits before the point; the column (numeric({p},{s})) keeps {}",
                        p - s
                    ));
                }
            }
            Ok(number(&text))
        }
        Class::Float {
            bits,
            nan,
            negative_zero,
        } => {
            let text = numeric_text(v).ok_or_else(|| format!("{} is not a number", describe(v)))?;
            let exact = match text.as_str() {
                "NaN" if !nan => {
                    return Err("NaN cannot be held by this column (SQLite stores it as NULL)".into());
                }
                "Infinity" | "-Infinity" if dialect == Dialect::Mysql => {
                    return Err(format!("{text} cannot be held by a MySQL float column"));
                }
                "NaN" | "Infinity" | "-Infinity" => true,
                "-0" if !negative_zero => {
                    return Err("-0 cannot be held by this column (SQLite stores it as 0)".into());
                }
                _ if bits == 32 => text.parse::<f32>().is_ok_and(|f| {
                    f.is_finite() && canonical_number(&f.to_string()).as_deref() == Some(&text)
                }),
                _ => text.parse::<f64>().is_ok_and(|f| {
                    f.is_finite() && canonical_number(&f.to_string()).as_deref() == Some(&text)
                }),
            };
            if !exact {
                return Err(format!(
                    "{text} cannot be held exactly by a {bits}-bit float column"
                ));
            }
            Ok(match (dialect, text.as_str()) {
                (Dialect::Sqlite, "Infinity") => number("9e999"),
                (Dialect::Sqlite, "-Infinity") => number("-9e999"),
                // PostgreSQL reads a float from text: `-0` and the special
                // values survive, which a JSON number would not.
                (Dialect::Postgres, _) => Value::String(text),
                (_, t) => numeric_value(t),
            })
        }
        Class::Numeric => {
            let text = numeric_text(v);
            match (v, text) {
                (Value::String(s), None) => Ok(Value::String(s.clone())),
                (_, Some(text)) => {
                    if !is_exact_in_sqlite(&text) {
                        return Err(format!(
                            "{text} cannot be held exactly by a NUMERIC column (SQLite keeps a 64-bit integer or a \
                             double); use a TEXT column"
                        ));
                    }
                    Ok(number(&text))
                }
                (other, None) => Ok(other.clone()),
            }
        }
        Class::Timestamp { zoned, digits } => match v {
            Value::String(s) if matches!(s.as_str(), "infinity" | "-infinity") => Ok(v.clone()),
            Value::String(s) => {
                let Some(t) = canonical_time(s, zoned) else {
                    return Err(match zoned {
                        true => format!("`{s}` is not a time the column holds exactly"),
                        false => format!(
                            "`{s}` is not a wall-clock time the column holds exactly (a time with a UTC offset \
                             is an instant)"
                        ),
                    });
                };
                // `…HH:MM:SS.ffffff`: the digits past what the column keeps
                // must be zeros.
                let fraction = &t[20..26];
                if fraction[usize::from(digits)..].bytes().any(|d| d != b'0') {
                    return Err(format!(
                        "`{s}` has more digits of a second than the column keeps ({digits})"
                    ));
                }
                if dialect == Dialect::Mysql {
                    // `YYYY-MM-DD HH:MM:SS.ffffff`; an instant in UTC, the
                    // session's time zone.
                    return Ok(Value::String(format!("{} {}", &t[..10], &t[11..26])));
                }
                Ok(Value::String(t))
            }
            other => Err(format!("{} is not a time", describe(other))),
        },
        Class::Date => match v {
            Value::String(s) if NaiveDate::parse_from_str(s, "%Y-%m-%d").is_ok() => Ok(v.clone()),
            Value::String(s) if matches!(s.as_str(), "infinity" | "-infinity") => Ok(v.clone()),
            Value::String(s) => match canonical_time(s, false).or_else(|| canonical_time(s, true)) {
                Some(t) if t[10..].starts_with("T00:00:00.000000") => Ok(Value::String(t[..10].to_owned())),
                Some(_) => Err(format!("`{s}` is a time of day, and the column holds dates")),
                None => Err(format!("`{s}` is not a date")),
            },
            other => Err(format!("{} is not a date", describe(other))),
        },
        Class::Uuid => match v {
            Value::String(s) => uuid::Uuid::parse_str(s)
                .map(|u| Value::String(u.hyphenated().to_string()))
                .map_err(|_| format!("`{s}` is not a UUID")),
            other => Err(format!("{} is not a UUID", describe(other))),
        },
        // Bytes cross the engine as `\x` and lowercase hex, as PostgreSQL
        // gives a `bytea`. Other text would be stored as its own bytes and
        // read back as their hex: another value than the one written.
        Class::Bytes => match v {
            Value::String(s) if is_bytes_text(s) => Ok(v.clone()),
            other => Err(format!(
                "{} is not bytes (`\\x` and lowercase hex digits), and the column holds bytes: text written \
                 into it would be read back as other text",
                describe(other)
            )),
        },
    }
}

/// Whether `s` is bytes as values carry them: `\x`, then lowercase hex
/// digits in pairs.
fn is_bytes_text(s: &str) -> bool {
    s.strip_prefix("\\x").is_some_and(|hex| {
        hex.len().is_multiple_of(2) && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

/// Whether SQLite keeps number text exactly (as a 64-bit integer, or as a
/// double that reads back as the same number).
fn is_exact_in_sqlite(text: &str) -> bool {
    let Some(c) = canonical_number(text) else {
        return false;
    };
    c != "-0"
        && (c.parse::<i64>().is_ok()
            || c.parse::<f64>()
                .is_ok_and(|f| f.is_finite() && canonical_number(&f.to_string()).as_deref() == Some(&c)))
}

/// The first number in `v` (itself, or inside a document) that a double
/// would not give back as the same number: `-0`, beyond 2^53, more digits
/// than a double keeps, or out of its range.
pub fn beyond_double(v: &Value) -> Option<&serde_json::Number> {
    match v {
        Value::Number(n) => {
            let c = canonical_number(n.as_str())?;
            let kept = c.parse::<f64>().is_ok_and(|f| {
                f.is_finite() && canonical_number(&f.to_string()).as_deref() == Some(c.as_str())
            });
            (!kept || c == "-0").then_some(n)
        }
        Value::Array(items) => items.iter().find_map(beyond_double),
        Value::Object(map) => map.values().find_map(beyond_double),
        _ => None,
    }
}

/// Whether `a` and `b` are one value: equal, or documents whose numbers
/// differ only in how they are written (`1e21` and
/// `1000000000000000000000`, `12.50` and `12.5`), as two systems may write
/// them (a REST peer in JavaScript the first, PostgreSQL's `jsonb` the
/// second). Documents are kept as read and written as they are; only
/// comparing them looks through the numbers' form.
pub fn same(a: &Value, b: &Value) -> bool {
    a == b
        || match (a, b) {
            // A document that is a bare number, read as it was written.
            (Value::Object(_), Value::Object(_))
            | (Value::Array(_), Value::Array(_))
            | (Value::Number(_), Value::Number(_)) => {
                canonical_numbers(a.clone()) == canonical_numbers(b.clone())
            }
            _ => false,
        }
}

/// The numbers inside document `v` in canonical form (those too long to
/// write out, and `-0`, as they are); the rest as it is.
fn canonical_numbers(v: Value) -> Value {
    match v {
        Value::Number(ref n) if is_canonical(n.as_str()) => v,
        // A negative zero (`-0.0`) stays a number, and apart from `0`.
        Value::Number(_) => match numeric_text(&v) {
            Some(text) if text != "-0" => numeric_value(&text),
            _ => v,
        },
        Value::Array(items) => Value::Array(items.into_iter().map(canonical_numbers).collect()),
        Value::Object(map) => {
            Value::Object(map.into_iter().map(|(k, v)| (k, canonical_numbers(v))).collect())
        }
        other => other,
    }
}

/// `v` in canonical form, whatever its kind: numbers canonical, the rest
/// as they are.
pub fn canonical(v: Value) -> Value {
    read(Kind::Any, Class::Any, v).expect("any value is of kind any")
}

#[cfg(test)]
mod tests {
    /// The other text of a tie reads as syncd's; no other number changes.
    #[test]
    fn only_the_other_text_of_a_tie_is_read_as_syncds() {
        let read = |v: serde_json::Value| super::as_double_prints(v);
        // (serde_json keeps a number's text: arbitrary_precision.)
        let tie: serde_json::Value = serde_json::from_str(r#"{"x": [-1391674849710224.2]}"#).unwrap();
        assert_eq!(read(tie).to_string(), r#"{"x":[-1391674849710224.3]}"#);
        for kept in [
            "-1391674849710224.3",
            "9007199254740993",
            "0.1",
            "0.10000000000000001",
            "12.50",
            "-0",
            "1e400",
        ] {
            let v: serde_json::Value = serde_json::from_str(kept).unwrap();
            assert_eq!(read(v.clone()), v, "{kept}");
        }
    }

    use super::*;
    use serde_json::json;

    fn num(s: &str) -> Value {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn documents_whose_numbers_differ_only_in_form_are_the_same() {
        let doc = json!({"x": num("1e21"), "y": [num("12.50"), {"z": num("1.0")}], "s": "1e21", "n": null});
        let other = json!({"x": num("1000000000000000000000"), "y": [num("12.5"), {"z": num("1")}], "s": "1e21", "n": null});
        assert!(same(&doc, &other));
        // Kept as read: only the comparison looks through the form.
        assert_eq!(read(Kind::Json, Class::Json, doc.clone()), Ok(doc.clone()));
        for different in [
            json!({"x": num("1e21"), "y": [num("12.51"), {"z": num("1.0")}], "s": "1e21", "n": null}),
            json!({"x": num("1e21"), "y": [num("12.50"), {"z": num("1.0")}], "s": "1000000000000000000000", "n": null}),
            json!([num("12.50")]),
        ] {
            assert!(!same(&doc, &different), "{different}");
        }
        // A document that is a bare number, as read.
        assert!(same(&num("12.50"), &num("12.5")));
        assert!(!same(&num("12.50"), &num("12.51")));
        // A negative zero stays a number, and apart from a string or `0`.
        assert!(!same(&json!([num("-0.0")]), &json!(["-0"])));
        assert!(!same(&json!([num("-0.0")]), &json!([0])));
    }

    #[test]
    fn a_number_beyond_a_double_is_found_wherever_it_is() {
        for kept in [
            "0",
            "12.5",
            "12.50",
            "0.1",
            "-3",
            "9007199254740992",
            "1e21",
            "1e-7",
            "123456789.123456",
        ] {
            assert_eq!(beyond_double(&num(kept)), None, "{kept}");
        }
        for lost in [
            "9007199254740993",
            "12345678901234567890.123456789",
            "0.10000000000000000001",
            "1e400",
            "-0",
        ] {
            assert!(beyond_double(&num(lost)).is_some(), "{lost}");
        }
        let doc = json!({"a": [1, {"b": num("9007199254740993")}], "c": "9007199254740993"});
        assert_eq!(
            beyond_double(&doc).map(|n| n.to_string()),
            Some("9007199254740993".to_owned())
        );
        assert_eq!(beyond_double(&json!({"c": "9007199254740993", "d": [1.5]})), None);
    }

    #[test]
    fn numbers_are_canonical_and_exact() {
        for (given, canonical) in [
            ("12.50", "12.5"),
            ("12.0", "12"),
            ("0012", "12"),
            ("1e2", "100"),
            ("1.5E-3", "0.0015"),
            ("-0.0", "-0"),
            ("0.000", "0"),
            ("12345678901234567890.123456789", "12345678901234567890.123456789"),
            ("0.30000000000000000001", "0.30000000000000000001"),
            ("18446744073709551615", "18446744073709551615"),
            ("1e+300", &format!("1{}", "0".repeat(300))),
        ] {
            assert_eq!(canonical_number(given).as_deref(), Some(canonical), "{given}");
        }
        assert_eq!(canonical_number("abc"), None);
        assert_eq!(canonical_number("1e99999999"), None);
        assert_eq!(canonical_number(""), None);
    }

    #[test]
    fn canonical_text_is_recognised() {
        for s in [
            "0",
            "12",
            "-12",
            "12.5",
            "0.001",
            "-0.5",
            "12345678901234567890.123456789",
        ] {
            assert!(is_canonical(s), "{s}");
            assert_eq!(canonical_number(s).as_deref(), Some(s));
        }
        for s in ["012", "12.50", "12.", "1e2", "-0", "-0.0", "0.0", ".5", "", "-"] {
            assert!(!is_canonical(s), "{s}");
        }
    }

    #[test]
    fn a_change_in_the_last_digit_is_a_change() {
        let a = read(
            Kind::Number,
            Class::postgres("numeric(38,18)"),
            num("12345678901234567890.123456789012345678"),
        );
        let b = read(
            Kind::Number,
            Class::postgres("numeric(38,18)"),
            num("12345678901234567890.123456789012345679"),
        );
        assert_ne!(a, b);
        assert_eq!(
            read(Kind::Number, Class::Any, num("12.50")),
            read(Kind::Number, Class::Any, num("12.5"))
        );
    }

    #[test]
    fn floats_keep_their_bits_and_specials() {
        assert_eq!(float_value(0.1 + 0.2), num("0.30000000000000004"));
        assert_eq!(float_value(f64::INFINITY), json!("Infinity"));
        assert_eq!(float_value(f64::NEG_INFINITY), json!("-Infinity"));
        assert_eq!(float_value(f64::NAN), json!("NaN"));
        assert_eq!(float_value(-0.0), json!("-0"));
        assert_eq!(
            read(Kind::Number, Class::sqlite("TEXT"), json!("-0.00")),
            Ok(num("0"))
        );
        assert_eq!(
            read(Kind::Number, Class::postgres("real"), num("-0")),
            Ok(json!("-0"))
        );
        let pg = Class::postgres("double precision");
        assert_eq!(
            write(Kind::Number, pg, Dialect::Postgres, &num("-0")),
            Ok(json!("-0"))
        );
        let sqlite = Class::sqlite("REAL");
        assert_eq!(
            write(Kind::Number, sqlite, Dialect::Sqlite, &json!("Infinity")),
            Ok(num("9e999"))
        );
        assert!(write(Kind::Number, sqlite, Dialect::Sqlite, &json!("NaN")).is_err());
        assert!(write(Kind::Number, sqlite, Dialect::Sqlite, &num("-0")).is_err());
        assert!(
            write(
                Kind::Number,
                sqlite,
                Dialect::Sqlite,
                &num("0.30000000000000000001")
            )
            .is_err()
        );
    }

    #[test]
    fn a_column_that_cannot_hold_a_value_refuses_it() {
        let cases: &[(&str, Value, &str)] = &[
            ("numeric(10,2)", num("1.005"), "3 digits after the point"),
            ("numeric(4,2)", num("123.4"), "3 digits before the point"),
            ("numeric(4,2)", json!("Infinity"), "cannot be held"),
            ("integer", num("2147483648"), "does not fit a 32-bit"),
            ("bigint", num("9223372036854775808"), "does not fit a 64-bit"),
            ("bigint", num("1.5"), "does not fit"),
            ("real", num("0.1000000001"), "32-bit float"),
            ("text", json!("a\u{0}b"), "NUL"),
            ("boolean", json!("maybe"), "not a boolean"),
        ];
        for (column, value, why) in cases {
            let got = write(Kind::Any, Class::postgres(column), Dialect::Postgres, value);
            assert!(
                got.as_ref().is_err_and(|e| e.contains(why)),
                "{value} into {column}: {got:?}"
            );
        }
        assert!(
            write(
                Kind::Number,
                Class::sqlite("NUMERIC"),
                Dialect::Sqlite,
                &num("12345678901234567890.1")
            )
            .is_err()
        );
        assert_eq!(
            write(
                Kind::Number,
                Class::sqlite("NUMERIC"),
                Dialect::Sqlite,
                &num("12.5")
            ),
            Ok(num("12.5"))
        );
    }

    #[test]
    fn times_dates_and_uuids_are_refused_where_the_column_would_change_them() {
        let zoned = Kind::Timestamp { zoned: true };
        let cases: &[(Class, Value, &str)] = &[
            (Class::Date, json!("2024-01-05T10:30:00Z"), "a time of day"),
            (Class::Date, json!("soon"), "not a date"),
            (
                Class::postgres("timestamp with time zone"),
                json!("2024-01-05T10:30:00.1234567Z"),
                "not a time",
            ),
            (
                Class::postgres("timestamp(3) with time zone"),
                json!("2024-01-05T10:30:00.123456Z"),
                "keeps (3)",
            ),
            // A leap second: PostgreSQL would store the next minute.
            (
                Class::postgres("timestamp with time zone"),
                json!("2016-12-31T23:59:60Z"),
                "not a time",
            ),
            (
                Class::postgres("timestamp without time zone"),
                json!("2024-01-05 10:30:60"),
                "not a",
            ),
            (
                Class::postgres("timestamp without time zone"),
                json!("2024-01-05T10:30:00+02:00"),
                "wall-clock",
            ),
            (Class::Uuid, json!("not-a-uuid"), "not a UUID"),
            (
                Class::sqlite(""),
                num("0.30000000000000000001"),
                "untyped SQLite column",
            ),
            (Class::sqlite(""), json!({"a": 1}), "declare it JSON"),
            (Class::postgres("numeric(5,-2)"), num("12345"), "after the point"),
        ];
        for (class, value, why) in cases {
            let dialect = if *class == Class::sqlite("") {
                Dialect::Sqlite
            } else {
                Dialect::Postgres
            };
            let got = write(zoned, *class, dialect, value);
            assert!(
                got.as_ref().is_err_and(|e| e.contains(why)),
                "{value} into {class:?}: {got:?}"
            );
        }
        assert_eq!(
            write(
                zoned,
                Class::Date,
                Dialect::Postgres,
                &json!("2024-01-05T00:00:00Z")
            ),
            Ok(json!("2024-01-05"))
        );
        assert_eq!(
            write(
                zoned,
                Class::postgres("timestamp(3) with time zone"),
                Dialect::Postgres,
                &json!("2024-01-05T10:30:00.123Z")
            ),
            Ok(json!("2024-01-05T10:30:00.123000Z"))
        );
        assert_eq!(
            write(
                Kind::Number,
                Class::postgres("numeric(5,-2)"),
                Dialect::Postgres,
                &num("12300")
            ),
            Ok(num("12300"))
        );
        // A time with more digits than a microsecond is kept as given, not cut.
        assert_eq!(
            read(zoned, Class::Text, json!("2024-01-05T10:30:00.1234567Z")),
            Ok(json!("2024-01-05T10:30:00.1234567Z"))
        );
    }

    #[test]
    fn a_number_too_long_to_write_out_is_an_error_not_a_crash() {
        for text in ["1e200000", "1e-9223372036854775808", "1e9223372036854775807"] {
            let v = num(text);
            assert!(read(Kind::Number, Class::Any, v.clone()).is_err(), "{text}");
            assert_eq!(read(Kind::Any, Class::Any, v.clone()), Ok(v.clone()), "{text}");
            assert!(write(Kind::Number, Class::postgres("numeric"), Dialect::Postgres, &v).is_err());
        }
        assert_eq!(canonical_number("1e-9223372036854775808"), None);
    }

    #[test]
    fn a_floats_negative_zero_survives_a_text_column() {
        let kind = Kind::agree(Class::postgres("double precision"), Class::sqlite("TEXT"));
        assert_eq!(kind, Kind::Float);
        let written = write(kind, Class::sqlite("TEXT"), Dialect::Sqlite, &json!("-0")).unwrap();
        assert_eq!(read(kind, Class::sqlite("TEXT"), written), Ok(json!("-0")));
        // A decimal written `-0.00` is zero.
        assert_eq!(
            read(Kind::Number, Class::sqlite("TEXT"), json!("-0.00")),
            Ok(num("0"))
        );
    }

    #[test]
    fn text_carries_numbers_times_and_uuids_exactly() {
        let kind = Kind::agree(Class::postgres("numeric(38,18)"), Class::sqlite("TEXT"));
        assert_eq!(kind, Kind::Number);
        let written = write(kind, Class::sqlite("TEXT"), Dialect::Sqlite, &num("10.25")).unwrap();
        assert_eq!(written, json!("10.25"));
        assert_eq!(read(kind, Class::sqlite("TEXT"), written), Ok(num("10.25")));
        assert!(
            read(kind, Class::sqlite("TEXT"), json!("ten"))
                .unwrap_err()
                .contains("`ten` is not a number")
        );

        let zoned = Kind::Timestamp { zoned: true };
        assert_eq!(
            read(
                zoned,
                Class::postgres("timestamp with time zone"),
                json!("2026-03-01T11:00:00.5+01:00")
            ),
            Ok(json!("2026-03-01T10:00:00.500000Z"))
        );
        assert_eq!(
            read(
                Kind::Uuid,
                Class::Text,
                json!("6F9619FF-8B86-D011-B42D-00C04FC964FF")
            ),
            Ok(json!("6f9619ff-8b86-d011-b42d-00c04fc964ff"))
        );
        assert_eq!(
            read(Kind::Boolean, Class::sqlite("BOOLEAN"), num("1")),
            Ok(json!(true))
        );
        assert_eq!(
            read(Kind::Date, Class::Text, json!("2024-1-5")),
            Ok(json!("2024-01-05"))
        );
        assert_eq!(
            read(Kind::Json, Class::Text, json!("{\"a\":1.50}")),
            Ok(json!({"a": num("1.50")}))
        );
        let doc = json!({"a": num("1.50")});
        assert_eq!(
            write(Kind::Json, Class::sqlite("JSON"), Dialect::Sqlite, &doc),
            Ok(json!("{\"a\":1.50}"))
        );
    }

    #[test]
    fn a_scan_cursor_moves_back_to_the_bound_in_its_own_layout() {
        let bound = DateTime::parse_from_rfc3339("2026-12-07T09:25:05.150131Z")
            .unwrap()
            .with_timezone(&Utc);
        let back = |at: &str| no_later_than(&json!(at), bound).map(|v| v.as_str().unwrap().to_owned());
        assert_eq!(
            back("2026-12-07T09:30:00.000001Z").as_deref(),
            Some("2026-12-07T09:25:05.150131Z")
        );
        assert_eq!(
            back("2026-12-07T09:30:00.5+00:00").as_deref(),
            Some("2026-12-07T09:25:05.1+00:00"),
            "cut to the digits it had, never rounded up"
        );
        assert_eq!(
            back("2026-12-07 09:30:00").as_deref(),
            Some("2026-12-07 09:25:05")
        );
        assert_eq!(
            back("2026-12-07 11:30:00.123456+02").as_deref(),
            Some("2026-12-07 11:25:05.150131+02"),
            "in its own offset"
        );
        assert_eq!(
            back("2026-12-07T11:00:00+02:00"),
            None,
            "09:00 UTC is before the bound"
        );
        assert_eq!(back("2026-12-07T09:25:05.150131Z"), None);
        assert_eq!(back("2026-12-07T09:25:05.150130Z"), None);
        for not_a_time in ["12345", "v7", "2026-12-7", "2026-12-07T9:30:00Z"] {
            assert_eq!(back(not_a_time), None, "{not_a_time}");
        }
        // A day: back to two days before the bound's, so that the bound's
        // whole day and the one before are read again.
        assert_eq!(back("9999-12-31").as_deref(), Some("2026-12-05"));
        assert_eq!(back("2026-12-07").as_deref(), Some("2026-12-05"));
        assert_eq!(back("2026-12-06").as_deref(), Some("2026-12-05"));
        assert_eq!(back("2026-12-05"), None);
        // Numbers stay numbers in their own unit: seconds, milliseconds,
        // microseconds, nanoseconds; a small one (a version) is no later.
        assert_eq!(
            no_later_than(&json!(1_800_000_000), bound),
            Some(json!(bound.timestamp()))
        );
        assert_eq!(no_later_than(&json!(1_700_000_000), bound), None);
        assert_eq!(
            no_later_than(&json!(1_800_000_000_000_i64), bound),
            Some(json!(1_796_635_505_150_i64))
        );
        assert_eq!(
            no_later_than(&json!(1_800_000_000_000_000_i64), bound),
            Some(json!(1_796_635_505_150_131_i64))
        );
        assert_eq!(
            no_later_than(&json!(1_800_000_000_000_000_000_i64), bound),
            Some(json!(1_796_635_505_150_131_000_i64))
        );
        assert_eq!(no_later_than(&json!(1_700_000_000_000_i64), bound), None);
        assert_eq!(no_later_than(&json!(7), bound), None);
    }

    #[test]
    fn an_integer_change_time_is_read_in_the_unit_that_places_it_before_year_10000() {
        let t = DateTime::parse_from_rfc3339("2026-12-07T09:25:05.150131Z")
            .unwrap()
            .with_timezone(&Utc);
        for units in [1, 1_000, 1_000_000, 1_000_000_000] {
            let n = epoch_of(t, units);
            assert_eq!(epoch_units(n), Some(units), "{n}");
            let back = epoch_time(n).unwrap();
            assert_eq!(epoch_of(back, units), n, "{n}");
            assert!(t - back < chrono::Duration::seconds(1), "{n}: {back}");
        }
        assert_eq!(epoch_units(LAST_SECOND), Some(1));
        assert_eq!(epoch_units(LAST_SECOND + 1), Some(1_000));
        assert_eq!(epoch_units(-1), Some(1));
        assert_eq!(epoch_time(-1500).unwrap().timestamp(), -1500);
        assert_eq!(epoch_units(i64::MAX), Some(1_000_000_000));
        assert!(epoch_time(i64::MIN).is_some());
        // A time written as digits is no count of any unit.
        for digits in [20_260_101_100_000_i64, 20_260_101_100_000_123] {
            assert_eq!(epoch_units(digits), None, "{digits}");
            assert_eq!(epoch_time(digits), None, "{digits}");
        }
        assert_eq!(no_later_than(&json!(20_260_101_100_000_i64), t), None);
    }

    #[test]
    fn a_stamp_is_written_as_the_table_writes_its_times() {
        let t = DateTime::parse_from_rfc3339("2026-12-07T09:25:05.150131Z")
            .unwrap()
            .with_timezone(&Utc);
        let like = |example: &str| time_like(example, t);
        assert_eq!(
            like("2026-12-07 10:00:00").as_deref(),
            Some("2026-12-07 09:25:05.150131")
        );
        assert_eq!(
            like("2026-01-01T00:00:00.5Z").as_deref(),
            Some("2026-12-07T09:25:05.150131Z")
        );
        assert_eq!(
            like("2026-01-01 00:00:00+02:00").as_deref(),
            Some("2026-12-07 11:25:05.150131+02:00")
        );
        assert_eq!(like("yesterday"), None);
        assert_eq!(like("2026-01-01"), None);
        // Ordered with the table's own times of the same second.
        assert!(like("x").is_none() && "2026-12-07 09:25:05" < like("2026-12-07 09:25:05").unwrap().as_str());
    }

    #[test]
    fn a_sqlite_json_column_takes_a_number_document_only_if_it_keeps_it() {
        let w = |v: Value| write(Kind::Json, Class::sqlite("JSON"), Dialect::Sqlite, &v);
        assert_eq!(w(num("42")).unwrap(), json!("42"));
        assert_eq!(w(num("1.5")).unwrap(), json!("1.5"));
        for lost in ["12345678901234567890", "0.1000000000000000000001"] {
            assert!(
                w(num(lost)).unwrap_err().contains("would store as a double"),
                "{lost}"
            );
        }
        assert_eq!(
            w(json!({"a": 12345678901234567890u64})).unwrap(),
            json!(r#"{"a":12345678901234567890}"#),
            "inside a document, text"
        );
        assert_eq!(
            w(json!("12")).unwrap(),
            json!(r#""12""#),
            "a string stays quoted text"
        );
    }

    #[test]
    fn a_day_read_where_the_field_is_a_time_is_its_midnight() {
        let zoned = read(Kind::Timestamp { zoned: true }, Class::Date, json!("2024-01-05")).unwrap();
        assert_eq!(
            zoned,
            read(
                Kind::Timestamp { zoned: true },
                Class::Text,
                json!("2024-01-05T00:00:00Z")
            )
            .unwrap()
        );
        let wall = read(Kind::Timestamp { zoned: false }, Class::Date, json!("2024-01-05")).unwrap();
        assert_eq!(
            wall,
            read(
                Kind::Timestamp { zoned: false },
                Class::Text,
                json!("2024-01-05 00:00:00")
            )
            .unwrap()
        );
    }

    #[test]
    fn text_read_as_a_number_drops_nothing_it_says() {
        let r = |t: &str| read(Kind::Number, Class::Text, json!(t));
        assert_eq!(r("12.50").unwrap(), num("12.5"), "the same number");
        assert_eq!(r("-0.5").unwrap(), num("-0.5"));
        assert_eq!(r("0").unwrap(), num("0"));
        for said in ["01234", "-007", "+7", " 42 ", "1e3"] {
            assert!(r(said).unwrap_err().contains("would not give back"), "{said}");
        }
        // Text from an untyped column or an API field likewise (a zip
        // code `01234` is no 1234); a number it gives as text is read.
        for said in ["01234", " 42 ", "1e3"] {
            let e = read(Kind::Number, Class::Any, json!(said)).unwrap_err();
            assert!(e.contains("would not give back"), "{said}");
        }
        assert_eq!(
            read(Kind::Number, Class::Any, json!("12.50")).unwrap(),
            num("12.5")
        );
        // A string of bits is no number at all.
        for bits in ["00000101", "10000000", "1"] {
            let e = read(Kind::Number, Class::postgres("bit(8)"), json!(bits)).unwrap_err();
            assert!(e.contains("a string of bits"), "{bits}");
        }
        assert_eq!(
            read(Kind::Text, Class::postgres("bit varying(4)"), json!("0101")).unwrap(),
            json!("0101")
        );
    }

    #[test]
    fn a_bytes_column_takes_only_bytes() {
        for class in [Class::postgres("bytea"), Class::mysql("varbinary(16)")] {
            let w = |v: Value| write(Kind::Bytes, class, Dialect::Postgres, &v);
            assert_eq!(w(json!("\\x00ff41")).unwrap(), json!("\\x00ff41"));
            assert_eq!(w(json!("\\x")).unwrap(), json!("\\x"), "no bytes at all");
            // Stored as their own bytes, these would read back as `\x68…`.
            for text in ["hello", "\\x0", "\\xzz", "\\x4A", "x41", ""] {
                let why = w(json!(text)).unwrap_err();
                assert!(why.contains("is not bytes"), "{text}: {why}");
            }
            assert!(w(json!(5)).is_err());
        }
    }

    #[test]
    fn mysql_columns_hold_what_they_give_back() {
        let my = |t: &str, v: Value| write(Class::mysql(t).kind(), Class::mysql(t), Dialect::Mysql, &v);
        assert_eq!(Class::mysql("char(10)"), Class::PaddedText);
        assert_eq!(Class::postgres("character(10)"), Class::PaddedText);
        assert_eq!(Class::postgres("character varying(10)"), Class::Text);
        assert_eq!(
            read(Kind::Text, Class::postgres("character(5)"), json!("ab   ")),
            Ok(json!("ab"))
        );
        assert!(
            my("char(10)", json!("abc "))
                .unwrap_err()
                .contains("ends with a space")
        );
        assert_eq!(my("char(10)", json!("abc")).unwrap(), json!("abc"));
        assert_eq!(my("varchar(10)", json!("abc ")).unwrap(), json!("abc "));
        assert_eq!(Class::mysql("tinyint(1)"), Class::Boolean);
        assert_eq!(Class::mysql("tinyint(1) unsigned"), Class::Unsigned { bits: 8 });
        assert_eq!(Class::mysql("bigint(20) unsigned"), Class::Unsigned { bits: 64 });
        assert_eq!(
            my("bigint(20) unsigned", num("18446744073709551615")).unwrap(),
            num("18446744073709551615")
        );
        assert!(my("bigint(20) unsigned", num("18446744073709551616")).is_err());
        assert!(my("bigint(20) unsigned", num("-1")).is_err());
        assert!(my("decimal(65,30)", num("0.1234567890123456789012345678901")).is_err());
        assert_eq!(
            my("datetime(6)", json!("2026-03-04T05:06:07.123456Z")).unwrap(),
            json!("2026-03-04 05:06:07.123456")
        );
        assert!(
            my("datetime", json!("2026-03-04T05:06:07.5Z")).is_err(),
            "DATETIME keeps no fraction"
        );
        assert!(my("double", json!("Infinity")).is_err());
        assert!(my("double", json!("NaN")).is_err());
        assert_eq!(my("json", json!({"a": [1, 2]})).unwrap(), json!(r#"{"a":[1,2]}"#));
    }
}
