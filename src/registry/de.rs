//! What every adapter reads its reply with. A reply's shape is a set of `#[derive(Deserialize)]`
//! types of the fields the adapter reads, read straight from the body by serde_json: strings
//! borrowed from the body unless they hold an escape, every other field skipped by serde
//! (`IgnoredAny`).
//!
//! A field holds whatever its value is ([`Loose`], or [`Obj`] for an object read as its own type),
//! so a record with a field of the wrong type is skipped and counted instead of failing the reply;
//! only a body that is not JSON, or not of the reply's shape, fails.
//!
//! What a derived type cannot read alone, because it depends on the service, is read by a
//! [`DeserializeSeed`] as the body goes by: [`With`] reads an object as its derived type but hands
//! the keys a [`Side`] takes to the side. So the list of records goes to [`Records`], which reads
//! each record, its metadata with only the keys the service reads ([`Meta`]), and turns it into an
//! instance at once; no record is kept and the body is read once.
//!
//! A value read as something it is not (an array where a record is expected, metadata that is not
//! an object) is read through with serde_json's checks, its nesting limit of 128 included.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::de::value::MapAccessDeserializer;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, IntoDeserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use super::{finish, Parsed, RegistryError};
use crate::instance::Instance;

/// Reads a whole body with `seed`, as `serde_json::from_str` reads one value (trailing characters
/// refused). The body must be UTF-8, JSON's encoding (RFC 8259 §8.1). Any failure is a
/// [`RegistryError::Parse`] with serde_json's message.
pub fn read_with<'a, S: DeserializeSeed<'a>>(body: &'a [u8], seed: S) -> Result<S::Value, RegistryError> {
    let text = std::str::from_utf8(body).map_err(|e| RegistryError::Parse(format!("not UTF-8: {e}")))?;
    let mut de = serde_json::Deserializer::from_str(text);
    let v = seed.deserialize(&mut de).and_then(|v| de.end().map(|()| v));
    v.map_err(|e| RegistryError::Parse(e.to_string()))
}

/// Reads a whole body as `T` ([`read_with`]).
pub fn read<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, RegistryError> {
    read_with(body, PhantomData)
}

/// A JSON value as a record's field holds it: a scalar, or only the kind of an array or an object
/// (its content read through and dropped).
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
    /// Borrowed from the body unless it holds an escape.
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
}

impl<'de: 'a, 'a> Deserialize<'de> for Loose<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(LooseVisitor(PhantomData))
    }
}

struct LooseVisitor<'a>(PhantomData<&'a ()>);

