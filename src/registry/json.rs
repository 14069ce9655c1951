//! The pieces every adapter reads its reply with, straight from the body with the module's JSON
//! reader ([`Reader`]): no `serde_json::Value` per record. A record is read by a table of the
//! fields an adapter reads ([`Field`]) into [`Slots`], each a [`Loose`] scalar (strings borrowed
//! from the body unless they hold an escape) or the kind of a nested object whose own fields have
//! slots too; every other field is skipped without being kept. Metadata keeps only the keys that
//! are read ([`Meta`]). One reader serves every table, and records go to their [`Batch`] as they
//! are read ([`records`]).
//!
//! Nothing here refuses a value of the wrong type: it is recorded as it is ([`Loose`]) and the
//! adapter decides afterwards, so a malformed record is skipped and counted and only a body that
//! is not JSON fails. Skipped values are still checked (UTF-8, escapes,
//! nesting depth, number range), so the whole body is held to what `serde_json::from_slice` accepts.
//! A key given twice counts with its last value, as in a `serde_json::Value`.

use std::borrow::Cow;

use super::{finish, Parsed, RegistryError};
use crate::instance::Instance;
pub use crate::json::reader::{Reader, Res, Tok};

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

impl<'a> Loose<'a> {
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
    fn into_text(self) -> Option<Cow<'a, str>> {
        match self {
            Loose::Str(s) => Some(s),
            Loose::Bool(b) => Some(Cow::Borrowed(if b { "true" } else { "false" })),
            Loose::Uint(u) => Some(Cow::Owned(u.to_string())),
            Loose::Int(i) => Some(Cow::Owned(i.to_string())),
            Loose::Float(f) => serde_json::Number::from_f64(f).map(|n| Cow::Owned(n.to_string())),
            Loose::Absent | Loose::Null | Loose::Array | Loose::Object => None,
        }
    }
}

/// `t`, the token just read, as a [`Loose`] (the content of an array or an object checked and
/// skipped).
pub fn loose_of<'a>(r: &mut Reader<'a>, t: Tok<'a>) -> Res<Loose<'a>> {
    Ok(match t {
        Tok::Null => Loose::Null,
        Tok::Bool(b) => Loose::Bool(b),
        Tok::U(n) => Loose::Uint(n),
        Tok::I(n) => Loose::Int(n),
        Tok::F(f) => Loose::Float(f),
        Tok::Str(s) => Loose::Str(s),
        Tok::Arr | Tok::Obj => {
            r.skip_after(&t)?;
            if t == Tok::Arr {
                Loose::Array
            } else {
                Loose::Object
            }
        }
    })
}

/// The next value as a [`Loose`].
pub fn loose<'a>(r: &mut Reader<'a>) -> Res<Loose<'a>> {
    let t = r.token()?;
    loose_of(r, t)
}

/// Reads a whole body with `top` (its one value), as `serde_json::from_slice` reads one (trailing
/// characters refused); any failure is a [`RegistryError::Parse`] with serde_json's message.
pub fn read<'a, T>(body: &'a [u8], top: impl FnOnce(&mut Reader<'a>) -> Res<T>) -> Result<T, RegistryError> {
    let mut r = Reader::new(body);
    let v = top(&mut r).and_then(|v| r.end().map(|()| v));
    v.map_err(|e| RegistryError::Parse(e.to_string()))
}

/// What a record is read with: the metadata keys to keep, and the tagged-address name to read
/// (Consul).
#[derive(Debug, Clone, Copy)]
pub struct Ctx<'k> {
    pub keys: &'k [&'k str],
    pub tag: Option<&'k str>,
}

