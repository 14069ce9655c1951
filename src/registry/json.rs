//! The pieces every adapter reads its reply with, straight from the body: no `serde_json::Value`
//! per record. Records are typed structs of the fields an adapter reads ([`Fields`]), each field a
//! [`Loose`] scalar (strings borrowed from the body unless they hold an escape) or a nested struct;
//! every other field is skipped without being kept. Metadata keeps only the keys that are read
//! ([`Meta`]). Every value goes to a [`Sink`] through one visitor, so the module holds one copy of
//! serde_json's parser however many record types there are.
//!
//! Nothing here refuses a value of the wrong type: it is recorded as it is ([`Loose`], [`Obj::Not`],
//! [`List::Other`]) and the adapter decides afterwards, so a malformed record is skipped and counted
//! as before and only a body that is not JSON fails. Skipped values still go through serde_json's
//! `deserialize_any`, so its checks (UTF-8, escapes, nesting depth) apply to the whole body, as when
//! the body was read into a `Value`. A key given twice counts with its last value, as in a `Value`.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use super::{finish, Parsed, RegistryError};
use crate::instance::Instance;

/// A JSON value as an adapter reads it: a scalar, or only the kind of an array or an object (its
/// content checked and skipped).
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Loose<'a> {
    /// Not in the object.
    #[default]
    Absent,
    Null,
    Bool(bool),
    Uint(u64),
    Int(i64),
    Float(f64),
    Str(Cow<'a, str>),
    Array,
    Object,
}

impl Loose<'_> {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Loose::Str(s) => Some(s),
            _ => None,
        }
    }

    /// An integer in `i64` range, as `serde_json::Value::as_i64` reads it (a float is none).
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Loose::Uint(u) => i64::try_from(u).ok(),
            Loose::Int(i) => Some(i),
            _ => None,
        }
    }

    /// Any number as `f64`, as `serde_json::Value::as_f64` reads it.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Loose::Uint(u) => Some(u as f64),
            Loose::Int(i) => Some(i as f64),
            Loose::Float(f) => Some(f),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Loose::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// Absent or `null`.
    pub fn is_none(&self) -> bool {
        matches!(self, Loose::Absent | Loose::Null)
    }

    /// The kind, as error messages name it.
    pub fn kind(&self) -> &'static str {
        match self {
            Loose::Absent | Loose::Null => "null",
            Loose::Bool(_) => "a boolean",
            Loose::Uint(_) | Loose::Int(_) | Loose::Float(_) => "a number",
            Loose::Str(_) => "a string",
            Loose::Array => "an array",
            Loose::Object => "an object",
        }
    }

    /// A scalar metadata value as text (a number as serde_json prints it); `None` for `null`, an
    /// array or an object.
    fn into_text(self) -> Option<String> {
        match self {
            Loose::Str(s) => Some(s.into_owned()),
            Loose::Bool(b) => Some(b.to_string()),
            Loose::Uint(u) => Some(u.to_string()),
            Loose::Int(i) => Some(i.to_string()),
            Loose::Float(f) => serde_json::Number::from_f64(f).map(|n| n.to_string()),
            Loose::Absent | Loose::Null | Loose::Array | Loose::Object => None,
        }
    }
}