impl<'de: 'a, 'a> Visitor<'de> for LooseVisitor<'a> {
    type Value = Loose<'a>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Loose<'a>, E> {
        Ok(Loose::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Loose<'a>, E> {
        Ok(Loose::Int(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Loose<'a>, E> {
        Ok(Loose::Uint(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Loose<'a>, E> {
        Ok(Loose::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Loose<'a>, E> {
        Ok(Loose::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Loose<'a>, E> {
        Ok(Loose::Str(Cow::Borrowed(v)))
    }
    fn visit_unit<E>(self) -> Result<Loose<'a>, E> {
        Ok(Loose::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, a: A) -> Result<Loose<'a>, A::Error> {
        drain_seq(a).map(|()| Loose::Array)
    }
    fn visit_map<A: MapAccess<'de>>(self, a: A) -> Result<Loose<'a>, A::Error> {
        drain_map(a).map(|()| Loose::Object)
    }
}

/// Any value, read through with serde_json's checks and dropped.
struct Skip;

impl<'de> Deserialize<'de> for Skip {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(SkipVisitor).map(|_| Skip)
    }
}

/// Whether a value is a scalar other than `null`; an array's or an object's content is read
/// through.
struct SkipVisitor;

impl<'de> Visitor<'de> for SkipVisitor {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<bool, E> {
        Ok(true)
    }
    fn visit_i64<E>(self, _: i64) -> Result<bool, E> {
        Ok(true)
    }
    fn visit_u64<E>(self, _: u64) -> Result<bool, E> {
        Ok(true)
    }
    fn visit_f64<E>(self, _: f64) -> Result<bool, E> {
        Ok(true)
    }
    fn visit_str<E>(self, _: &str) -> Result<bool, E> {
        Ok(true)
    }
    fn visit_unit<E>(self) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, a: A) -> Result<bool, A::Error> {
        drain_seq(a).map(|()| false)
    }
    fn visit_map<A: MapAccess<'de>>(self, a: A) -> Result<bool, A::Error> {
        drain_map(a).map(|()| false)
    }
}

fn drain_seq<'de, A: SeqAccess<'de>>(mut a: A) -> Result<(), A::Error> {
    while a.next_element::<Skip>()?.is_some() {}
    Ok(())
}

fn drain_map<'de, A: MapAccess<'de>>(mut a: A) -> Result<(), A::Error> {
    while a.next_entry::<IgnoredAny, Skip>()?.is_some() {}
    Ok(())
}

/// A value that should be an object, read as `T`; or what it is instead.
#[derive(Debug)]
pub enum Obj<'a, T> {
    Obj(T),
    Not(Loose<'a>),
}

impl<T> Default for Obj<'_, T> {
    fn default() -> Self {
        Obj::Not(Loose::Absent)
    }
}

impl<T> Obj<'_, T> {
    /// The object, if it is one.
    pub fn get(&self) -> Option<&T> {
        match self {
            Obj::Obj(t) => Some(t),
            Obj::Not(_) => None,
        }
    }
}

impl<'de: 'a, 'a, T: Deserialize<'de>> Deserialize<'de> for Obj<'a, T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ObjVisitor(PhantomData))
    }
}

struct ObjVisitor<'a, T>(PhantomData<(&'a (), T)>);

/// [`LooseVisitor`]'s reading, as an [`Obj::Not`].
macro_rules! not {
    ($($f:ident($($v:ident: $t:ty)?)),*) => {$(
        fn $f<Er: de::Error>(self, $($v: $t)?) -> Result<Self::Value, Er> {
            LooseVisitor(PhantomData).$f($($v)?).map(Self::Value::from)
        }
    )*};
}

impl<'a, T> From<Loose<'a>> for Obj<'a, T> {
    fn from(v: Loose<'a>) -> Self {
        Obj::Not(v)
    }
}

impl<'de: 'a, 'a, T: Deserialize<'de>> Visitor<'de> for ObjVisitor<'a, T> {
    type Value = Obj<'a, T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    not!(visit_bool(v: bool), visit_i64(v: i64), visit_u64(v: u64), visit_f64(v: f64), visit_str(v: &str));
    not!(visit_borrowed_str(v: &'de str), visit_unit());
    fn visit_seq<A: SeqAccess<'de>>(self, a: A) -> Result<Self::Value, A::Error> {
        drain_seq(a).map(|()| Obj::Not(Loose::Array))
    }
    fn visit_map<A: MapAccess<'de>>(self, a: A) -> Result<Self::Value, A::Error> {
        T::deserialize(MapAccessDeserializer::new(a)).map(Obj::Obj)
    }
}

/// An object key, borrowed from the body unless it holds an escape.
struct Key<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Key<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(KeyVisitor(PhantomData))
    }
}

struct KeyVisitor<'a>(PhantomData<&'a ()>);

impl<'de: 'a, 'a> Visitor<'de> for KeyVisitor<'a> {
    type Value = Key<'a>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_str<E>(self, v: &str) -> Result<Key<'a>, E> {
        Ok(Key(Cow::Owned(v.to_owned())))
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'a>, E> {
        Ok(Key(Cow::Borrowed(v)))
    }
}

