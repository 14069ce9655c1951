//! The configuration's JSON, read by hand: [`Json`] is the document with every object's keys in
//! order (duplicates kept, where serde_json's `Value` would keep only the last), and [`Obj`] reads
//! a struct's fields by name with the defaults, the refusals and the error wording a derived
//! `Deserialize` has (`deny_unknown_fields`, `missing field`, `invalid type: ..., expected u32`).
//! Each configuration type has a short reader over these ([`crate::config`]); derived
//! deserializers would each instantiate serde_json's whole struct machinery.
//!
//! Errors are [`ConfigError`]s whose path is the field's (`services[0].routing.mode`). The text is
//! read by serde_json into the tree ([`Json::parse`]).

use std::collections::BTreeMap;

use serde::de::{self, Unexpected};

use crate::config::ConfigError;

/// A JSON document. Numbers keep serde_json's three kinds: `U` (non-negative integer), `I`
/// (negative integer), `F` (anything else, including integers beyond 64 bits).
#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    U(u64),
    I(i64),
    F(f64),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

impl Json {
    /// A whole document, as `serde_json::from_slice` reads one (trailing characters refused).
    pub fn parse(bytes: &[u8]) -> Result<Json, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    fn unexpected(&self) -> Unexpected<'_> {
        match self {
            Json::Null => Unexpected::Unit,
            Json::Bool(b) => Unexpected::Bool(*b),
            Json::U(n) => Unexpected::Unsigned(*n),
            Json::I(n) => Unexpected::Signed(*n),
            Json::F(f) => Unexpected::Float(*f),
            Json::Str(s) => Unexpected::Str(s),
            Json::Arr(_) => Unexpected::Seq,
            Json::Obj(_) => Unexpected::Map,
        }
    }
}

/// A document read by serde_json: every value, every key of an object in order.
mod serde_tree {
    use super::Json;
    use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
    use std::fmt;

    impl<'de> Deserialize<'de> for Json {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Json, D::Error> {
            d.deserialize_any(JsonVisitor)
        }
    }

    struct JsonVisitor;

    impl<'de> Visitor<'de> for JsonVisitor {
        type Value = Json;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON value")
        }
        fn visit_bool<E>(self, b: bool) -> Result<Json, E> {
            Ok(Json::Bool(b))
        }
        fn visit_i64<E>(self, n: i64) -> Result<Json, E> {
            Ok(Json::I(n))
        }
        fn visit_u64<E>(self, n: u64) -> Result<Json, E> {
            Ok(Json::U(n))
        }
        fn visit_f64<E>(self, n: f64) -> Result<Json, E> {
            Ok(Json::F(n))
        }
        fn visit_str<E>(self, s: &str) -> Result<Json, E> {
            Ok(Json::Str(s.to_owned()))
        }
        fn visit_unit<E>(self) -> Result<Json, E> {
            Ok(Json::Null)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Json, A::Error> {
            let mut items = Vec::new();
            while let Some(x) = a.next_element()? {
                items.push(x);
            }
            Ok(Json::Arr(items))
        }
        fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Json, A::Error> {
            let mut entries = Vec::new();
            while let Some(e) = a.next_entry()? {
                entries.push(e);
            }
            Ok(Json::Obj(entries))
        }
    }
}

/// What a reader returns.
pub type R<T> = Result<T, ConfigError>;

/// A reader: the value and its path. Plain function pointers, so that each helper below exists
/// once per result type rather than once per call site.
pub type Read<T> = fn(&Json, &str) -> R<T>;

fn fail(path: &str, message: String) -> ConfigError {
    ConfigError { path: path.to_owned(), message }
}

/// `p.key` (`key` alone at the top).
pub fn key_path(p: &str, key: &str) -> String {
    if p.is_empty() {
        key.to_owned()
    } else {
        format!("{p}.{key}")
    }
}

fn idx_path(p: &str, i: usize) -> String {
    format!("{p}[{i}]")
}

/// `invalid type: string "two", expected usize` (serde_json's wording: `null`, `floating point`).
pub fn invalid_type(v: &Json, p: &str, exp: &str) -> ConfigError {
    fail(p, <serde_json::Error as de::Error>::invalid_type(v.unexpected(), &exp).to_string())
}

