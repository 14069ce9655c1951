//! A JSON pull reader over a byte slice, the one tokenizer of the module: the configuration's
//! tree ([`super::Json`]) and every registry reply are read with it.
//!
//! It accepts and refuses exactly what `serde_json::from_slice` does (without `float_roundtrip`:
//! the same number kinds and the same float values), with serde_json's error wording and
//! position (`expected value at line 1 column 5`): strings are checked for escapes, surrogate
//! pairs, control characters and UTF-8; numbers out of `f64` range are refused; arrays and objects
//! nest at most 127 deep. [`Reader::ignore`] drops a value as serde's `IgnoredAny` does, with
//! serde_json's looser checks there (no number range, no UTF-8 or surrogate check, no depth limit).

use std::borrow::Cow;
use std::fmt;

use serde::de::{Error as _, Unexpected};

/// Why a document was refused: serde_json's message, and where (a 1-based line and the column
/// serde_json reports; line 0 when there is no position). Boxed, so that results stay small.
#[derive(Debug, Clone, PartialEq)]
pub struct Error(Box<Inner>);

#[derive(Debug, Clone, PartialEq)]
struct Inner {
    msg: Cow<'static, str>,
    line: usize,
    column: usize,
}

impl Error {
    pub fn line(&self) -> usize {
        self.0.line
    }

    pub fn column(&self) -> usize {
        self.0.column
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = &self.0;
        if e.line == 0 {
            f.write_str(&e.msg)
        } else {
            write!(f, "{} at line {} column {}", e.msg, e.line, e.column)
        }
    }
}

pub type Res<T> = Result<T, Error>;

/// One value as it starts: a scalar, or the opening of an array or an object (read its content
/// with [`Reader::elem`] or [`Reader::key`], or drop it with [`Reader::skip_after`]). Numbers
/// keep serde_json's three kinds: `U` (non-negative integer), `I` (negative integer), `F`
/// (anything else, including `-0` and integers beyond 64 bits).
#[derive(Debug, Clone, PartialEq)]
pub enum Tok<'a> {
    Null,
    Bool(bool),
    U(u64),
    I(i64),
    F(f64),
    /// Borrowed from the document unless it holds an escape.
    Str(Cow<'a, str>),
    Arr,
    Obj,
}

impl Tok<'_> {
    /// serde's name for the value, as `invalid type` errors show it.
    pub fn unexpected(&self) -> Unexpected<'_> {
        match self {
            Tok::Null => Unexpected::Unit,
            Tok::Bool(b) => Unexpected::Bool(*b),
            Tok::U(n) => Unexpected::Unsigned(*n),
            Tok::I(n) => Unexpected::Signed(*n),
            Tok::F(f) => Unexpected::Float(*f),
            Tok::Str(s) => Unexpected::Str(s),
            Tok::Arr => Unexpected::Seq,
            Tok::Obj => Unexpected::Map,
        }
    }
}

const EOF_LIST: &str = "EOF while parsing a list";
const EOF_OBJECT: &str = "EOF while parsing an object";
const EOF_STRING: &str = "EOF while parsing a string";
const EOF_VALUE: &str = "EOF while parsing a value";
const INVALID_NUMBER: &str = "invalid number";
const OUT_OF_RANGE: &str = "number out of range";
const INVALID_ESCAPE: &str = "invalid escape";
const KEY_NOT_STRING: &str = "key must be a string";
const TRAILING_COMMA: &str = "trailing comma";
const TRAILING: &str = "trailing characters";
const LONE_SURROGATE: &str = "lone leading surrogate in hex escape";
const END_OF_HEX: &str = "unexpected end of hex escape";

/// A document being read.
pub struct Reader<'a> {
    s: &'a [u8],
    /// The document as text when all of it is UTF-8 (checked once): a string without escapes is
    /// then a slice of it, not checked again. `None`: each string is checked on its own, which
    /// finds the first bad byte where serde_json does.
    text: Option<&'a str>,
    i: usize,
    /// Levels of nesting still allowed: an array or object at level 128 is refused.
    depth: u8,
    /// The array or object just opened has not yet given an element or key (the next one needs no
    /// comma).
    first: bool,
    /// A key was read; its `:` is not yet (it is checked when the value is read, as serde_json
    /// does).
    colon: bool,
    /// Inside [`Reader::ignore`].
    lenient: bool,
    /// A string with escapes, decoded.
    buf: Vec<u8>,
    /// The arrays (`false`) and objects (`true`) a skip is inside.
    frames: Vec<bool>,
}