/// Where the value of a field goes in a record's [`Slots`].
#[derive(Debug, Clone, Copy)]
pub enum To {
    /// Slot `i`: a scalar, or the kind of anything else.
    Val(usize),
    /// The metadata ([`Slots::meta`]).
    Meta,
    /// An object read by its table into the slots `i + 1 .. end`; slot `i` gets
    /// [`Loose::Object`], or what the value is instead. A repeated key starts the slots (and the
    /// metadata, if the table has it) afresh.
    Obj(usize, &'static [Field], usize),
    /// A list of objects, each read by its table into `stride` values of [`Slots::list`] (the
    /// element's own kind first, then its slots from 1); slot `i` gets the list's kind
    /// ([`Loose::Array`], or what the value is instead).
    List(usize, &'static [Field], usize),
}

/// A field a record reads: its key and where its value goes. Every other key is skipped.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    pub key: &'static str,
    pub to: To,
}

/// A field of a table.
pub const fn field(key: &'static str, to: To) -> Field {
    Field { key, to }
}

/// The key that stands for the configured tagged-address name ([`Ctx::tag`]).
pub const TAG: &str = "\0tag";

/// Slots per record.
pub const SLOTS: usize = 17;

/// One record as its table read it: the fields are the slots its table names (absent ones
/// [`Loose::Absent`]).
#[derive(Debug, Default)]
pub struct Slots<'a> {
    pub v: [Loose<'a>; SLOTS],
    pub meta: Meta<'a>,
    pub list: Vec<Loose<'a>>,
}

impl Slots<'_> {
    fn clear(&mut self) {
        for v in &mut self.v {
            *v = Loose::Absent;
        }
        self.meta.clear();
        self.list.clear();
    }
}

/// Reads the fields of the object just opened into `v` (and, in a record, its metadata and list).
fn fields<'a>(
    r: &mut Reader<'a>,
    cx: Ctx<'_>,
    table: &[Field],
    v: &mut [Loose<'a>],
    mut rest: Option<(&mut Meta<'a>, &mut Vec<Loose<'a>>)>,
) -> Res<()> {
    while let Some(k) = r.key()? {
        let found =
            table.iter().find(|f| if same(f.key, TAG) { cx.tag.is_some_and(|t| same(t, &k)) } else { same(f.key, &k) });
        let Some(f) = found else {
            r.skip()?;
            continue;
        };
        match f.to {
            To::Val(i) => {
                let x = loose(r)?;
                put(v, i, x);
            }
            To::Meta => match rest.as_mut() {
                Some((md, _)) => meta(r, cx, md)?,
                None => meta(r, cx, &mut Meta::default())?,
            },
            To::Obj(i, sub, end) => {
                for s in v.get_mut(i + 1..end).unwrap_or_default() {
                    *s = Loose::Absent;
                }
                if let Some((md, _)) = rest.as_mut().filter(|_| sub.iter().any(|f| matches!(f.to, To::Meta))) {
                    md.clear();
                }
                let t = r.token()?;
                if t == Tok::Obj {
                    put(v, i, Loose::Object);
                    fields(r, cx, sub, v, rest.as_mut().map(|(m, l)| (&mut **m, &mut **l)))?;
                } else {
                    let x = loose_of(r, t)?;
                    put(v, i, x);
                }
            }
            To::List(i, sub, stride) => {
                let Some((_, list)) = rest.as_mut() else {
                    r.skip()?;
                    continue;
                };
                list.clear();
                let t = r.token()?;
                if t != Tok::Arr {
                    let x = loose_of(r, t)?;
                    put(v, i, x);
                    continue;
                }
                while r.elem()? {
                    let start = list.len();
                    list.resize(start + stride, Loose::Absent);
                    let el = list.get_mut(start..).unwrap_or_default();
                    let t = r.token()?;
                    if t == Tok::Obj {
                        put(el, 0, Loose::Object);
                        fields(r, cx, sub, el, None)?;
                    } else {
                        let x = loose_of(r, t)?;
                        put(el, 0, x);
                    }
                }
                put(v, i, Loose::Array);
            }
        }
    }
    Ok(())
}

/// `a == b`, their lengths and first bytes compared first: keys that differ mostly differ there.
#[inline(always)]
fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.first() == b.first() && a == b
}

fn put<'a>(v: &mut [Loose<'a>], i: usize, x: Loose<'a>) {
    if let Some(s) = v.get_mut(i) {
        *s = x;
    }
}