/// Why reading stopped: serde's error is kept by the reader that met it ([`Halt::Inner`]), or an
/// error of the document's shape to be raised where it was found.
#[derive(Debug)]
pub enum Halt {
    Inner,
    Duplicate(&'static str),
    Missing(&'static str),
    Empty(&'static str),
}

/// Where one JSON value goes. Every method has a default that drops the value (an array's or an
/// object's content still checked), so a sink says only what it keeps. Sinks are reached through
/// `dyn`, so the body is walked by one instance of serde_json's parser, whatever is kept.
pub trait Sink<'de> {
    /// A scalar; a string borrowed from the body.
    fn scalar(&mut self, v: Loose<'de>) {
        let _ = v;
    }
    /// A string that could not be borrowed (it holds an escape).
    fn text(&mut self, s: &str) {
        let _ = s;
    }
    fn seq(&mut self, cx: Ctx<'_>, s: &mut dyn Seq<'de>) -> Result<(), Halt> {
        while s.next(cx, &mut Skip)? {}
        Ok(())
    }
    fn map(&mut self, cx: Ctx<'_>, m: &mut dyn Map<'de>) -> Result<(), Halt> {
        while m.key()?.is_some() {
            m.value(cx, &mut Skip)?;
        }
        Ok(())
    }
}

/// An object being read: its keys, each followed by its value.
pub trait Map<'de> {
    fn key(&mut self) -> Result<Option<Cow<'de, str>>, Halt>;
    fn value(&mut self, cx: Ctx<'_>, sink: &mut dyn Sink<'de>) -> Result<(), Halt>;
    /// The value, which must be an array (serde's error for a `Vec` otherwise).
    fn seq_value(&mut self, cx: Ctx<'_>, sink: &mut dyn Sink<'de>) -> Result<(), Halt>;
    /// Drops the value as serde's derived structs drop an unknown field's.
    fn ignore(&mut self) -> Result<(), Halt>;
    /// The value as a `serde_json::Value`.
    fn json(&mut self) -> Result<serde_json::Value, Halt>;
}

/// An array being read: `false` after the last element.
pub trait Seq<'de> {
    fn next(&mut self, cx: Ctx<'_>, sink: &mut dyn Sink<'de>) -> Result<bool, Halt>;
    /// The next element, which must be an array (serde's error for a `Vec` otherwise).
    fn next_seq(&mut self, cx: Ctx<'_>, sink: &mut dyn Sink<'de>) -> Result<bool, Halt>;
}

/// serde's access with the error it met.
struct Access<A, E> {
    a: A,
    err: Option<E>,
}

impl<A, E> Access<A, E> {
    fn keep<T>(&mut self, r: Result<T, E>) -> Result<T, Halt> {
        r.map_err(|e| {
            self.err = Some(e);
            Halt::Inner
        })
    }
}

impl<'de, A: MapAccess<'de>> Map<'de> for Access<A, A::Error> {
    fn key(&mut self) -> Result<Option<Cow<'de, str>>, Halt> {
        let r = self.a.next_key::<Key<'de>>();
        self.keep(r).map(|k| k.map(|k| k.0))
    }
    fn value(&mut self, cx: Ctx<'_>, sink: &mut dyn Sink<'de>) -> Result<(), Halt> {
        let r = self.a.next_value_seed(Dyn { sink, cx, expecting: "any JSON value", mode: Mode::Any });
        self.keep(r)
    }
    fn seq_value(&mut self, cx: Ctx<'_>, sink: &mut dyn Sink<'de>) -> Result<(), Halt> {
        let r = self.a.next_value_seed(Dyn { sink, cx, expecting: "a sequence", mode: Mode::Seq });
        self.keep(r)
    }
    fn ignore(&mut self) -> Result<(), Halt> {
        let r = self.a.next_value::<de::IgnoredAny>();
        self.keep(r).map(|_| ())
    }
    fn json(&mut self) -> Result<serde_json::Value, Halt> {
        let r = self.a.next_value();
        self.keep(r)
    }
}

impl<'de, A: SeqAccess<'de>> Seq<'de> for Access<A, A::Error> {
    fn next(&mut self, cx: Ctx<'_>, sink: &mut dyn Sink<'de>) -> Result<bool, Halt> {
        let r = self.a.next_element_seed(Dyn { sink, cx, expecting: "any JSON value", mode: Mode::Any });
        self.keep(r).map(|v| v.is_some())
    }
    fn next_seq(&mut self, cx: Ctx<'_>, sink: &mut dyn Sink<'de>) -> Result<bool, Halt> {
        let r = self.a.next_element_seed(Dyn { sink, cx, expecting: "a sequence", mode: Mode::Seq });
        self.keep(r).map(|v| v.is_some())
    }
}