/// The keys of an object that its derived type leaves to someone else ([`With`]).
pub trait Side<'de> {
    /// When `key` is one of the side's, reads its value from `map` and returns `true`; `false`
    /// leaves the key to the derived type.
    fn take<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<bool, A::Error>;
}

/// Both sides: a key is the first one's, else the second one's.
impl<'de, S: Side<'de>, T: Side<'de>> Side<'de> for (S, T) {
    fn take<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<bool, A::Error> {
        Ok(self.0.take(key, map)? || self.1.take(key, map)?)
    }
}

/// No side when `None`.
impl<'de, S: Side<'de>> Side<'de> for Option<S> {
    fn take<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<bool, A::Error> {
        match self {
            Some(s) => s.take(key, map),
            None => Ok(false),
        }
    }
}

/// Reads an object as the derived `T`, except the keys `side` takes, whose values `side` reads as
/// they come: what needs the service (its metadata keys, its records) is read by the side. Any
/// other value is an [`Obj::Not`].
pub struct With<'s, 'a, T, S> {
    side: &'s mut S,
    out: PhantomData<Obj<'a, T>>,
}

impl<'s, T, S> With<'s, '_, T, S> {
    pub fn new(side: &'s mut S) -> Self {
        With { side, out: PhantomData }
    }
}

impl<'de: 'a, 'a, T: Deserialize<'de>, S: Side<'de>> DeserializeSeed<'de> for With<'_, 'a, T, S> {
    type Value = Obj<'a, T>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de: 'a, 'a, T: Deserialize<'de>, S: Side<'de>> Visitor<'de> for With<'_, 'a, T, S> {
    type Value = Obj<'a, T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    not!(visit_bool(v: bool), visit_i64(v: i64), visit_u64(v: u64), visit_f64(v: f64), visit_str(v: &str));
    not!(visit_borrowed_str(v: &'de str), visit_unit());
    fn visit_seq<A: SeqAccess<'de>>(self, a: A) -> Result<Self::Value, A::Error> {
        drain_seq(a).map(|()| Obj::Not(Loose::Array))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        T::deserialize(MapAccessDeserializer::new(Divert { map, side: self.side })).map(Obj::Obj)
    }
}

/// An object's entries with the keys `side` takes left out (their values read by it).
struct Divert<'s, A, S> {
    map: A,
    side: &'s mut S,
}

impl<'de, A: MapAccess<'de>, S: Side<'de>> MapAccess<'de> for Divert<'_, A, S> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, A::Error> {
        while let Some(Key(k)) = self.map.next_key()? {
            if !self.side.take(&k, &mut self.map)? {
                return seed.deserialize(k.as_ref().into_deserializer()).map(Some);
            }
        }
        Ok(None)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        self.map.next_value_seed(seed)
    }
}

/// Where the elements of a list go, one at a time.
pub trait Each<'de> {
    /// Reads one element from `d`.
    fn element<D: Deserializer<'de>>(&mut self, d: D) -> Result<(), D::Error>;
}

/// A list whose elements go to `each` as they come; its kind is returned: [`Loose::Array`], or
/// what the value is instead (its content read through). With `one`, a bare object is a list of
/// one ([`Loose::Object`]; Eureka's Jackson codec writes a list of one so).
pub struct List<'e, E> {
    pub each: &'e mut E,
    pub one: bool,
}

impl<'de, E: Each<'de>> DeserializeSeed<'de> for List<'_, E> {
    type Value = Loose<'de>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Loose<'de>, D::Error> {
        d.deserialize_any(ListVisitor(self))
    }
}

struct ListVisitor<'e, E>(List<'e, E>);

