//! Field tables and field values (`AmqpValue`, `FieldTable`), with RabbitMQ's type octets.
//!
//! RabbitMQ's table (from its AMQP 0-9-1 errata), which clients follow in practice:
//!
//! | octet | value            | octet | value                    |
//! |-------|------------------|-------|--------------------------|
//! | `t`   | bool             | `d`   | f64                      |
//! | `b`   | i8               | `D`   | decimal (scale u8, u32)  |
//! | `B`   | u8               | `S`   | long string (bytes)      |
//! | `s`   | i16              | `x`   | byte array               |
//! | `u`   | u16              | `T`   | timestamp (u64)          |
//! | `I`   | i32              | `F`   | nested table             |
//! | `i`   | u32              | `A`   | array                    |
//! | `l`   | i64              | `V`   | void                     |
//! | `f`   | f32              |       |                          |
//!
//! The 0-9-1 spec's own `U` (i16) and `L` (i64) are accepted on decode for tolerance and
//! decode to `I16` / `I64`; we always encode `s` / `l`.
//!
//! Nesting of tables and arrays is limited to [`FIELD_NESTING_DEPTH_MAX`] levels so that a
//! hostile peer cannot overflow the stack with `F` inside `F` inside `F`...

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::CodecError;
use crate::wire::{patch_len_u32, put_longstr, put_shortstr, Reader};

/// Tables and arrays nested deeper than this are a syntax error (the outermost table is at
/// depth 1). RabbitMQ has no explicit limit; real clients nest two or three levels.
pub const FIELD_NESTING_DEPTH_MAX: usize = 64;

/// A field value in a table or array.
///
/// Equality compares floats by their bits (what the wire carries), so a NaN equals itself
/// and a decoded value always equals its re-encoded-and-decoded self.
#[derive(Debug, Clone)]
pub enum AmqpValue {
    /// `t`
    Bool(bool),
    /// `b`
    I8(i8),
    /// `B`
    U8(u8),
    /// `s` (and `U` on decode)
    I16(i16),
    /// `u`
    U16(u16),
    /// `I`
    I32(i32),
    /// `i`
    U32(u32),
    /// `l` (and `L` on decode)
    I64(i64),
    /// `f`
    F32(f32),
    /// `d`
    F64(f64),
    /// `D`: `value / 10^scale`.
    Decimal { scale: u8, value: u32 },
    /// `S`: bytes, usually but not necessarily UTF-8.
    LongString(Bytes),
    /// `x`
    ByteArray(Bytes),
    /// `T`: seconds since the Unix epoch.
    Timestamp(u64),
    /// `F`
    Table(FieldTable),
    /// `A`
    Array(Vec<AmqpValue>),
    /// `V`
    Void,
}

impl PartialEq for AmqpValue {
    fn eq(&self, other: &Self) -> bool {
        use AmqpValue as V;
        match (self, other) {
            (V::Bool(a), V::Bool(b)) => a == b,
            (V::I8(a), V::I8(b)) => a == b,
            (V::U8(a), V::U8(b)) => a == b,
            (V::I16(a), V::I16(b)) => a == b,
            (V::U16(a), V::U16(b)) => a == b,
            (V::I32(a), V::I32(b)) => a == b,
            (V::U32(a), V::U32(b)) => a == b,
            (V::I64(a), V::I64(b)) => a == b,
            (V::F32(a), V::F32(b)) => a.to_bits() == b.to_bits(),
            (V::F64(a), V::F64(b)) => a.to_bits() == b.to_bits(),
            (
                V::Decimal {
                    scale: s1,
                    value: v1,
                },
                V::Decimal {
                    scale: s2,
                    value: v2,
                },
            ) => s1 == s2 && v1 == v2,
            (V::LongString(a), V::LongString(b)) => a == b,
            (V::ByteArray(a), V::ByteArray(b)) => a == b,
            (V::Timestamp(a), V::Timestamp(b)) => a == b,
            (V::Table(a), V::Table(b)) => a == b,
            (V::Array(a), V::Array(b)) => a == b,
            (V::Void, V::Void) => true,
            _ => false,
        }
    }
}

/// A field table: an ordered list of (shortstr key, value) pairs, kept in wire order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FieldTable(pub Vec<(String, AmqpValue)>);