/// How the top-level value is asked for (what serde_json says when it is not that).
#[derive(Clone, Copy)]
pub enum Mode {
    Any,
    /// An array (serde's message for a `Vec`).
    Seq,
    /// A struct of these fields (a derived struct's messages).
    Struct(&'static str, &'static [&'static str]),
}

/// The one visitor: hands each value to its [`Sink`].
struct Dyn<'s, 'c, 'de> {
    sink: &'s mut dyn Sink<'de>,
    cx: Ctx<'c>,
    expecting: &'static str,
    mode: Mode,
}

fn raise<E: de::Error>(h: Halt, err: Option<E>) -> E {
    match (h, err) {
        (Halt::Inner, Some(e)) => e,
        (Halt::Duplicate(f), _) => E::duplicate_field(f),
        (Halt::Missing(f), _) => E::missing_field(f),
        (Halt::Empty(what), _) => E::invalid_length(0, &what),
        (Halt::Inner, None) => E::custom("unreadable value"),
    }
}

impl<'de> DeserializeSeed<'de> for Dyn<'_, '_, 'de> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        match self.mode {
            Mode::Any => d.deserialize_any(self),
            Mode::Seq => d.deserialize_seq(self),
            Mode::Struct(name, fields) => d.deserialize_struct(name, fields, self),
        }
    }
}

impl<'de> Visitor<'de> for Dyn<'_, '_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.sink.scalar(Loose::Bool(v));
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.sink.scalar(Loose::Int(v));
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.sink.scalar(Loose::Uint(v));
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.sink.scalar(Loose::Float(v));
        Ok(())
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.sink.text(v);
        Ok(())
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<(), E> {
        self.sink.scalar(Loose::Str(Cow::Borrowed(v)));
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.sink.scalar(Loose::Null);
        Ok(())
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.sink.scalar(Loose::Null);
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
        let mut a = Access { a: seq, err: None };
        self.sink.seq(self.cx, &mut a).map_err(|h| raise(h, a.err.take()))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        let mut a = Access { a: map, err: None };
        self.sink.map(self.cx, &mut a).map_err(|h| raise(h, a.err.take()))
    }
}

/// Reads a whole body into `sink`, as `serde_json::from_slice` reads one (trailing characters
/// refused); any failure is a [`RegistryError::Parse`] with serde_json's message.
pub fn read<'de>(
    body: &'de [u8],
    mode: Mode,
    expecting: &'static str,
    cx: Ctx<'_>,
    sink: &mut dyn Sink<'de>,
) -> Result<(), RegistryError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    Dyn { sink, cx, expecting, mode }.deserialize(&mut de).map_err(|e| RegistryError::Parse(e.to_string()))?;
    de.end().map_err(|e| RegistryError::Parse(e.to_string()))
}

/// Reads a value that is already a `serde_json::Value` into `sink`.
pub fn read_value<'de>(v: &'de serde_json::Value, cx: Ctx<'_>, sink: &mut dyn Sink<'de>) -> bool {
    Dyn { sink, cx, expecting: "any JSON value", mode: Mode::Any }.deserialize(v).is_ok()
}

impl<'de> Sink<'de> for Loose<'de> {
    fn scalar(&mut self, v: Loose<'de>) {
        *self = v;
    }
    fn text(&mut self, s: &str) {
        *self = Loose::Str(Cow::Owned(s.to_owned()));
    }
    fn seq(&mut self, cx: Ctx<'_>, s: &mut dyn Seq<'de>) -> Result<(), Halt> {
        while s.next(cx, &mut Skip)? {}
        *self = Loose::Array;
        Ok(())
    }
    fn map(&mut self, cx: Ctx<'_>, m: &mut dyn Map<'de>) -> Result<(), Halt> {
        while m.key()?.is_some() {
            m.value(cx, &mut Skip)?;
        }
        *self = Loose::Object;
        Ok(())
    }
}

/// Any JSON value, checked and dropped (nothing is kept or allocated).
pub struct Skip;

impl Sink<'_> for Skip {}

/// An object key, borrowed from the body unless it holds an escape.
pub struct Key<'a>(pub Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(KeyVisitor)
    }
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Key<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Key(Cow::Owned(v.to_owned())))
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Key(Cow::Borrowed(v)))
    }
}