/// Where the records of a list go: `each` makes each into a [`Rec`] for `batch` (an element that
/// is not an object is skipped and counted).
pub struct Sink<'s, 'a> {
    pub table: &'static [Field],
    pub slots: &'s mut Slots<'a>,
    pub batch: &'s mut Batch,
    pub each: &'s dyn Fn(&mut Slots<'a>) -> Rec,
}

/// One element, `t` its first token.
fn record<'a>(r: &mut Reader<'a>, cx: Ctx<'_>, t: Tok<'a>, s: &mut Sink<'_, 'a>) -> Res<()> {
    if t != Tok::Obj {
        loose_of(r, t)?;
        s.batch.add(Rec::Skipped);
        return Ok(());
    }
    s.slots.clear();
    let Slots { v, meta, list } = &mut *s.slots;
    fields(r, cx, s.table, v, Some((meta, list)))?;
    let rec = (s.each)(s.slots);
    s.batch.add(rec);
    Ok(())
}

/// The records of the array just opened, into `s`.
pub fn elements<'a>(r: &mut Reader<'a>, cx: Ctx<'_>, s: &mut Sink<'_, 'a>) -> Res<()> {
    while r.elem()? {
        let t = r.token()?;
        record(r, cx, t, s)?;
    }
    Ok(())
}

/// The next value as a list of records into `s`; its kind is returned: [`Loose::Array`], with
/// `one` [`Loose::Object`] for a bare object read as a list of one (Eureka's Jackson codec writes
/// a list of one that way), or what the value is instead (then nothing is added).
pub fn records<'a>(r: &mut Reader<'a>, cx: Ctx<'_>, one: bool, s: &mut Sink<'_, 'a>) -> Res<Loose<'a>> {
    match r.token()? {
        Tok::Arr => elements(r, cx, s).map(|()| Loose::Array),
        Tok::Obj if one => record(r, cx, Tok::Obj, s).map(|()| Loose::Object),
        t => loose_of(r, t),
    }
}

/// Metadata with only the keys that are read, borrowed from the body where it can be.
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

/// Reads a metadata object into `out` (cleared first) keeping only the keys in `cx.keys`: a
/// string value as it is, a number or a boolean as its JSON text. A key's last value counts. The
/// values of every other key are checked and dropped without being copied.
pub fn meta<'a>(r: &mut Reader<'a>, cx: Ctx<'_>, out: &mut Meta<'a>) -> Res<()> {
    out.clear();
    match r.token()? {
        Tok::Obj => {}
        Tok::Null => return Ok(()),
        t => {
            r.skip_after(&t)?;
            out.bad = 1;
            return Ok(());
        }
    }
    let kept = &mut out.kept;
    // keys whose last value so far is not a scalar (rare: usually empty)
    let mut bad: Vec<Cow<'_, str>> = Vec::new();
    while let Some(k) = r.key()? {
        let keep = cx.keys.iter().any(|c| same(c, &k));
        let t = r.token()?;
        // a kept key's value as text; of any other key only whether it is a scalar
        let text = if keep {
            loose_of(r, t)?.into_text()
        } else {
            let scalar = !matches!(t, Tok::Null | Tok::Arr | Tok::Obj);
            r.skip_after(&t)?;
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
    out.bad = u32::try_from(bad.len()).unwrap_or(u32::MAX);
    Ok(())
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

/// How far a [`Batch`] had got (to drop what was added since).
#[derive(Debug, Clone, Copy)]
pub struct Mark(usize, u32, u32, usize);

impl Batch {
    pub fn mark(&self) -> Mark {
        Mark(self.instances.len(), self.skipped, self.malformed_meta, self.unroutable.len())
    }

    /// Drops what was added since `m`.
    pub fn truncate(&mut self, m: Mark) {
        self.instances.truncate(m.0);
        self.skipped = m.1;
        self.malformed_meta = m.2;
        self.unroutable.truncate(m.3);
    }

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
        read(body.as_bytes(), |r| super::meta(r, Ctx { keys, tag: None }, &mut m))?;
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