impl FieldTable {
    /// The value of the first entry named `k`.
    pub fn get(&self, k: &str) -> Option<&AmqpValue> {
        self.0.iter().find(|(key, _)| key == k).map(|(_, v)| v)
    }

    /// Sets `k` to `v`, replacing the first entry of that name or appending a new one.
    pub fn insert(&mut self, k: impl Into<String>, v: AmqpValue) {
        let k = k.into();
        match self.0.iter_mut().find(|(key, _)| *key == k) {
            Some(entry) => entry.1 = v,
            None => self.0.push((k, v)),
        }
    }

    /// True if the table has no entries.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }
}

type Result<T> = std::result::Result<T, CodecError>;

const TOO_DEEP: CodecError = CodecError::Syntax("field table nesting too deep");

/// Reads a table (32-bit byte length, then entries) whose length is bounded by the input.
pub(crate) fn read_table(r: &mut Reader<'_>) -> Result<FieldTable> {
    read_table_at(r, 1)
}

fn read_table_at(r: &mut Reader<'_>, depth: usize) -> Result<FieldTable> {
    if depth > FIELD_NESTING_DEPTH_MAX {
        return Err(TOO_DEEP);
    }
    let body = r
        .longstr_slice()
        .map_err(|_| CodecError::Syntax("field table longer than its frame"))?;
    let mut r = Reader::new(body);
    // Not pre-sized from the wire: each entry takes at least 2 bytes, so growth is bounded by
    // the bytes actually present.
    let mut entries = Vec::new();
    while !r.is_empty() {
        let key = r
            .shortstr()
            .map_err(|_| CodecError::Syntax("field table key"))?;
        let value = read_value(&mut r, depth)?;
        entries.push((key, value));
    }
    Ok(FieldTable(entries))
}

fn read_array(r: &mut Reader<'_>, depth: usize) -> Result<Vec<AmqpValue>> {
    if depth > FIELD_NESTING_DEPTH_MAX {
        return Err(TOO_DEEP);
    }
    let body = r
        .longstr_slice()
        .map_err(|_| CodecError::Syntax("field array longer than its frame"))?;
    let mut r = Reader::new(body);
    let mut values = Vec::new();
    while !r.is_empty() {
        values.push(read_value(&mut r, depth)?);
    }
    Ok(values)
}

/// Reads one type octet and value; `depth` is that of the table or array holding it.
fn read_value(r: &mut Reader<'_>, depth: usize) -> Result<AmqpValue> {
    const BAD: CodecError = CodecError::Syntax("field value truncated");
    let kind = r.u8().map_err(|_| BAD)?;
    let value = match kind {
        b't' => AmqpValue::Bool(r.u8().map_err(|_| BAD)? != 0),
        b'b' => AmqpValue::I8(r.u8().map_err(|_| BAD)? as i8),
        b'B' => AmqpValue::U8(r.u8().map_err(|_| BAD)?),
        b's' | b'U' => AmqpValue::I16(r.u16().map_err(|_| BAD)? as i16),
        b'u' => AmqpValue::U16(r.u16().map_err(|_| BAD)?),
        b'I' => AmqpValue::I32(r.u32().map_err(|_| BAD)? as i32),
        b'i' => AmqpValue::U32(r.u32().map_err(|_| BAD)?),
        b'l' | b'L' => AmqpValue::I64(r.u64().map_err(|_| BAD)? as i64),
        b'f' => AmqpValue::F32(f32::from_bits(r.u32().map_err(|_| BAD)?)),
        b'd' => AmqpValue::F64(f64::from_bits(r.u64().map_err(|_| BAD)?)),
        b'D' => {
            let scale = r.u8().map_err(|_| BAD)?;
            let value = r.u32().map_err(|_| BAD)?;
            AmqpValue::Decimal { scale, value }
        }
        b'S' => AmqpValue::LongString(r.longstr().map_err(|_| BAD)?),
        b'x' => AmqpValue::ByteArray(r.longstr().map_err(|_| BAD)?),
        b'T' => AmqpValue::Timestamp(r.u64().map_err(|_| BAD)?),
        b'F' => AmqpValue::Table(read_table_at(r, depth + 1)?),
        b'A' => AmqpValue::Array(read_array(r, depth + 1)?),
        b'V' => AmqpValue::Void,
        _ => return Err(CodecError::Syntax("unknown field value type")),
    };
    Ok(value)
}