/// What a record is read with: the metadata keys to keep, and the tagged-address name to read
/// (Consul).
#[derive(Debug, Clone, Copy)]
pub struct Ctx<'k> {
    pub keys: &'k [&'k str],
    pub tag: Option<&'k str>,
}

/// A struct read from a JSON object: the fields it knows, every other one skipped.
pub trait Fields<'de> {
    /// Reads the value of `key` with `m` and returns `true`, or returns `false` to have it skipped.
    fn field(&mut self, cx: Ctx<'_>, key: &str, m: &mut dyn Map<'de>) -> Result<bool, Halt>;
}

/// An object read as `T`, or any other value as a [`Loose`].
#[derive(Debug)]
pub enum Obj<'de, T> {
    Obj(T),
    Not(Loose<'de>),
}

impl<T> Default for Obj<'_, T> {
    fn default() -> Self {
        Obj::Not(Loose::Absent)
    }
}

impl<T> Obj<'_, T> {
    /// The struct, if the value was an object.
    pub fn ok(self) -> Option<T> {
        match self {
            Obj::Obj(t) => Some(t),
            Obj::Not(_) => None,
        }
    }
}

impl<'de, T: Fields<'de> + Default> Sink<'de> for Obj<'de, T> {
    fn scalar(&mut self, v: Loose<'de>) {
        if let Some(l) = not(self) {
            *l = v;
        }
    }
    fn text(&mut self, s: &str) {
        if let Some(l) = not(self) {
            l.text(s);
        }
    }
    fn seq(&mut self, cx: Ctx<'_>, s: &mut dyn Seq<'de>) -> Result<(), Halt> {
        match not(self) {
            Some(l) => l.seq(cx, s),
            None => Skip.seq(cx, s),
        }
    }
    fn map(&mut self, cx: Ctx<'_>, m: &mut dyn Map<'de>) -> Result<(), Halt> {
        let mut t = T::default();
        read_fields(cx, m, &mut t)?;
        *self = Obj::Obj(t);
        Ok(())
    }
}

/// The [`Loose`] of an [`Obj`] that is not (yet) an object: what a value other than an object
/// is read into (a sink gets one value, so a fresh `Obj` is always `Not`).
fn not<'a, 'de, T>(o: &'a mut Obj<'de, T>) -> Option<&'a mut Loose<'de>> {
    match o {
        Obj::Not(v) => Some(v),
        Obj::Obj(_) => None,
    }
}

/// Reads every `key: value` of `m` into `t`, skipping the keys it does not know.
fn read_fields<'de>(cx: Ctx<'_>, m: &mut dyn Map<'de>, t: &mut dyn Fields<'de>) -> Result<(), Halt> {
    while let Some(k) = m.key()? {
        if !t.field(cx, &k, m)? {
            m.value(cx, &mut Skip)?;
        }
    }
    Ok(())
}

/// The next value of `m` as an [`Obj`].
pub fn obj<'de, T: Fields<'de> + Default>(cx: Ctx<'_>, m: &mut dyn Map<'de>) -> Result<Obj<'de, T>, Halt> {
    let mut o = Obj::default();
    m.value(cx, &mut o)?;
    Ok(o)
}

/// The next value of `m` as a [`Loose`].
pub fn loose<'de>(cx: Ctx<'_>, m: &mut dyn Map<'de>) -> Result<Loose<'de>, Halt> {
    let mut v = Loose::Absent;
    m.value(cx, &mut v)?;
    Ok(v)
}