impl<'de, E: Each<'de>> Visitor<'de> for ListVisitor<'_, E> {
    type Value = Loose<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    not!(visit_bool(v: bool), visit_i64(v: i64), visit_u64(v: u64), visit_f64(v: f64), visit_str(v: &str));
    not!(visit_borrowed_str(v: &'de str), visit_unit());
    fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Loose<'de>, A::Error> {
        while a.next_element_seed(Element(&mut *self.0.each))?.is_some() {}
        Ok(Loose::Array)
    }
    fn visit_map<A: MapAccess<'de>>(self, a: A) -> Result<Loose<'de>, A::Error> {
        if self.0.one {
            self.0.each.element(MapAccessDeserializer::new(a))?;
        } else {
            drain_map(a)?;
        }
        Ok(Loose::Object)
    }
}

/// One element of a [`List`].
struct Element<'e, E>(&'e mut E);

impl<'de, E: Each<'de>> DeserializeSeed<'de> for Element<'_, E> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        self.0.element(d)
    }
}

/// The records of a reply: each read as the derived `T`, its metadata (the key `meta_key`) with
/// only `keys` kept, and made a [`Rec`] by `each` at once into [`Records::batch`]. An element that
/// is not an object is skipped and counted.
pub struct Records<'k, 'a, T, F> {
    keys: &'k [&'k str],
    meta_key: &'static str,
    meta: Meta<'a>,
    each: F,
    pub batch: Batch,
    record: PhantomData<T>,
}

impl<'k, 'a, T, F: FnMut(&T, &Meta<'a>) -> Rec> Records<'k, 'a, T, F> {
    pub fn new(keys: &'k [&'k str], meta_key: &'static str, each: F) -> Self {
        Records { keys, meta_key, meta: Meta::default(), each, batch: Batch::default(), record: PhantomData }
    }

    /// The records so far, the batch started afresh.
    pub fn take_batch(&mut self) -> Batch {
        std::mem::take(&mut self.batch)
    }
}

impl<'de: 'a, 'a, T: Deserialize<'de>, F: FnMut(&T, &Meta<'a>) -> Rec> Each<'de> for Records<'_, 'a, T, F> {
    fn element<D: Deserializer<'de>>(&mut self, d: D) -> Result<(), D::Error> {
        let mut side = MetaSide::new(self.meta_key, self.keys, &mut self.meta);
        let rec = match With::<T, _>::new(&mut side).deserialize(d)? {
            Obj::Obj(t) => (self.each)(&t, &self.meta),
            Obj::Not(_) => Rec::Skipped,
        };
        self.batch.add(rec);
        Ok(())
    }
}

/// A record's metadata (the value of `key`), read into `meta` with only `keys` kept.
pub struct MetaSide<'s, 'a> {
    key: &'static str,
    keys: &'s [&'s str],
    meta: &'s mut Meta<'a>,
    seen: bool,
}

impl<'s, 'a> MetaSide<'s, 'a> {
    /// `meta` is emptied.
    pub fn new(key: &'static str, keys: &'s [&'s str], meta: &'s mut Meta<'a>) -> Self {
        meta.clear();
        MetaSide { key, keys, meta, seen: false }
    }
}

impl<'de: 'a, 'a> Side<'de> for MetaSide<'_, 'a> {
    fn take<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<bool, A::Error> {
        if key != self.key {
            return Ok(false);
        }
        if std::mem::replace(&mut self.seen, true) {
            return Err(de::Error::duplicate_field(self.key));
        }
        map.next_value_seed(MetaSeed { keys: self.keys, out: self.meta })?;
        Ok(true)
    }
}

/// The list under `key`, its elements to `each` ([`List`]); its kind is kept (`None`: no such
/// key).
pub struct Under<'e, 'a, E> {
    key: &'static str,
    one: bool,
    each: &'e mut E,
    pub kind: Option<Loose<'a>>,
}

impl<'e, E> Under<'e, '_, E> {
    /// With `one`, a bare object is a list of one.
    pub fn new(key: &'static str, one: bool, each: &'e mut E) -> Self {
        Under { key, one, each, kind: None }
    }
}