/// Writes a table: 32-bit byte length, then each key as shortstr and value with its type octet.
/// Keys longer than 255 bytes are truncated like every shortstr.
pub(crate) fn write_table(out: &mut BytesMut, table: &FieldTable) {
    let at = out.len();
    out.put_u32(0);
    for (key, value) in &table.0 {
        put_shortstr(out, key);
        write_value(out, value);
    }
    patch_len_u32(out, at);
}

fn write_value(out: &mut BytesMut, value: &AmqpValue) {
    match value {
        AmqpValue::Bool(v) => {
            out.put_u8(b't');
            out.put_u8(u8::from(*v));
        }
        AmqpValue::I8(v) => {
            out.put_u8(b'b');
            out.put_i8(*v);
        }
        AmqpValue::U8(v) => {
            out.put_u8(b'B');
            out.put_u8(*v);
        }
        AmqpValue::I16(v) => {
            out.put_u8(b's');
            out.put_i16(*v);
        }
        AmqpValue::U16(v) => {
            out.put_u8(b'u');
            out.put_u16(*v);
        }
        AmqpValue::I32(v) => {
            out.put_u8(b'I');
            out.put_i32(*v);
        }
        AmqpValue::U32(v) => {
            out.put_u8(b'i');
            out.put_u32(*v);
        }
        AmqpValue::I64(v) => {
            out.put_u8(b'l');
            out.put_i64(*v);
        }
        AmqpValue::F32(v) => {
            out.put_u8(b'f');
            out.put_u32(v.to_bits());
        }
        AmqpValue::F64(v) => {
            out.put_u8(b'd');
            out.put_u64(v.to_bits());
        }
        AmqpValue::Decimal { scale, value } => {
            out.put_u8(b'D');
            out.put_u8(*scale);
            out.put_u32(*value);
        }
        AmqpValue::LongString(b) => {
            out.put_u8(b'S');
            put_longstr(out, b);
        }
        AmqpValue::ByteArray(b) => {
            out.put_u8(b'x');
            put_longstr(out, b);
        }
        AmqpValue::Timestamp(v) => {
            out.put_u8(b'T');
            out.put_u64(*v);
        }
        AmqpValue::Table(t) => {
            out.put_u8(b'F');
            write_table(out, t);
        }
        AmqpValue::Array(values) => {
            out.put_u8(b'A');
            let at = out.len();
            out.put_u32(0);
            for v in values {
                write_value(out, v);
            }
            patch_len_u32(out, at);
        }
        AmqpValue::Void => out.put_u8(b'V'),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round_trip(t: &FieldTable) -> FieldTable {
        let mut out = BytesMut::new();
        write_table(&mut out, t);
        let mut r = Reader::new(&out);
        let back = read_table(&mut r).expect("decodes");
        assert!(r.is_empty());
        back
    }

    pub(crate) fn every_value_type() -> FieldTable {
        let mut nested = FieldTable::default();
        nested.insert("inner", AmqpValue::LongString(Bytes::from_static(b"deep")));
        let mut t = FieldTable::default();
        t.insert("bool", AmqpValue::Bool(true));
        t.insert("i8", AmqpValue::I8(-5));
        t.insert("u8", AmqpValue::U8(250));
        t.insert("i16", AmqpValue::I16(-300));
        t.insert("u16", AmqpValue::U16(65000));
        t.insert("i32", AmqpValue::I32(-70000));
        t.insert("u32", AmqpValue::U32(4_000_000_000));
        t.insert("i64", AmqpValue::I64(-5_000_000_000));
        t.insert("f32", AmqpValue::F32(1.5));
        t.insert("f64", AmqpValue::F64(-2.25e100));
        t.insert(
            "dec",
            AmqpValue::Decimal {
                scale: 2,
                value: 12345,
            },
        );
        t.insert(
            "str",
            AmqpValue::LongString(Bytes::from_static(b"h\xc3\xa9llo")),
        );
        t.insert(
            "bytes",
            AmqpValue::ByteArray(Bytes::from_static(&[0, 1, 255])),
        );
        t.insert("ts", AmqpValue::Timestamp(1_700_000_000));
        t.insert("table", AmqpValue::Table(nested.clone()));
        t.insert(
            "array",
            AmqpValue::Array(vec![
                AmqpValue::I32(1),
                AmqpValue::Table(nested),
                AmqpValue::Array(vec![AmqpValue::Void, AmqpValue::Bool(false)]),
            ]),
        );
        t.insert("void", AmqpValue::Void);
        t
    }

    #[test]
    fn every_value_type_round_trips() {
        let t = every_value_type();
        assert_eq!(t.len(), 17);
        assert_eq!(round_trip(&t), t);
        assert_eq!(round_trip(&FieldTable::default()), FieldTable::default());
    }

    #[test]
    fn floats_compare_by_bits() {
        assert_eq!(AmqpValue::F64(f64::NAN), AmqpValue::F64(f64::NAN));
        assert_ne!(AmqpValue::F32(0.0), AmqpValue::F32(-0.0));
        assert_ne!(AmqpValue::F32(1.0), AmqpValue::F64(1.0));
        let mut t = FieldTable::default();
        t.insert("nan", AmqpValue::F32(f32::NAN));
        assert_eq!(round_trip(&t), t);
    }

    #[test]
    fn golden_value_bytes() {
        let mut t = FieldTable::default();
        t.insert("a", AmqpValue::I16(-2));
        t.insert("b", AmqpValue::I64(1));
        t.insert("c", AmqpValue::U32(7));
        let mut out = BytesMut::new();
        write_table(&mut out, &t);
        let expected: &[u8] = &[
            0, 0, 0, 23, // table length
            1, b'a', b's', 0xff, 0xfe, // i16 is 's' as RabbitMQ
            1, b'b', b'l', 0, 0, 0, 0, 0, 0, 0, 1, // i64 is 'l'
            1, b'c', b'i', 0, 0, 0, 7, // u32 is 'i'
        ];
        assert_eq!(&out[..], expected);
    }

    #[test]
    fn spec_u_and_l_are_tolerated() {
        let bytes: &[u8] = &[
            0, 0, 0, 16, 1, b'x', b'U', 0xff, 0xff, 1, b'y', b'L', 0, 0, 0, 0, 0, 0, 0, 3,
        ];
        let t = read_table(&mut Reader::new(bytes)).unwrap();
        assert_eq!(t.get("x"), Some(&AmqpValue::I16(-1)));
        assert_eq!(t.get("y"), Some(&AmqpValue::I64(3)));
    }

    #[test]
    fn get_and_insert() {
        let mut t = FieldTable::default();
        assert!(t.is_empty());
        t.insert("k", AmqpValue::Bool(true));
        t.insert("k", AmqpValue::Bool(false));
        t.insert(String::from("j"), AmqpValue::Void);
        assert_eq!(t.len(), 2);
        assert_eq!(t.get("k"), Some(&AmqpValue::Bool(false)));
        assert_eq!(t.get("nope"), None);
    }

    #[test]
    fn declared_length_beyond_input_is_an_error() {
        // Table claims 100 bytes, only 6 present.
        let bytes: &[u8] = &[0, 0, 0, 100, 1, b'a', b'V', 0, 0, 0];
        let err = read_table(&mut Reader::new(bytes)).unwrap_err();
        assert_eq!(err, CodecError::Syntax("field table longer than its frame"));
        // A nested string claiming more than its table.
        let bytes: &[u8] = &[0, 0, 0, 8, 1, b'a', b'S', 0, 0, 0, 9, b'z'];
        assert!(matches!(
            read_table(&mut Reader::new(bytes)),
            Err(CodecError::Syntax(_))
        ));
        // 4 GiB claims.
        let bytes: &[u8] = &[0xff, 0xff, 0xff, 0xff];
        assert!(read_table(&mut Reader::new(bytes)).is_err());
    }

    #[test]
    fn bad_key_and_type_are_errors() {
        let bytes: &[u8] = &[0, 0, 0, 4, 2, 0xc3, 0x28, b'V'];
        assert_eq!(
            read_table(&mut Reader::new(bytes)),
            Err(CodecError::Syntax("field table key"))
        );
        let bytes: &[u8] = &[0, 0, 0, 3, 1, b'a', b'?'];
        assert_eq!(
            read_table(&mut Reader::new(bytes)),
            Err(CodecError::Syntax("unknown field value type"))
        );
    }

    fn nested_bytes(levels: usize) -> Vec<u8> {
        // `levels` tables, each `{ "a": F <next> }`, the innermost empty. Table j (counting
        // from the innermost, 1) is 7 * (j - 1) bytes long. Written outside-in in one pass.
        let mut out = Vec::with_capacity(levels * 7);
        for j in (2..=levels).rev() {
            out.extend_from_slice(&(7 * (j as u32 - 1)).to_be_bytes());
            out.extend_from_slice(&[1, b'a', b'F']);
        }
        out.extend_from_slice(&[0, 0, 0, 0]);
        out
    }

    #[test]
    fn nesting_is_bounded() {
        let ok = nested_bytes(FIELD_NESTING_DEPTH_MAX);
        assert!(read_table(&mut Reader::new(&ok)).is_ok());
        let too_deep = nested_bytes(FIELD_NESTING_DEPTH_MAX + 1);
        assert_eq!(read_table(&mut Reader::new(&too_deep)), Err(TOO_DEEP));
        // Very deep input (100,000 levels) is refused without recursing that far.
        let hostile = nested_bytes(100_000);
        assert_eq!(read_table(&mut Reader::new(&hostile)), Err(TOO_DEEP));
        // Arrays count too.
        let mut arr: Vec<u8> = vec![0, 0, 0, 0];
        for _ in 0..100 {
            let mut framed = ((arr.len() + 1) as u32).to_be_bytes().to_vec();
            framed.push(b'A');
            framed.extend_from_slice(&arr);
            arr = framed;
        }
        let mut table = vec![1, b'a', b'A'];
        table.extend_from_slice(&arr);
        let mut framed = (table.len() as u32).to_be_bytes().to_vec();
        framed.extend_from_slice(&table);
        assert_eq!(read_table(&mut Reader::new(&framed)), Err(TOO_DEEP));
    }

    pub(crate) fn arb_value() -> impl Strategy<Value = AmqpValue> {
        let leaf = prop_oneof![
            any::<bool>().prop_map(AmqpValue::Bool),
            any::<i8>().prop_map(AmqpValue::I8),
            any::<u8>().prop_map(AmqpValue::U8),
            any::<i16>().prop_map(AmqpValue::I16),
            any::<u16>().prop_map(AmqpValue::U16),
            any::<i32>().prop_map(AmqpValue::I32),
            any::<u32>().prop_map(AmqpValue::U32),
            any::<i64>().prop_map(AmqpValue::I64),
            any::<u32>().prop_map(|b| AmqpValue::F32(f32::from_bits(b))),
            any::<u64>().prop_map(|b| AmqpValue::F64(f64::from_bits(b))),
            (any::<u8>(), any::<u32>())
                .prop_map(|(scale, value)| AmqpValue::Decimal { scale, value }),
            proptest::collection::vec(any::<u8>(), 0..40)
                .prop_map(|v| AmqpValue::LongString(Bytes::from(v))),
            proptest::collection::vec(any::<u8>(), 0..40)
                .prop_map(|v| AmqpValue::ByteArray(Bytes::from(v))),
            any::<u64>().prop_map(AmqpValue::Timestamp),
            Just(AmqpValue::Void),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(AmqpValue::Array),
                proptest::collection::vec((arb_key(), inner), 0..6)
                    .prop_map(|entries| AmqpValue::Table(FieldTable(entries))),
            ]
        })
    }

    pub(crate) fn arb_key() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z-]{0,12}",
            any::<String>().prop_map(|s| truncate_key(&s)),
        ]
    }

    fn truncate_key(s: &str) -> String {
        crate::wire::truncate_shortstr(s).to_owned()
    }

    pub(crate) fn arb_table() -> impl Strategy<Value = FieldTable> {
        proptest::collection::vec((arb_key(), arb_value()), 0..8).prop_map(FieldTable)
    }

    proptest! {
        #[test]
        fn random_tables_round_trip(t in arb_table()) {
            prop_assert_eq!(round_trip(&t), t);
        }

        #[test]
        fn random_bytes_never_panic_as_table(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = read_table(&mut Reader::new(&bytes));
        }
    }
}