/// A value that should be a list.
#[derive(Debug, Default)]
pub enum List<T> {
    /// `null` (or, as a field's default, absent).
    #[default]
    Null,
    Items(Vec<T>),
    /// Any other value (its kind).
    Other(&'static str),
}

/// Reads a [`List`]; with `one`, a bare object is a list of one (Eureka's Jackson codec writes a
/// list of one that way).
pub struct ListSink<T> {
    pub list: List<T>,
    pub one: bool,
}

impl<'de, T: Sink<'de> + Default> Sink<'de> for ListSink<T> {
    fn scalar(&mut self, v: Loose<'de>) {
        self.list = if v == Loose::Null { List::Null } else { List::Other(v.kind()) };
    }
    fn text(&mut self, _: &str) {
        self.list = List::Other("a string");
    }
    fn seq(&mut self, cx: Ctx<'_>, s: &mut dyn Seq<'de>) -> Result<(), Halt> {
        let mut items = Vec::new();
        loop {
            let mut t = T::default();
            if !s.next(cx, &mut t)? {
                break;
            }
            items.push(t);
        }
        self.list = List::Items(items);
        Ok(())
    }
    fn map(&mut self, cx: Ctx<'_>, m: &mut dyn Map<'de>) -> Result<(), Halt> {
        if self.one {
            let mut t = T::default();
            t.map(cx, m)?;
            self.list = List::Items(vec![t]);
        } else {
            while m.key()?.is_some() {
                m.value(cx, &mut Skip)?;
            }
            self.list = List::Other("an object");
        }
        Ok(())
    }
}

/// The next value of `m` as a [`List`].
pub fn list<'de, T: Sink<'de> + Default>(cx: Ctx<'_>, m: &mut dyn Map<'de>, one: bool) -> Result<List<T>, Halt> {
    let mut l = ListSink { list: List::Null, one };
    m.value(cx, &mut l)?;
    Ok(l.list)
}

/// Metadata with only the keys that are read.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Meta {
    /// The kept keys with their values as text.
    pub kept: BTreeMap<String, String>,
    /// Values that are not a scalar (`null`, an array, an object; any key), or 1 when the
    /// metadata is not an object (and not `null`).
    pub bad: u32,
}

/// Reads a metadata object keeping only the keys in `cx.keys`: a string value as it is, a number
/// or a boolean as its JSON text. A key's last value counts. The values of every other key are
/// checked and dropped without being copied.
impl<'de> Sink<'de> for Meta {
    fn scalar(&mut self, v: Loose<'de>) {
        *self = Meta { bad: u32::from(v != Loose::Null), ..Meta::default() };
    }
    fn text(&mut self, _: &str) {
        *self = Meta { bad: 1, ..Meta::default() };
    }
    fn seq(&mut self, cx: Ctx<'_>, s: &mut dyn Seq<'de>) -> Result<(), Halt> {
        while s.next(cx, &mut Skip)? {}
        *self = Meta { bad: 1, ..Meta::default() };
        Ok(())
    }
    fn map(&mut self, cx: Ctx<'_>, m: &mut dyn Map<'de>) -> Result<(), Halt> {
        let mut kept = BTreeMap::new();
        // keys whose last value so far is not a scalar (rare: usually empty)
        let mut bad: Vec<Cow<'de, str>> = Vec::new();
        while let Some(k) = m.key()? {
            let keep = cx.keys.contains(&&*k);
            // a kept key's value as text; of any other key only whether it is a scalar
            let text = if keep {
                loose(cx, m)?.into_text()
            } else {
                let mut kind = Kind(false);
                m.value(cx, &mut kind)?;
                kind.0.then(String::new)
            };
            if !bad.is_empty() {
                bad.retain(|b| *b != k);
            }
            match text {
                None => {
                    if keep {
                        kept.remove(&*k);
                    }
                    bad.push(k);
                }
                Some(t) => {
                    if keep {
                        kept.insert(k.into_owned(), t);
                    }
                }
            }
        }
        *self = Meta { kept, bad: u32::try_from(bad.len()).unwrap_or(u32::MAX) };
        Ok(())
    }
}

/// Whether a value is a scalar other than `null`, nothing else kept.
struct Kind(bool);

impl<'de> Sink<'de> for Kind {
    fn scalar(&mut self, v: Loose<'de>) {
        self.0 = v != Loose::Null;
    }
    fn text(&mut self, _: &str) {
        self.0 = true;
    }
    fn seq(&mut self, cx: Ctx<'_>, s: &mut dyn Seq<'de>) -> Result<(), Halt> {
        self.0 = false;
        while s.next(cx, &mut Skip)? {}
        Ok(())
    }
    fn map(&mut self, cx: Ctx<'_>, m: &mut dyn Map<'de>) -> Result<(), Halt> {
        self.0 = false;
        while m.key()?.is_some() {
            m.value(cx, &mut Skip)?;
        }
        Ok(())
    }
}