fn invalid_value(unexp: Unexpected<'_>, p: &str, exp: &str) -> ConfigError {
    fail(p, <serde_json::Error as de::Error>::invalid_value(unexp, &exp).to_string())
}

fn invalid_length(len: usize, p: &str, exp: &str) -> ConfigError {
    fail(p, <serde_json::Error as de::Error>::invalid_length(len, &exp).to_string())
}

/// serde's list of what was expected: "`a`", "`a` or `b`", "one of `a`, `b`, `c`".
fn one_of(names: &[&str]) -> String {
    match names {
        [a] => format!("`{a}`"),
        [a, b] => format!("`{a}` or `{b}`"),
        _ => {
            let quoted: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
            format!("one of {}", quoted.join(", "))
        }
    }
}

/// An integer type and serde's name for it.
pub trait Int: TryFrom<u64> + TryFrom<i64> {
    const NAME: &'static str;
}

macro_rules! int_names {
    ($($t:ty),*) => { $(impl Int for $t { const NAME: &'static str = stringify!($t); })* };
}
int_names!(u8, u16, u32, u64, usize, i32, i64);

/// An integer in `T`'s range: a fraction or a string is an invalid type, an integer out of range
/// an invalid value.
pub fn int<T: Int>(v: &Json, p: &str) -> R<T> {
    let unexp = match *v {
        Json::U(n) => match T::try_from(n) {
            Ok(x) => return Ok(x),
            Err(_) => Unexpected::Unsigned(n),
        },
        Json::I(n) => match T::try_from(n) {
            Ok(x) => return Ok(x),
            Err(_) => Unexpected::Signed(n),
        },
        _ => return Err(invalid_type(v, p, T::NAME)),
    };
    Err(invalid_value(unexp, p, T::NAME))
}

/// Any number, as `f64`.
pub fn f64_(v: &Json, p: &str) -> R<f64> {
    match *v {
        Json::U(n) => Ok(n as f64),
        Json::I(n) => Ok(n as f64),
        Json::F(f) => Ok(f),
        _ => Err(invalid_type(v, p, "f64")),
    }
}

/// Any number, as `f32` (integers converted directly, as serde does).
pub fn f32_(v: &Json, p: &str) -> R<f32> {
    match *v {
        Json::U(n) => Ok(n as f32),
        Json::I(n) => Ok(n as f32),
        Json::F(f) => Ok(f as f32),
        _ => Err(invalid_type(v, p, "f32")),
    }
}

pub fn boolean(v: &Json, p: &str) -> R<bool> {
    match v {
        Json::Bool(b) => Ok(*b),
        _ => Err(invalid_type(v, p, "a boolean")),
    }
}

pub fn string(v: &Json, p: &str) -> R<String> {
    match v {
        Json::Str(s) => Ok(s.clone()),
        _ => Err(invalid_type(v, p, "a string")),
    }
}

/// `null` as `None`, anything else through `read`.
pub fn nullable<T>(v: &Json, p: &str, read: Read<T>) -> R<Option<T>> {
    match v {
        Json::Null => Ok(None),
        _ => read(v, p).map(Some),
    }
}

/// An array, each element through `read` (its path `p[i]`).
pub fn list<T>(v: &Json, p: &str, read: Read<T>) -> R<Vec<T>> {
    let Json::Arr(items) = v else {
        return Err(invalid_type(v, p, "a sequence"));
    };
    items.iter().enumerate().map(|(i, x)| read(x, &idx_path(p, i))).collect()
}

/// An object as a map, each value through `read` (its path `p.key`); a repeated key keeps the
/// last value.
pub fn map<T>(v: &Json, p: &str, read: Read<T>) -> R<BTreeMap<String, T>> {
    let Json::Obj(entries) = v else {
        return Err(invalid_type(v, p, "a map"));
    };
    let mut out = BTreeMap::new();
    for (k, x) in entries {
        out.insert(k.clone(), read(x, &key_path(p, k))?);
    }
    Ok(out)
}

/// A pair `[a, b]`, each element through `read`.
pub fn pair<T>(v: &Json, p: &str, read: Read<T>) -> R<(T, T)> {
    const EXP: &str = "a tuple of size 2";
    let Json::Arr(items) = v else {
        return Err(invalid_type(v, p, EXP));
    };
    let mut it = items.iter().enumerate().map(|(i, x)| read(x, &idx_path(p, i)));
    let a = it.next().ok_or_else(|| invalid_length(0, p, EXP))??;
    let b = it.next().ok_or_else(|| invalid_length(1, p, EXP))??;
    if items.len() > 2 {
        return Err(fail(&idx_path(p, 2), "trailing characters".into()));
    }
    Ok((a, b))
}

/// A unit enum variant by name: `"name"`, or serde's object form `{"name": null}`.
pub fn variant<T: Copy>(v: &Json, p: &str, choices: &[(&'static str, T)]) -> R<T> {
    let find = |name: &str, at: &str| match choices.iter().find(|(n, _)| *n == name) {
        Some((_, t)) => Ok(*t),
        None => {
            let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
            Err(fail(at, format!("unknown variant `{name}`, expected {}", one_of(&names))))
        }
    };
    match v {
        Json::Str(s) => find(s, p),
        Json::Obj(entries) => match entries.as_slice() {
            [] => Err(fail(p, "expected value".into())),
            [(k, x), rest @ ..] => {
                let at = key_path(p, k);
                let t = find(k, &at)?;
                if *x != Json::Null {
                    return Err(invalid_type(x, &at, "unit"));
                }
                if !rest.is_empty() {
                    return Err(fail(&at, "expected value".into()));
                }
                Ok(t)
            }
        },
        // serde_json reports these where the value starts: inside an array, at its first element
        Json::Arr(_) => Err(fail(&idx_path(p, 0), "expected value".into())),
        _ => Err(fail(p, "expected value".into())),
    }
}

enum Body<'a> {
    Map(&'a [(String, Json)]),
    /// serde's other form of a struct: its fields in order, as an array.
    Seq(&'a [Json]),
}

/// A struct being read: fields are taken by name (`req`, `or`, `opt`) in their declared order,
/// and [`Obj::end`] refuses the keys none of them took. As with a derived `Deserialize`, the
/// error reported is the first one in the document: a bad value, an unknown or a repeated key,
/// whichever comes first, then a missing field.
pub struct Obj<'a> {
    p: &'a str,
    name: &'static str,
    fields: usize,
    body: Body<'a>,
    taken: Vec<bool>,
    names: Vec<&'static str>,
    /// The first error so far and where it is (the key's or element's index).
    first: Option<(usize, ConfigError)>,
}

impl<'a> Obj<'a> {
    /// The struct `name` (of `fields` fields) at path `p`.
    pub fn new(v: &'a Json, p: &'a str, name: &'static str, fields: usize) -> R<Obj<'a>> {
        let (body, taken) = match v {
            Json::Obj(entries) => (Body::Map(entries), vec![false; entries.len()]),
            Json::Arr(items) => (Body::Seq(items), Vec::new()),
            _ => return Err(invalid_type(v, p, &format!("struct {name}"))),
        };
        Ok(Obj { p, name, fields, body, taken, names: Vec::new(), first: None })
    }

    fn note(&mut self, at: usize, e: ConfigError) {
        if self.first.as_ref().is_none_or(|(i, _)| at < *i) {
            self.first = Some((at, e));
        }
    }

    /// Where `key` is (its index), its value and its path; `None` when absent. A repeated key is
    /// noted.
    fn find(&mut self, key: &'static str) -> Option<(usize, &'a Json, String)> {
        let index = self.names.len();
        self.names.push(key);
        match self.body {
            Body::Map(entries) => {
                let mut found = None;
                for (i, ((k, v), taken)) in entries.iter().zip(self.taken.iter_mut()).enumerate() {
                    if k == key {
                        *taken = true;
                        match found {
                            None => found = Some((i, v)),
                            Some(_) => {
                                let e = fail(&key_path(self.p, key), format!("duplicate field `{key}`"));
                                self.note(i, e);
                                break;
                            }
                        }
                    }
                }
                found.map(|(i, v)| (i, v, key_path(self.p, key)))
            }
            Body::Seq(items) => items.get(index).map(|v| (index, v, idx_path(self.p, index))),
        }
    }

    /// Reads `key` through `read`: `None` when absent, `Some(None)` when it failed (noted).
    fn take<T>(&mut self, key: &'static str, read: Read<T>) -> Option<Option<T>> {
        let (at, v, p) = self.find(key)?;
        match read(v, &p) {
            Ok(x) => Some(Some(x)),
            Err(e) => {
                self.note(at, e);
                Some(None)
            }
        }
    }

    /// Notes that the required `key` is absent.
    fn missing(&mut self, key: &str) {
        let (at, e) = match self.body {
            Body::Map(entries) => (entries.len(), fail(self.p, format!("missing field `{key}`"))),
            Body::Seq(_) => {
                let at = self.names.len().saturating_sub(1);
                let s = if self.fields == 1 { "" } else { "s" };
                let exp = format!("struct {} with {} element{s}", self.name, self.fields);
                (at, invalid_length(at, self.p, &exp))
            }
        };
        self.note(at, e);
    }

    /// A required field (`T::default()` stands in when it is absent or bad: [`Obj::end`] fails).
    pub fn req<T: Default>(&mut self, key: &'static str, read: Read<T>) -> T {
        match self.take(key, read) {
            Some(x) => x.unwrap_or_default(),
            None => {
                self.missing(key);
                T::default()
            }
        }
    }

    /// A field with a default.
    pub fn or<T>(&mut self, key: &'static str, read: Read<T>, default: T) -> T {
        self.take(key, read).flatten().unwrap_or(default)
    }

    /// An `Option` field without a default: absent (from an object) or `null` is `None`.
    pub fn opt<T>(&mut self, key: &'static str, read: Read<T>) -> Option<T> {
        let Some((at, v, p)) = self.find(key) else {
            if let Body::Seq(_) = self.body {
                self.missing(key);
            }
            return None;
        };
        match nullable(v, &p, read) {
            Ok(x) => x,
            Err(e) => {
                self.note(at, e);
                None
            }
        }
    }

    /// The first error, if any: a bad value, an unknown or repeated key, a missing
    /// field, array elements past the last field.
    pub fn end(mut self) -> R<()> {
        match self.body {
            Body::Map(entries) => {
                if let Some((i, ((k, _), _))) = entries.iter().zip(&self.taken).enumerate().find(|(_, (_, t))| !**t) {
                    let e =
                        fail(&key_path(self.p, k), format!("unknown field `{k}`, expected {}", one_of(&self.names)));
                    self.note(i, e);
                }
            }
            Body::Seq(items) => {
                let n = self.names.len();
                if items.len() > n {
                    self.note(n, fail(&idx_path(self.p, n), "trailing characters".into()));
                }
            }
        }
        match self.first {
            Some((_, e)) => Err(e),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(text: &str) -> Json {
        serde_json::from_str(text).unwrap()
    }

    #[derive(Debug, PartialEq)]
    struct Pt {
        x: u32,
        y: i64,
        tag: Option<String>,
    }

    fn read_pt(v: &Json, p: &str) -> R<Pt> {
        let mut o = Obj::new(v, p, "Pt", 3)?;
        let pt = Pt { x: o.req("x", int), y: o.or("y", int, 7), tag: o.opt("tag", string) };
        o.end().map(|()| pt)
    }

    fn pt(text: &str) -> Result<Pt, (String, String)> {
        read_pt(&doc(text), "pt").map_err(|e| (e.path, e.message))
    }

    fn bad(text: &str) -> (String, String) {
        pt(text).unwrap_err()
    }

    #[test]
    fn fields_defaults_and_null() {
        assert_eq!(pt(r#"{"x":1}"#), Ok(Pt { x: 1, y: 7, tag: None }));
        assert_eq!(pt(r#"{"tag":null,"y":-2,"x":3}"#), Ok(Pt { x: 3, y: -2, tag: None }));
        assert_eq!(pt(r#"{"x":1,"tag":"t"}"#).unwrap().tag.as_deref(), Some("t"));
        // the array form of a struct: fields in order, defaults for the missing tail except an Option
        assert_eq!(pt(r#"[1, 2, "t"]"#), Ok(Pt { x: 1, y: 2, tag: Some("t".into()) }));
        assert_eq!(bad("[1]"), ("pt".into(), "invalid length 2, expected struct Pt with 3 elements".into()));
        assert_eq!(bad(r#"[1, 2, null, 4]"#), ("pt[3]".into(), "trailing characters".into()));
        assert_eq!(bad("3"), ("pt".into(), "invalid type: integer `3`, expected struct Pt".into()));
    }

    #[test]
    fn numbers_as_serde_reads_them() {
        assert_eq!(bad(r#"{"x":-1}"#).1, "invalid value: integer `-1`, expected u32");
        assert_eq!(bad(r#"{"x":4294967296}"#).1, "invalid value: integer `4294967296`, expected u32");
        assert_eq!(bad(r#"{"x":1.0}"#).1, "invalid type: floating point `1.0`, expected u32");
        assert_eq!(bad(r#"{"x":null}"#).1, "invalid type: null, expected u32");
        assert_eq!(
            bad(r#"{"x":1,"y":9223372036854775808}"#).1,
            "invalid value: integer `9223372036854775808`, expected i64"
        );
        assert_eq!(f64_(&doc("3"), ""), Ok(3.0));
        assert_eq!(f32_(&doc("-2"), ""), Ok(-2.0));
        assert_eq!(int::<u8>(&doc("256"), "s").unwrap_err().message, "invalid value: integer `256`, expected u8");
    }

    /// The first error in the document wins, as with a derived `Deserialize`; a missing field comes
    /// last.
    #[test]
    fn first_error_in_document_order() {
        assert_eq!(bad(r#"{"y":"a","x":1}"#), ("pt.y".into(), "invalid type: string \"a\", expected i64".into()));
        assert_eq!(
            bad(r#"{"z":1,"x":"a"}"#),
            ("pt.z".into(), "unknown field `z`, expected one of `x`, `y`, `tag`".into())
        );
        assert_eq!(bad(r#"{"x":"a","z":1}"#).0, "pt.x");
        assert_eq!(bad(r#"{"z":1}"#).0, "pt.z");
        assert_eq!(bad(r#"{"y":1}"#), ("pt".into(), "missing field `x`".into()));
        assert_eq!(bad(r#"{"x":1,"x":2}"#), ("pt.x".into(), "duplicate field `x`".into()));
        assert_eq!(bad(r#"{"x":"a","x":2}"#).1, "invalid type: string \"a\", expected u32");
    }

    #[test]
    fn variants_lists_and_maps() {
        const AB: &[(&str, u8)] = &[("a", 1), ("b", 2)];
        assert_eq!(variant(&doc(r#""b""#), "v", AB), Ok(2));
        assert_eq!(variant(&doc(r#"{"a":null}"#), "v", AB), Ok(1));
        let e = variant(&doc(r#""c""#), "v", AB).unwrap_err();
        assert_eq!((e.path.as_str(), e.message.as_str()), ("v", "unknown variant `c`, expected `a` or `b`"));
        let abc: &[(&str, u8)] = &[("a", 1), ("b", 2), ("c", 3)];
        assert!(variant(&doc(r#""d""#), "v", abc).unwrap_err().message.ends_with("expected one of `a`, `b`, `c`"));
        assert_eq!(variant(&doc("1"), "v", AB).unwrap_err().message, "expected value");
        assert_eq!(variant(&doc(r#"{"a":1}"#), "v", AB).unwrap_err().path, "v.a");
        let e = list(&doc(r#"["a", 2]"#), "l", string).unwrap_err();
        assert_eq!((e.path.as_str(), e.message.as_str()), ("l[1]", "invalid type: integer `2`, expected a string"));
        let m = map(&doc(r#"{"k":"1","k":"2"}"#), "m", string).unwrap();
        assert_eq!(m.get("k").map(String::as_str), Some("2"), "a repeated map key keeps the last value");
        assert_eq!(pair(&doc("[1, 2]"), "p", int::<u16>), Ok((1, 2)));
        assert_eq!(
            pair(&doc("[1]"), "p", int::<u16>).unwrap_err().message,
            "invalid length 1, expected a tuple of size 2"
        );
        assert_eq!(pair(&doc("[1, 2, 3]"), "p", int::<u16>).unwrap_err().path, "p[2]");
    }
}