impl<'a> Reader<'a> {
    pub fn new(s: &'a [u8]) -> Reader<'a> {
        Reader {
            s,
            text: std::str::from_utf8(s).ok(),
            i: 0,
            depth: 128,
            first: false,
            colon: false,
            lenient: false,
            buf: Vec::new(),
            frames: Vec::new(),
        }
    }

    /// An error at byte `i`, positioned as serde_json positions it.
    #[cold]
    fn at(&self, i: usize, msg: Cow<'static, str>) -> Error {
        let i = i.min(self.s.len());
        let head = self.s.get(..i).unwrap_or_default();
        let start = head.iter().rposition(|b| *b == b'\n').map_or(0, |p| p + 1);
        let line = 1 + head.get(..start).unwrap_or_default().iter().filter(|b| **b == b'\n').count();
        Error(Box::new(Inner { msg, line, column: i - start }))
    }

    /// An error about the byte just consumed (serde_json's `error`).
    #[cold]
    fn err(&self, msg: &'static str) -> Error {
        self.at(self.i, Cow::Borrowed(msg))
    }

    /// An error about the byte not yet consumed (serde_json's `peek_error`).
    #[cold]
    fn peek_err(&self, msg: &'static str) -> Error {
        self.at(self.i + 1, Cow::Borrowed(msg))
    }

    /// An error of the document's shape (a missing or repeated field) where the reader is.
    #[cold]
    pub fn custom(&self, msg: String) -> Error {
        self.at(self.i, Cow::Owned(msg))
    }

    #[inline(always)]
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    #[inline(always)]
    fn peek0(&self) -> u8 {
        self.peek().unwrap_or(0)
    }

    #[inline(always)]
    fn bump(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.i += 1;
        Some(b)
    }

    /// The next byte that is not whitespace, not consumed. Compact JSON has none: that case costs
    /// one comparison.
    #[inline(always)]
    fn ws(&mut self) -> Option<u8> {
        match self.peek() {
            Some(b' ' | b'\n' | b'\t' | b'\r') => self.ws_run(),
            b => b,
        }
    }

    /// [`Reader::ws`] past a run of whitespace.
    #[inline(never)]
    fn ws_run(&mut self) -> Option<u8> {
        while let Some(b) = self.peek() {
            if !matches!(b, b' ' | b'\n' | b'\t' | b'\r') {
                return Some(b);
            }
            self.i += 1;
        }
        None
    }

    /// Where the next value starts: its first byte (after the pending `:`), not consumed.
    fn start(&mut self) -> Res<u8> {
        if self.colon {
            self.colon = false;
            match self.ws() {
                Some(b':') => self.i += 1,
                Some(_) => return Err(self.peek_err("expected `:`")),
                None => return Err(self.peek_err(EOF_OBJECT)),
            }
        }
        self.ws().ok_or_else(|| self.peek_err(EOF_VALUE))
    }

    fn ident(&mut self, rest: &[u8]) -> Res<()> {
        for want in rest {
            match self.bump() {
                None => return Err(self.err(EOF_VALUE)),
                Some(b) if b != *want => return Err(self.err("expected ident")),
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// Enters an array or object whose first byte is next.
    fn open(&mut self) -> Res<()> {
        if !self.lenient {
            self.depth -= 1;
            if self.depth == 0 {
                return Err(self.peek_err("recursion limit exceeded"));
            }
        }
        self.i += 1;
        self.first = true;
        Ok(())
    }

    /// Leaves the array or object whose closing byte is next.
    fn close(&mut self) {
        self.i += 1;
        self.first = false;
        if !self.lenient {
            self.depth += 1;
        }
    }

    /// The next value.
    pub fn token(&mut self) -> Res<Tok<'a>> {
        let b = self.start()?;
        Ok(match b {
            b'n' => {
                self.i += 1;
                self.ident(b"ull")?;
                Tok::Null
            }
            b't' => {
                self.i += 1;
                self.ident(b"rue")?;
                Tok::Bool(true)
            }
            b'f' => {
                self.i += 1;
                self.ident(b"alse")?;
                Tok::Bool(false)
            }
            b'-' | b'0'..=b'9' => {
                let positive = b != b'-';
                if !positive {
                    self.i += 1;
                }
                if self.lenient {
                    self.ignore_number()?;
                    Tok::Null
                } else {
                    self.number(positive)?
                }
            }
            b'"' => {
                self.i += 1;
                if self.lenient {
                    self.ignore_str()?;
                    Tok::Null
                } else {
                    Tok::Str(self.string()?)
                }
            }
            b'[' => {
                self.open()?;
                Tok::Arr
            }
            b'{' => {
                self.open()?;
                Tok::Obj
            }
            _ => return Err(self.peek_err("expected value")),
        })
    }

    /// Whether the array being read has another element (then read it); `false` after its `]`.
    pub fn elem(&mut self) -> Res<bool> {
        let b = self.ws().ok_or_else(|| self.peek_err(EOF_LIST))?;
        if b == b']' {
            self.close();
            Ok(false)
        } else if self.first {
            self.first = false;
            Ok(true)
        } else if b == b',' {
            self.i += 1;
            match self.ws() {
                Some(b']') => Err(self.peek_err(TRAILING_COMMA)),
                Some(_) => Ok(true),
                None => Err(self.peek_err(EOF_VALUE)),
            }
        } else {
            Err(self.peek_err("expected `,` or `]`"))
        }
    }

    /// The next key of the object being read (then read its value); `None` after its `}`.
    pub fn key(&mut self) -> Res<Option<Cow<'a, str>>> {
        let b = self.ws().ok_or_else(|| self.peek_err(EOF_OBJECT))?;
        if b == b'}' {
            self.close();
            return Ok(None);
        }
        if self.first {
            self.first = false;
            if b != b'"' {
                return Err(self.peek_err(KEY_NOT_STRING));
            }
        } else if b == b',' {
            self.i += 1;
            match self.ws() {
                Some(b'"') => {}
                Some(b'}') => return Err(self.peek_err(TRAILING_COMMA)),
                Some(_) => return Err(self.peek_err(KEY_NOT_STRING)),
                None => return Err(self.peek_err(EOF_VALUE)),
            }
        } else {
            return Err(self.peek_err("expected `,` or `}`"));
        }
        self.i += 1;
        let k = if self.lenient {
            self.ignore_str()?;
            Cow::Borrowed("")
        } else {
            self.string()?
        };
        self.colon = true;
        Ok(Some(k))
    }

    /// After the element or field read last, the end of an array that has no more (serde_json's
    /// check after a fixed number of elements).
    pub fn end_seq(&mut self) -> Res<()> {
        match self.ws() {
            Some(b']') => {
                self.close();
                Ok(())
            }
            Some(b',') => {
                self.i += 1;
                let msg = if self.ws() == Some(b']') { TRAILING_COMMA } else { TRAILING };
                Err(self.peek_err(msg))
            }
            Some(_) => Err(self.peek_err(TRAILING)),
            None => Err(self.peek_err(EOF_LIST)),
        }
    }

    /// Only whitespace is left.
    pub fn end(&mut self) -> Res<()> {
        match self.ws() {
            Some(_) => Err(self.peek_err(TRAILING)),
            None => Ok(()),
        }
    }

    /// Opens the next value, which must be an array (or, with `map`, an object: then `true`);
    /// anything else is serde_json's `invalid type: ..., expected {exp}`.
    pub fn container(&mut self, exp: &str, map: bool) -> Res<bool> {
        let b = self.start()?;
        let found = match b {
            b'[' => return self.open().map(|()| false),
            b'{' if map => return self.open().map(|()| true),
            b'{' => Tok::Obj,
            _ => self.token()?,
        };
        let msg = serde_json::Error::invalid_type(found.unexpected(), &exp).to_string();
        Err(self.custom(msg))
    }

    /// Drops the next value (checked as when it is read).
    pub fn skip(&mut self) -> Res<()> {
        let t = self.token()?;
        self.skip_after(&t)
    }

    /// Drops the next value as serde's `IgnoredAny` does (serde_json's looser checks).
    pub fn ignore(&mut self) -> Res<()> {
        self.lenient = true;
        let r = self.skip();
        self.lenient = false;
        r
    }

    /// After `t`, the token just read: drops the rest of its array or object, if it opened one.
    pub fn skip_after(&mut self, t: &Tok<'_>) -> Res<()> {
        let base = self.frames.len();
        let mut open = match t {
            Tok::Arr => Some(false),
            Tok::Obj => Some(true),
            _ => None,
        };
        loop {
            if let Some(obj) = open {
                self.frames.push(obj);
            }
            loop {
                let Some(obj) = self.frames.last().copied().filter(|_| self.frames.len() > base) else {
                    return Ok(());
                };
                let more = if obj { self.key()?.is_some() } else { self.elem()? };
                if more {
                    break;
                }
                self.frames.pop();
            }
            open = match self.token()? {
                Tok::Arr => Some(false),
                Tok::Obj => Some(true),
                _ => None,
            };
        }
    }

    /// Moves to the next `"`, `\` or control character of a string (or the end).
    fn scan(&mut self) {
        const ONES: u64 = u64::MAX / 255;
        const HIGH: u64 = ONES << 7;
        while let Some(chunk) = self.s.get(self.i..self.i + 8) {
            let Ok(bytes) = <[u8; 8]>::try_from(chunk) else { break };
            let x = u64::from_le_bytes(bytes);
            let quote = x ^ (ONES * u64::from(b'"'));
            let slash = x ^ (ONES * u64::from(b'\\'));
            let hits = (x.wrapping_sub(ONES * 0x20) & !x)
                | (quote.wrapping_sub(ONES) & !quote)
                | (slash.wrapping_sub(ONES) & !slash);
            let hits = hits & HIGH;
            if hits != 0 {
                self.i += hits.trailing_zeros() as usize / 8;
                return;
            }
            self.i += 8;
        }
        while let Some(b) = self.peek() {
            if b == b'"' || b == b'\\' || b < 0x20 {
                return;
            }
            self.i += 1;
        }
    }

    /// A string after its opening `"`, up to and including its closing one.
    fn string(&mut self) -> Res<Cow<'a, str>> {
        let s = self.s;
        self.buf.clear();
        let mut from = self.i;
        loop {
            self.scan();
            match self.peek() {
                None => return Err(self.err(EOF_STRING)),
                Some(b'"') => {
                    let to = self.i;
                    let raw = s.get(from..to).unwrap_or_default();
                    self.i += 1;
                    if self.buf.is_empty() {
                        // both ends are at ASCII bytes (a quote or an escape), so at char boundaries
                        if let Some(t) = self.text.and_then(|t| t.get(from..to)) {
                            return Ok(Cow::Borrowed(t));
                        }
                        return self.utf8(raw).map(Cow::Borrowed);
                    }
                    self.buf.extend_from_slice(raw);
                    let buf = std::mem::take(&mut self.buf);
                    let r = self.utf8(&buf).map(|t| Cow::Owned(t.to_owned()));
                    self.buf = buf;
                    return r;
                }
                Some(b'\\') => {
                    self.buf.extend_from_slice(s.get(from..self.i).unwrap_or_default());
                    self.i += 1;
                    self.escape()?;
                    from = self.i;
                }
                Some(_) => {
                    self.i += 1;
                    return Err(self.err("control character (\\u0000-\\u001F) found while parsing a string"));
                }
            }
        }
    }

    /// `raw` as text; the error points at the first byte that is not UTF-8, as serde_json's does.
    fn utf8<'t>(&self, raw: &'t [u8]) -> Res<&'t str> {
        std::str::from_utf8(raw).map_err(|e| {
            let mut err = self.err("invalid unicode code point");
            err.0.column = err.0.column.saturating_sub(raw.len() - e.valid_up_to());
            err
        })
    }

    /// An escape after its `\`, decoded into `buf`.
    fn escape(&mut self) -> Res<()> {
        let c = self.bump().ok_or_else(|| self.err(EOF_STRING))?;
        let b = match c {
            b'"' | b'\\' | b'/' => c,
            b'b' => 0x08,
            b'f' => 0x0c,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'u' => return self.unicode(),
            _ => return Err(self.err(INVALID_ESCAPE)),
        };
        self.buf.push(b);
        Ok(())
    }

    /// Four hex digits.
    fn hex4(&mut self) -> Res<u16> {
        let Some(digits) = self.s.get(self.i..self.i + 4) else {
            self.i = self.s.len();
            return Err(self.err(EOF_STRING));
        };
        self.i += 4;
        let mut n = 0u16;
        for d in digits {
            let v = match d {
                b'0'..=b'9' => d - b'0',
                b'a'..=b'f' => d - b'a' + 10,
                b'A'..=b'F' => d - b'A' + 10,
                _ => return Err(self.err(INVALID_ESCAPE)),
            };
            n = n << 4 | u16::from(v);
        }
        Ok(n)
    }

    /// A `\u` escape after its `u` (a surrogate pair takes two).
    fn unicode(&mut self) -> Res<()> {
        let n = self.hex4()?;
        let c = match n {
            0xDC00..=0xDFFF => return Err(self.err(LONE_SURROGATE)),
            0xD800..=0xDBFF => {
                for want in [b'\\', b'u'] {
                    match self.peek() {
                        None => return Err(self.err(EOF_STRING)),
                        Some(b) => {
                            self.i += 1;
                            if b != want {
                                return Err(self.err(END_OF_HEX));
                            }
                        }
                    }
                }
                let low = self.hex4()?;
                if !(0xDC00..=0xDFFF).contains(&low) {
                    return Err(self.err(LONE_SURROGATE));
                }
                0x1_0000 + ((u32::from(n) - 0xD800) << 10 | (u32::from(low) - 0xDC00))
            }
            _ => u32::from(n),
        };
        let mut utf8 = [0u8; 4];
        let c = char::from_u32(c).unwrap_or(char::REPLACEMENT_CHARACTER);
        self.buf.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
        Ok(())
    }

    /// A string after its opening `"`, dropped: escapes checked, not decoded.
    fn ignore_str(&mut self) -> Res<()> {
        loop {
            self.scan();
            match self.peek() {
                None => return Err(self.err(EOF_STRING)),
                Some(b'"') => {
                    self.i += 1;
                    return Ok(());
                }
                Some(b'\\') => {
                    self.i += 1;
                    match self.bump() {
                        None => return Err(self.err(EOF_STRING)),
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {}
                        Some(b'u') => {
                            self.hex4()?;
                        }
                        Some(_) => return Err(self.err(INVALID_ESCAPE)),
                    }
                }
                Some(_) => return Err(self.err("control character (\\u0000-\\u001F) found while parsing a string")),
            }
        }
    }

    #[inline(always)]
    fn digit(&self) -> Option<u8> {
        self.peek().filter(u8::is_ascii_digit).map(|d| d - b'0')
    }

    fn skip_digits(&mut self) {
        while self.digit().is_some() {
            self.i += 1;
        }
    }

    /// A number after its sign, dropped: its syntax checked, not its range.
    fn ignore_number(&mut self) -> Res<()> {
        match self.bump() {
            Some(b'0') => {
                if self.digit().is_some() {
                    return Err(self.peek_err(INVALID_NUMBER));
                }
            }
            Some(b'1'..=b'9') => self.skip_digits(),
            _ => return Err(self.err(INVALID_NUMBER)),
        }
        if self.peek0() == b'.' {
            self.i += 1;
            if self.digit().is_none() {
                return Err(self.peek_err(INVALID_NUMBER));
            }
            self.skip_digits();
        }
        if matches!(self.peek0(), b'e' | b'E') {
            self.i += 1;
            if matches!(self.peek0(), b'+' | b'-') {
                self.i += 1;
            }
            if !self.bump().is_some_and(|b| b.is_ascii_digit()) {
                return Err(self.err(INVALID_NUMBER));
            }
            self.skip_digits();
        }
        Ok(())
    }

    /// A number after its sign.
    fn number(&mut self, positive: bool) -> Res<Tok<'a>> {
        let mut sig = match self.bump() {
            None => return Err(self.err(EOF_VALUE)),
            Some(b'0') => {
                if self.digit().is_some() {
                    return Err(self.peek_err(INVALID_NUMBER));
                }
                0
            }
            Some(c @ b'1'..=b'9') => u64::from(c - b'0'),
            Some(_) => return Err(self.err(INVALID_NUMBER)),
        };
        while let Some(d) = self.digit() {
            let Some(next) = sig.checked_mul(10).and_then(|s| s.checked_add(u64::from(d))) else {
                // beyond u64: a float, the further digits only scale it
                let mut exp = 0i32;
                while self.digit().is_some() {
                    self.i += 1;
                    exp += 1;
                }
                return self.fraction(positive, sig, exp).map(Tok::F);
            };
            self.i += 1;
            sig = next;
        }
        Ok(match self.peek0() {
            b'.' | b'e' | b'E' => Tok::F(self.fraction(positive, sig, 0)?),
            _ if positive => Tok::U(sig),
            _ => {
                let neg = (sig as i64).wrapping_neg();
                // `-0` and what does not fit an i64 are floats
                if neg >= 0 {
                    Tok::F(-(sig as f64))
                } else {
                    Tok::I(neg)
                }
            }
        })
    }

    /// The fraction and exponent of a float whose integer digits gave `sig` × 10^`exp`.
    fn fraction(&mut self, positive: bool, mut sig: u64, mut exp: i32) -> Res<f64> {
        if self.peek0() == b'.' {
            self.i += 1;
            let mut any = false;
            let mut full = false;
            while let Some(d) = self.digit() {
                self.i += 1;
                any = true;
                // digits beyond u64 are dropped
                match sig.checked_mul(10).and_then(|s| s.checked_add(u64::from(d))) {
                    Some(next) if !full => {
                        sig = next;
                        exp -= 1;
                    }
                    _ => full = true,
                }
            }
            if !any {
                return Err(self.peek_err(if self.peek().is_some() { INVALID_NUMBER } else { EOF_VALUE }));
            }
        }
        if matches!(self.peek0(), b'e' | b'E') {
            self.i += 1;
            let positive_exp = match self.peek0() {
                b'-' => {
                    self.i += 1;
                    false
                }
                b'+' => {
                    self.i += 1;
                    true
                }
                _ => true,
            };
            let mut e = match self.bump() {
                None => return Err(self.err(EOF_VALUE)),
                Some(c @ b'0'..=b'9') => i32::from(c - b'0'),
                Some(_) => return Err(self.err(INVALID_NUMBER)),
            };
            while let Some(d) = self.digit() {
                self.i += 1;
                match e.checked_mul(10).and_then(|x| x.checked_add(i32::from(d))) {
                    Some(next) => e = next,
                    None => {
                        // an exponent beyond i32: zero, or out of range
                        if sig != 0 && positive_exp {
                            return Err(self.err(OUT_OF_RANGE));
                        }
                        self.skip_digits();
                        return Ok(if positive { 0.0 } else { -0.0 });
                    }
                }
            }
            exp = if positive_exp { exp.saturating_add(e) } else { exp.saturating_sub(e) };
        }
        self.float(positive, sig, exp)
    }

    /// `sig` × 10^`exp`, by serde_json's arithmetic (a multiplication or division by a power of
    /// ten).
    fn float(&self, positive: bool, sig: u64, mut exp: i32) -> Res<f64> {
        let mut f = sig as f64;
        loop {
            match POW10.get(exp.unsigned_abs() as usize) {
                Some(&p) => {
                    if exp >= 0 {
                        f *= p;
                        if f.is_infinite() {
                            return Err(self.err(OUT_OF_RANGE));
                        }
                    } else {
                        f /= p;
                    }
                    break;
                }
                None => {
                    if f == 0.0 {
                        break;
                    }
                    if exp >= 0 {
                        return Err(self.err(OUT_OF_RANGE));
                    }
                    f /= 1e308;
                    exp += 308;
                }
            }
        }
        Ok(if positive { f } else { -f })
    }
}

