//! AMF0 (Adobe Action Message Format 0 spec, section 2): every type encoders send.

use bytes::{BufMut, BytesMut};
use thiserror::Error;

/// Deepest nesting of objects and arrays we decode. Real metadata nests two levels; the cap
/// stops a stack overflow from a few kilobytes of `0x03` bytes.
pub const MAX_NESTING_DEPTH: usize = 32;
/// Most values one decode may produce (every value counts, nested ones too). A value in
/// memory is many times its wire size (a one-byte null becomes a 56-byte [`Value`]), so the
/// budget is what bounds memory, not the message length: 4,096 values are at most ~230 KiB.
/// Commands hold a dozen values; `onMetaData` from OBS, ffmpeg or Wirecast a few dozen.
pub const MAX_ELEMENTS: usize = 4096;

/// An AMF0 value. Long strings and XML documents decode to `String`.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// number-marker (0x00): IEEE-754 double.
    Number(f64),
    /// boolean-marker (0x01).
    Boolean(bool),
    /// string-marker (0x02), long-string-marker (0x0C), xml-document-marker (0x0F).
    String(String),
    /// object-marker (0x03): ordered properties.
    Object(Vec<(String, Value)>),
    /// null-marker (0x05).
    Null,
    /// undefined-marker (0x06).
    Undefined,
    /// reference-marker (0x07): index of an earlier complex object.
    Reference(u16),
    /// ecma-array-marker (0x08): associative array.
    EcmaArray(Vec<(String, Value)>),
    /// strict-array-marker (0x0A).
    StrictArray(Vec<Value>),
    /// date-marker (0x0B): milliseconds since the epoch and a time zone (reserved, 0).
    Date {
        /// Milliseconds since 1970-01-01 UTC.
        millis: f64,
        /// Time zone offset in minutes; the spec says senders write 0.
        time_zone: i16,
    },
    /// typed-object-marker (0x10).
    TypedObject {
        /// The class name.
        class: String,
        /// Its properties.
        properties: Vec<(String, Value)>,
    },
    /// unsupported-marker (0x0D).
    Unsupported,
}

impl Value {
    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The number, if this is one.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Number(n) => Some(*n),
            _ => None,
        }
    }

    /// Looks a property up in an object, ECMA array or typed object.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Object(p) | Value::EcmaArray(p) | Value::TypedObject { properties: p, .. } => {
                p.iter().find(|(k, _)| k == key).map(|(_, v)| v)
            }
            _ => None,
        }
    }

    /// An object from `(key, value)` pairs.
    pub fn object<'a>(props: impl IntoIterator<Item = (&'a str, Value)>) -> Value {
        Value::Object(props.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::String(s.to_owned())
    }
}

impl From<f64> for Value {
    fn from(n: f64) -> Self {
        Value::Number(n)
    }
}

/// A decoding error with the byte offset where it happened.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("AMF0 at byte {offset}: {kind}")]
pub struct Amf0Error {
    /// Offset in the decoded buffer.
    pub offset: usize,
    /// What rule was broken.
    pub kind: Amf0ErrorKind,
}

/// What was wrong with AMF0 input.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum Amf0ErrorKind {
    /// The input ends inside a value.
    #[error("truncated value")]
    Truncated,
    /// A type marker AMF0 does not define, or one that is not allowed here (`object-end`
    /// outside an object, `movieclip`, `recordset`, `avmplus-object`).
    #[error("unexpected type marker 0x{0:02x}")]
    BadMarker(u8),
    /// Objects or arrays nested deeper than [`MAX_NESTING_DEPTH`].
    #[error("nesting deeper than {MAX_NESTING_DEPTH}")]
    TooDeep,
    /// A strict array claims more elements than bytes remain.
    #[error("strict array of {0} elements exceeds the input")]
    ArrayTooLong(u32),
    /// More values than [`MAX_ELEMENTS`].
    #[error("more than {MAX_ELEMENTS} values")]
    TooManyElements,
}

/// Decodes every value in `data`.
pub fn decode_all(data: &[u8]) -> Result<Vec<Value>, Amf0Error> {
    let mut d = Decoder { data, pos: 0, elements: 0 };
    let mut out = Vec::new();
    while d.pos < data.len() {
        out.push(d.value(0)?);
    }
    Ok(out)
}

/// Decodes one value from the front of `data`, returning it and the bytes it used.
pub fn decode_one(data: &[u8]) -> Result<(Value, usize), Amf0Error> {
    let mut d = Decoder { data, pos: 0, elements: 0 };
    let v = d.value(0)?;
    Ok((v, d.pos))
}

struct Decoder<'a> {
    data: &'a [u8],
    pos: usize,
    /// Values decoded so far, against [`MAX_ELEMENTS`].
    elements: usize,
}