impl<'de: 'a, 'a, E: Each<'de>> Side<'de> for Under<'_, 'a, E> {
    fn take<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<bool, A::Error> {
        if key != self.key {
            return Ok(false);
        }
        if self.kind.is_some() {
            return Err(de::Error::duplicate_field(self.key));
        }
        self.kind = Some(map.next_value_seed(List { each: &mut *self.each, one: self.one })?);
        Ok(true)
    }
}

/// The value of `key`, read by `seed` into `value` (`None`: no such key).
pub struct Field<S, V> {
    key: &'static str,
    seed: Option<S>,
    pub value: Option<V>,
}

impl<S, V> Field<S, V> {
    pub fn new(key: &'static str, seed: S) -> Self {
        Field { key, seed: Some(seed), value: None }
    }
}

impl<'de, S: DeserializeSeed<'de>> Side<'de> for Field<S, S::Value> {
    fn take<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<bool, A::Error> {
        if key != self.key {
            return Ok(false);
        }
        let Some(seed) = self.seed.take() else {
            return Err(de::Error::duplicate_field(self.key));
        };
        self.value = Some(map.next_value_seed(seed)?);
        Ok(true)
    }
}

/// The value of `name` in an object (its last value when it is given twice), read as `T`; `None`
/// when the value is not an object or has no such key.
pub struct Member<'n, T> {
    name: &'n str,
    out: PhantomData<T>,
}

impl<'n, T> Member<'n, T> {
    pub fn new(name: &'n str) -> Self {
        Member { name, out: PhantomData }
    }
}

impl<'de, T: Deserialize<'de>> DeserializeSeed<'de> for Member<'_, T> {
    type Value = Option<T>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<T>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, T: Deserialize<'de>> Visitor<'de> for Member<'_, T> {
    type Value = Option<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Option<T>, A::Error> {
        let mut out = None;
        while let Some(Key(k)) = a.next_key()? {
            if k == self.name {
                out = Some(a.next_value()?);
            } else {
                a.next_value::<IgnoredAny>()?;
            }
        }
        Ok(out)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, a: A) -> Result<Option<T>, A::Error> {
        drain_seq(a).map(|()| None)
    }
    fn visit_bool<E>(self, _: bool) -> Result<Option<T>, E> {
        Ok(None)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Option<T>, E> {
        Ok(None)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Option<T>, E> {
        Ok(None)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Option<T>, E> {
        Ok(None)
    }
    fn visit_str<E>(self, _: &str) -> Result<Option<T>, E> {
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Option<T>, E> {
        Ok(None)
    }
}

/// A record's metadata with only the keys that are read, borrowed from the body where it can be.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Meta<'a> {
    /// The kept keys with their values as text ([`crate::instance::Metadata`]).
    pub kept: Vec<(Cow<'a, str>, Cow<'a, str>)>,
    /// Values that are not a scalar (`null`, an array, an object; any key), or 1 when the
    /// metadata is not an object (and not `null`).
    pub bad: u32,
}

impl Meta<'_> {
    /// Empty, its room kept for the next record.
    pub fn clear(&mut self) {
        self.kept.clear();
        self.bad = 0;
    }
}

/// Reads a metadata value into `out` (in place of what was there), keeping only `keys`: a string
/// value as it is, a number or a boolean as its JSON text. A key's last value counts. The values
/// of every other key are read through and dropped without being copied.
pub struct MetaSeed<'k, 'm, 'a> {
    pub keys: &'k [&'k str],
    pub out: &'m mut Meta<'a>,
}

impl<'de: 'a, 'a> DeserializeSeed<'de> for MetaSeed<'_, '_, 'a> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        self.out.clear();
        d.deserialize_any(self)
    }
}