/// 10^0 to 10^308.
#[rustfmt::skip]
static POW10: [f64; 309] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9,
    1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19,
    1e20, 1e21, 1e22, 1e23, 1e24, 1e25, 1e26, 1e27, 1e28, 1e29,
    1e30, 1e31, 1e32, 1e33, 1e34, 1e35, 1e36, 1e37, 1e38, 1e39,
    1e40, 1e41, 1e42, 1e43, 1e44, 1e45, 1e46, 1e47, 1e48, 1e49,
    1e50, 1e51, 1e52, 1e53, 1e54, 1e55, 1e56, 1e57, 1e58, 1e59,
    1e60, 1e61, 1e62, 1e63, 1e64, 1e65, 1e66, 1e67, 1e68, 1e69,
    1e70, 1e71, 1e72, 1e73, 1e74, 1e75, 1e76, 1e77, 1e78, 1e79,
    1e80, 1e81, 1e82, 1e83, 1e84, 1e85, 1e86, 1e87, 1e88, 1e89,
    1e90, 1e91, 1e92, 1e93, 1e94, 1e95, 1e96, 1e97, 1e98, 1e99,
    1e100, 1e101, 1e102, 1e103, 1e104, 1e105, 1e106, 1e107, 1e108, 1e109,
    1e110, 1e111, 1e112, 1e113, 1e114, 1e115, 1e116, 1e117, 1e118, 1e119,
    1e120, 1e121, 1e122, 1e123, 1e124, 1e125, 1e126, 1e127, 1e128, 1e129,
    1e130, 1e131, 1e132, 1e133, 1e134, 1e135, 1e136, 1e137, 1e138, 1e139,
    1e140, 1e141, 1e142, 1e143, 1e144, 1e145, 1e146, 1e147, 1e148, 1e149,
    1e150, 1e151, 1e152, 1e153, 1e154, 1e155, 1e156, 1e157, 1e158, 1e159,
    1e160, 1e161, 1e162, 1e163, 1e164, 1e165, 1e166, 1e167, 1e168, 1e169,
    1e170, 1e171, 1e172, 1e173, 1e174, 1e175, 1e176, 1e177, 1e178, 1e179,
    1e180, 1e181, 1e182, 1e183, 1e184, 1e185, 1e186, 1e187, 1e188, 1e189,
    1e190, 1e191, 1e192, 1e193, 1e194, 1e195, 1e196, 1e197, 1e198, 1e199,
    1e200, 1e201, 1e202, 1e203, 1e204, 1e205, 1e206, 1e207, 1e208, 1e209,
    1e210, 1e211, 1e212, 1e213, 1e214, 1e215, 1e216, 1e217, 1e218, 1e219,
    1e220, 1e221, 1e222, 1e223, 1e224, 1e225, 1e226, 1e227, 1e228, 1e229,
    1e230, 1e231, 1e232, 1e233, 1e234, 1e235, 1e236, 1e237, 1e238, 1e239,
    1e240, 1e241, 1e242, 1e243, 1e244, 1e245, 1e246, 1e247, 1e248, 1e249,
    1e250, 1e251, 1e252, 1e253, 1e254, 1e255, 1e256, 1e257, 1e258, 1e259,
    1e260, 1e261, 1e262, 1e263, 1e264, 1e265, 1e266, 1e267, 1e268, 1e269,
    1e270, 1e271, 1e272, 1e273, 1e274, 1e275, 1e276, 1e277, 1e278, 1e279,
    1e280, 1e281, 1e282, 1e283, 1e284, 1e285, 1e286, 1e287, 1e288, 1e289,
    1e290, 1e291, 1e292, 1e293, 1e294, 1e295, 1e296, 1e297, 1e298, 1e299,
    1e300, 1e301, 1e302, 1e303, 1e304, 1e305, 1e306, 1e307, 1e308,
];