impl Decoder<'_> {
    fn err(&self, kind: Amf0ErrorKind) -> Amf0Error {
        Amf0Error { offset: self.pos, kind }
    }

    fn take(&mut self, n: usize) -> Result<&[u8], Amf0Error> {
        if self.data.len() - self.pos < n {
            return Err(self.err(Amf0ErrorKind::Truncated));
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, Amf0Error> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, Amf0Error> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, Amf0Error> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn f64(&mut self) -> Result<f64, Amf0Error> {
        let b = self.take(8)?;
        Ok(f64::from_be_bytes(b.try_into().expect("8 bytes")))
    }

    fn utf8(&mut self, len: usize) -> Result<String, Amf0Error> {
        Ok(String::from_utf8_lossy(self.take(len)?).into_owned())
    }

    fn short_string(&mut self) -> Result<String, Amf0Error> {
        let len = self.u16()?;
        self.utf8(usize::from(len))
    }

    /// Properties up to the `00 00 09` end marker. ECMA arrays from some encoders end with the
    /// input instead of a marker (seen from old Wirecast builds), so `end_ok` accepts that.
    fn properties(&mut self, depth: usize, end_ok: bool) -> Result<Vec<(String, Value)>, Amf0Error> {
        let mut props = Vec::new();
        loop {
            if end_ok && self.pos == self.data.len() {
                return Ok(props);
            }
            let key = self.short_string()?;
            if key.is_empty() && self.data.get(self.pos) == Some(&0x09) {
                self.pos += 1;
                return Ok(props);
            }
            let v = self.value(depth + 1)?;
            props.push((key, v));
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, Amf0Error> {
        if depth > MAX_NESTING_DEPTH {
            return Err(self.err(Amf0ErrorKind::TooDeep));
        }
        self.elements += 1;
        if self.elements > MAX_ELEMENTS {
            return Err(self.err(Amf0ErrorKind::TooManyElements));
        }
        let marker_at = self.pos;
        let marker = self.u8()?;
        Ok(match marker {
            0x00 => Value::Number(self.f64()?),
            0x01 => Value::Boolean(self.u8()? != 0),
            0x02 => Value::String(self.short_string()?),
            0x03 => Value::Object(self.properties(depth, false)?),
            0x05 => Value::Null,
            0x06 => Value::Undefined,
            0x07 => Value::Reference(self.u16()?),
            0x08 => {
                let _count_hint = self.u32()?;
                Value::EcmaArray(self.properties(depth, true)?)
            }
            0x0a => {
                let count = self.u32()?;
                // Every element takes at least one byte: a larger count is a lie, and must not
                // size an allocation.
                if count as usize > self.data.len() - self.pos {
                    return Err(self.err(Amf0ErrorKind::ArrayTooLong(count)));
                }
                let mut items = Vec::with_capacity((count as usize).min(MAX_ELEMENTS - self.elements));
                for _ in 0..count {
                    items.push(self.value(depth + 1)?);
                }
                Value::StrictArray(items)
            }
            0x0b => {
                let millis = self.f64()?;
                let time_zone = self.u16()? as i16;
                Value::Date { millis, time_zone }
            }
            0x0c | 0x0f => {
                let len = self.u32()?;
                Value::String(self.utf8(len as usize)?)
            }
            0x0d => Value::Unsupported,
            0x10 => {
                let class = self.short_string()?;
                let properties = self.properties(depth, false)?;
                Value::TypedObject { class, properties }
            }
            m => {
                return Err(Amf0Error { offset: marker_at, kind: Amf0ErrorKind::BadMarker(m) });
            }
        })
    }
}

fn put_short_string(out: &mut BytesMut, s: &str) {
    let b = s.as_bytes();
    let len = b.len().min(u16::MAX as usize);
    out.put_u16(len as u16);
    out.put_slice(&b[..len]);
}

fn put_properties(out: &mut BytesMut, props: &[(String, Value)]) {
    for (k, v) in props {
        put_short_string(out, k);
        encode(out, v);
    }
    out.put_slice(&[0, 0, 0x09]);
}

/// Appends the encoding of `v` to `out`. Strings longer than 65,535 bytes become long strings.
pub fn encode(out: &mut BytesMut, v: &Value) {
    match v {
        Value::Number(n) => {
            out.put_u8(0x00);
            out.put_f64(*n);
        }
        Value::Boolean(b) => {
            out.put_u8(0x01);
            out.put_u8(u8::from(*b));
        }
        Value::String(s) if s.len() > u16::MAX as usize => {
            out.put_u8(0x0c);
            out.put_u32(s.len() as u32);
            out.put_slice(s.as_bytes());
        }
        Value::String(s) => {
            out.put_u8(0x02);
            put_short_string(out, s);
        }
        Value::Object(p) => {
            out.put_u8(0x03);
            put_properties(out, p);
        }
        Value::Null => out.put_u8(0x05),
        Value::Undefined => out.put_u8(0x06),
        Value::Reference(r) => {
            out.put_u8(0x07);
            out.put_u16(*r);
        }
        Value::EcmaArray(p) => {
            out.put_u8(0x08);
            out.put_u32(p.len() as u32);
            put_properties(out, p);
        }
        Value::StrictArray(items) => {
            out.put_u8(0x0a);
            out.put_u32(items.len() as u32);
            for i in items {
                encode(out, i);
            }
        }
        Value::Date { millis, time_zone } => {
            out.put_u8(0x0b);
            out.put_f64(*millis);
            out.put_i16(*time_zone);
        }
        Value::TypedObject { class, properties } => {
            out.put_u8(0x10);
            put_short_string(out, class);
            put_properties(out, properties);
        }
        Value::Unsupported => out.put_u8(0x0d),
    }
}

/// Encodes a sequence of values.
pub fn encode_all(values: &[Value]) -> BytesMut {
    let mut out = BytesMut::new();
    for v in values {
        encode(&mut out, v);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_round_trips() {
        let values = vec![
            Value::Number(3.5),
            Value::Boolean(true),
            Value::from("connect"),
            Value::object([("app", Value::from("live")), ("n", Value::Null)]),
            Value::Null,
            Value::Undefined,
            Value::Reference(7),
            Value::EcmaArray(vec![("duration".into(), Value::Number(0.0))]),
            Value::StrictArray(vec![Value::Number(1.0), Value::from("x")]),
            Value::Date { millis: 1.7e12, time_zone: 0 },
            Value::String("y".repeat(70_000)),
            Value::TypedObject { class: "C".into(), properties: vec![("a".into(), Value::Boolean(false))] },
            Value::Unsupported,
        ];
        let bytes = encode_all(&values);
        assert_eq!(decode_all(&bytes).unwrap(), values);
    }

    #[test]
    fn malformed_input_is_a_typed_error() {
        assert_eq!(decode_all(&[0x00, 1, 2]).unwrap_err().kind, Amf0ErrorKind::Truncated);
        assert_eq!(decode_all(&[0x09]).unwrap_err(), Amf0Error { offset: 0, kind: Amf0ErrorKind::BadMarker(9) });
        assert_eq!(decode_all(&[0x02, 0xff, 0xff, b'a']).unwrap_err().kind, Amf0ErrorKind::Truncated);
        assert_eq!(
            decode_all(&[0x0a, 0xff, 0xff, 0xff, 0xff, 0x05]).unwrap_err().kind,
            Amf0ErrorKind::ArrayTooLong(u32::MAX)
        );
        assert_eq!(decode_all(&[0x03, 0, 1, b'k']).unwrap_err().kind, Amf0ErrorKind::Truncated);
    }

    #[test]
    fn nesting_too_deep() {
        let mut bytes = Vec::new();
        for _ in 0..100 {
            bytes.extend_from_slice(&[0x0a, 0, 0, 0, 1]);
        }
        bytes.push(0x05);
        assert_eq!(decode_all(&bytes).unwrap_err().kind, Amf0ErrorKind::TooDeep);
    }

    #[test]
    fn elements_too_many() {
        // A strict array of one-byte nulls, the cheapest way to make many values.
        let array = |n: u32| {
            let mut b = vec![0x0a];
            b.extend_from_slice(&n.to_be_bytes());
            b.resize(5 + n as usize, 0x05);
            b
        };
        // The array itself is one value.
        assert!(decode_all(&array(MAX_ELEMENTS as u32 - 1)).is_ok());
        let err = decode_all(&array(MAX_ELEMENTS as u32)).unwrap_err();
        assert_eq!(err, Amf0Error { offset: 5 + MAX_ELEMENTS - 1, kind: Amf0ErrorKind::TooManyElements });
        // Values in objects and in later top-level values count the same.
        let mut obj = vec![0x03];
        for _ in 0..MAX_ELEMENTS {
            obj.extend_from_slice(&[0, 1, b'k', 0x05]);
        }
        obj.extend_from_slice(&[0, 0, 0x09]);
        assert_eq!(decode_all(&obj).unwrap_err().kind, Amf0ErrorKind::TooManyElements);
        assert_eq!(decode_all(&vec![0x05; MAX_ELEMENTS + 1]).unwrap_err().kind, Amf0ErrorKind::TooManyElements);
        assert!(std::mem::size_of::<Value>() <= 56, "the budget's memory figure assumes 56-byte values");
    }

    #[test]
    fn ecma_array_without_end_marker_is_accepted() {
        let mut b = vec![0x08, 0, 0, 0, 1, 0, 1, b'w'];
        b.extend_from_slice(&[0x00]);
        b.extend_from_slice(&640f64.to_be_bytes());
        let v = decode_all(&b).unwrap();
        assert_eq!(v[0].get("w"), Some(&Value::Number(640.0)));
    }
}