impl<'de: 'a, 'a> Visitor<'de> for MetaSeed<'_, '_, 'a> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map")
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        self.out.bad = 1;
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        self.out.bad = 1;
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        self.out.bad = 1;
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        self.out.bad = 1;
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        self.out.bad = 1;
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, a: A) -> Result<(), A::Error> {
        self.out.bad = 1;
        drain_seq(a)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<(), A::Error> {
        let kept = &mut self.out.kept;
        // keys whose last value so far is not a scalar (rare: usually empty)
        let mut bad: Vec<Cow<'a, str>> = Vec::new();
        while let Some(Key(k)) = a.next_key()? {
            let keep = self.keys.iter().any(|c| *c == k);
            // a kept key's value as text; of any other key only whether it is a scalar
            let text = if keep {
                text(a.next_value()?)
            } else {
                let scalar = a.next_value_seed(SkipVisitor)?;
                scalar.then_some(Cow::Borrowed(""))
            };
            if !bad.is_empty() {
                bad.retain(|b| *b != k);
            }
            let at = if keep { kept.iter().position(|(kk, _)| *kk == k) } else { None };
            match text {
                None => {
                    if let Some(i) = at {
                        kept.swap_remove(i);
                    }
                    bad.push(k);
                }
                Some(t) if keep => match at.and_then(|i| kept.get_mut(i)) {
                    Some(slot) => slot.1 = t,
                    None => kept.push((k, t)),
                },
                Some(_) => {}
            }
        }
        self.out.bad = u32::try_from(bad.len()).unwrap_or(u32::MAX);
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for SkipVisitor {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_any(self)
    }
}

/// A scalar metadata value as text (a number as serde_json prints it); `None` for `null`, an
/// array or an object.
fn text(v: Loose<'_>) -> Option<Cow<'_, str>> {
    match v {
        Loose::Str(s) => Some(s),
        Loose::Bool(b) => Some(Cow::Borrowed(if b { "true" } else { "false" })),
        Loose::Uint(u) => Some(Cow::Owned(u.to_string())),
        Loose::Int(i) => Some(Cow::Owned(i.to_string())),
        Loose::Float(f) => serde_json::Number::from_f64(f).map(|n| Cow::Owned(n.to_string())),
        Loose::Absent | Loose::Null | Loose::Array | Loose::Object => None,
    }
}

/// What became of one record.
#[derive(Debug, Clone)]
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

    fn try_meta<'a>(keys: &[&str], body: &'a str) -> Result<Meta<'a>, RegistryError> {
        let mut m = Meta { kept: vec![("stale".into(), "x".into())], bad: 9 };
        read_with(body.as_bytes(), MetaSeed { keys, out: &mut m })?;
        Ok(m)
    }
    fn meta<'a>(keys: &[&str], body: &'a str) -> Meta<'a> {
        let mut m = try_meta(keys, body).unwrap();
        m.kept.sort();
        m
    }

    #[test]
    fn metadata_keeps_only_the_keys_read() {
        let keys = ["ключ", "n", "f", "b", "s", "a\"b"];
        let m = meta(
            &keys,
            r#"{"ключ":"значение ✓","n":-7,"f":1e300,"b":true,"s":"x\ty","a\"b":"1","zone":"a","deep":{"x":[1]}}"#,
        );
        let kept: Vec<(&str, &str)> = m.kept.iter().map(|(k, v)| (&**k, &**v)).collect();
        assert_eq!(
            kept,
            [("a\"b", "1"), ("b", "true"), ("f", "1e+300"), ("n", "-7"), ("s", "x\ty"), ("ключ", "значение ✓")]
        );
        // the nested value of a key that is not read still counts as malformed
        assert_eq!(m.bad, 1);
        // a key's last value counts, for what is kept and for what is malformed
        let m = meta(&keys, r#"{"n":"1","n":{"x":1},"zone":[1],"zone":"a","s":null,"s":"2"}"#);
        let get = |k: &str| m.kept.iter().find(|(kk, _)| kk == k).map(|(_, v)| &**v);
        assert_eq!((get("n"), get("s"), m.bad), (None, Some("2"), 1));
        let m = meta(&keys, r#"{"s":"1","n":2,"s":"3","n":"4"}"#);
        assert_eq!(m.kept, [("n".into(), "4".into()), ("s".into(), "3".into())]);
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