/// The next value of `m` as [`Meta`].
pub fn meta<'de>(cx: Ctx<'_>, m: &mut dyn Map<'de>) -> Result<Meta, Halt> {
    let mut md = Meta::default();
    m.value(cx, &mut md)?;
    Ok(md)
}

/// What became of one record.
#[derive(Debug)]
pub enum Rec {
    /// An instance and its count of malformed metadata values.
    Kept(Instance, u32),
    /// Malformed: skipped and counted.
    Skipped,
    /// Its address is a host name (`name:port`): skipped, counted and named.
    Unroutable(String),
    /// Not a member, not malformed (a Eureka delta's `DELETED`).
    Ignored,
}

impl Rec {
    /// `Kept` for an instance, else `Skipped`.
    pub fn of(r: Option<(Instance, u32)>) -> Rec {
        match r {
            Some((i, bad)) => Rec::Kept(i, bad),
            None => Rec::Skipped,
        }
    }
}

/// Records gathered into a list.
#[derive(Debug, Default)]
pub struct Batch {
    instances: Vec<Instance>,
    skipped: u32,
    malformed_meta: u32,
    unroutable: Vec<String>,
}

impl Batch {
    pub fn add(&mut self, r: Rec) {
        match r {
            Rec::Kept(i, bad) => {
                self.malformed_meta += bad;
                self.instances.push(i);
            }
            Rec::Skipped => self.skipped += 1,
            Rec::Unroutable(name) => {
                self.skipped += 1;
                self.unroutable.push(name);
            }
            Rec::Ignored => {}
        }
    }

    /// The parsed list: sorted, duplicates merged ([`finish`]).
    pub fn finish(self) -> Parsed {
        let mut p = finish(self.instances, self.skipped, self.malformed_meta);
        p.unroutable = self.unroutable;
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn try_meta(keys: &[&str], body: &str) -> Result<Meta, RegistryError> {
        let mut md = Meta::default();
        read(body.as_bytes(), Mode::Any, "any JSON value", Ctx { keys, tag: None }, &mut md).map(|()| md)
    }
    fn meta(keys: &[&str], body: &str) -> Meta {
        try_meta(keys, body).unwrap()
    }

    #[test]
    fn metadata_keeps_only_the_keys_read() {
        let keys = ["ключ", "n", "f", "b", "s", "a\"b"];
        let m = meta(
            &keys,
            r#"{"ключ":"значение ✓","n":-7,"f":1e300,"b":true,"s":"x\ty","a\"b":"1","zone":"a","deep":{"x":[1]}}"#,
        );
        let kept: Vec<(&str, &str)> = m.kept.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            kept,
            [("a\"b", "1"), ("b", "true"), ("f", "1e+300"), ("n", "-7"), ("s", "x\ty"), ("ключ", "значение ✓")]
        );
        // the nested value of a key that is not read still counts as malformed
        assert_eq!(m.bad, 1);
        // a key's last value counts, for what is kept and for what is malformed
        let m = meta(&keys, r#"{"n":"1","n":{"x":1},"zone":[1],"zone":"a","s":null,"s":"2"}"#);
        assert_eq!((m.kept.get("n"), m.kept.get("s").map(String::as_str), m.bad), (None, Some("2"), 1));
        // not an object: counted once; null: nothing
        assert_eq!(meta(&keys, r#"["n"]"#), Meta { bad: 1, ..Meta::default() });
        assert_eq!(meta(&keys, r#""n=1""#), Meta { bad: 1, ..Meta::default() });
        assert_eq!(meta(&keys, "null"), Meta::default());
        // skipped values are still checked: nesting depth, escapes
        let deep = format!(r#"{{"zone":{}1{}}}"#, "[".repeat(200), "]".repeat(200));
        assert!(try_meta(&keys, &deep).is_err());
        assert!(try_meta(&keys, r#"{"zone":"\udc00"}"#).is_err());
    }
}