#[cfg(test)]
mod tests {
    use super::super::Json;

    /// The reader accepts, refuses and reads what serde_json does, with its error messages.
    #[test]
    fn reads_as_serde_json_does() {
        let deep = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
        let mut cases: Vec<String> = [
            "",
            " ",
            "null",
            "nul",
            "nulx",
            "true",
            "tru",
            "false",
            "x",
            "-",
            "-x",
            "0",
            "-0",
            "00",
            "01",
            "1.",
            "1.x",
            "1e",
            "1e+",
            "1ex",
            "1.5e3",
            "-2.25E-2",
            "1e400",
            "-1e400",
            "1e-400",
            "0e999999999999",
            "1e999999999999",
            "0.000000000000000000000000000001e-300",
            "18446744073709551615",
            "18446744073709551616",
            "-9223372036854775808",
            "-9223372036854775809",
            "123456789012345678901234567890",
            "1234567890123456789012.5e-3",
            "0.12345678901234567890123",
            "3.141592653589793238462643383279",
            "4.9e-324",
            "1.7976931348623157e308",
            "2.2250738585072014e-308",
            "\"\"",
            "\"abc\"",
            "\"a\\\"b\\\\c\\/\"",
            "\"\\b\\f\\n\\r\\t\"",
            "\"\\u00e9\\u4e2d\"",
            "\"\\ud83d\\ude00\"",
            "\"\\ud83d\"",
            "\"\\ud83dx\"",
            "\"\\ud83d\\x\"",
            "\"\\ude00\"",
            "\"\\ud83d\\u0041\"",
            "\"\\u12\"",
            "\"\\u12g4\"",
            "\"\\q\"",
            "\"abc",
            "\"a\u{1}b\"",
            "\"ключ ✓\"",
            "[]",
            "[ ]",
            "[1,]",
            "[1 2]",
            "[1",
            "[",
            "[,1]",
            "{}",
            "{ }",
            "{\"a\":1}",
            "{\"a\" 1}",
            "{\"a\":}",
            "{\"a\":1,}",
            "{\"a\":1 \"b\":2}",
            "{1:2}",
            "{\"a\"",
            "{\"a\":1",
            "{",
            "{,}",
            "{\"a\":1,\"a\":2}",
            "[1] x",
            "1 2",
            " {\"k\": [true, false, null, {\"x\": -1.5}]} ",
            "\n\n  [1,\n  2,\n  x]",
            "{\"a\":\n\"\\u00\"}",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        cases.extend([deep(126), deep(127), deep(128), deep(200)]);
        for c in &cases {
            let ours = Json::parse(c.as_bytes()).map_err(|e| e.to_string());
            let theirs = serde_json::from_slice::<Json>(c.as_bytes()).map_err(|e| e.to_string());
            match (&ours, &theirs) {
                (Ok(Json::F(a)), Ok(Json::F(b))) => assert_eq!(a.to_bits(), b.to_bits(), "{c:?}"),
                _ => assert_eq!(ours, theirs, "{c:?}"),
            }
        }
        // invalid UTF-8, raw and after an escape
        // (a document that is not all UTF-8 has each string checked on its own: the error is at the
        // first bad string, whatever came before)
        for bytes in [
            &b"\"a\xffb\""[..],
            b"[\"\\n\xc3\"]",
            b"\"\xe2\x82\"",
            b"[\"ok\",\n \"\xc3\xa9\", \"a\xffb\"]",
            b"{\"k\":\"v\",\"\xc3\x28\":1}",
            b"[\"\xf0\x9f\xa6\x80\", 1x, \"\xff\"]",
            b"[\"\xc3\xa9\"] \xff",
        ] {
            let ours = Json::parse(bytes).map_err(|e| e.to_string());
            let theirs = serde_json::from_slice::<Json>(bytes).map_err(|e| e.to_string());
            assert_eq!(ours, theirs, "{bytes:?}");
        }
    }
}
