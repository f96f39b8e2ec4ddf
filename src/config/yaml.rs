//! A YAML document as a tree of nodes that each know their line and column,
//! so validation can report every problem at its place, not only the first.

use std::cell::Cell;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

/// Where a node starts in the file (1-based; 0 when unknown).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    pub line: u64,
    pub col: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    /// Keys keep their own position (for "unknown key" errors).
    Map(Vec<(String, Pos, Node)>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub pos: Pos,
    pub value: Value,
}

impl Value {
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }
}

fn pos_of<T>(s: &Spanned<T>) -> Pos {
    Pos {
        line: s.referenced.line(),
        col: s.referenced.column(),
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // The position comes from the enclosing Spanned; a bare Node (the
        // document root) has none.
        let value = Value::deserialize(d)?;
        Ok(Node {
            pos: Pos::default(),
            value,
        })
    }
}

fn spanned_node(s: Spanned<Value>) -> Node {
    Node {
        pos: pos_of(&s),
        value: s.value,
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Value::deserialize(d)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v))
    }
    // An integer beyond i64 is kept as a number rather than refused here:
    // a visitor's error has no position, and validation reports the value
    // where it stands ("expected an integer").
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(i64::try_from(v).map_or(Value::Float(v as f64), Value::Int))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Value, E> {
        Ok(i64::try_from(v).map_or(Value::Float(v as f64), Value::Int))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Value, E> {
        i64::try_from(v)
            .map(Value::Int)
            .map_err(|_| E::custom("integer too large"))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Str(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::Str(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Value>>()? {
            items.push(spanned_node(item));
        }
        Ok(Value::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Spanned<Value>>()? {
            let kpos = pos_of(&key);
            let kname = match key.value {
                Value::Str(s) => s,
                Value::Int(i) => i.to_string(),
                Value::Bool(b) => b.to_string(),
                other => {
                    REFUSED_KEY_AT.set(Some(kpos));
                    return Err(de::Error::custom(format!(
                        "a key must be a string, not {}",
                        other.kind()
                    )));
                }
            };
            let value = map.next_value::<Spanned<Value>>()?;
            entries.push((kname, kpos, spanned_node(value)));
        }
        Ok(Value::Map(entries))
    }
}

thread_local! {
    /// Where the visitor refused a key: serde_saphyr gives a visitor's own
    /// error no location, and every problem must have one.
    static REFUSED_KEY_AT: Cell<Option<Pos>> = const { Cell::new(None) };
}

/// A YAML syntax error, with its position when the parser knows it.
#[derive(Debug, Clone)]
pub struct SyntaxError {
    pub pos: Pos,
    pub message: String,
}

/// Parses a whole document; an empty file is an empty mapping.
pub fn parse_document(text: &str) -> Result<Node, SyntaxError> {
    if text.trim().is_empty() {
        return Ok(Node {
            pos: Pos { line: 1, col: 1 },
            value: Value::Map(Vec::new()),
        });
    }
    REFUSED_KEY_AT.set(None);
    match serde_saphyr::from_str::<Spanned<Value>>(text) {
        Ok(s) => Ok(spanned_node(s)),
        Err(e) => {
            let pos = REFUSED_KEY_AT
                .take()
                .or_else(|| {
                    e.location().map(|l| Pos {
                        line: l.line(),
                        col: l.column(),
                    })
                })
                .unwrap_or_default();
            let rendered = e.without_snippet().to_string();
            // Keep the first line: the snippet and location are ours to print.
            let message = rendered
                .lines()
                .next()
                .unwrap_or("invalid YAML")
                .to_string();
            Err(SyntaxError { pos, message })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_carry_positions() {
        let doc = parse_document("a: 1\nb:\n  - x\n  - {c: true}\n").unwrap();
        let Value::Map(entries) = &doc.value else {
            panic!("not a map")
        };
        assert_eq!(entries[0].0, "a");
        assert_eq!(entries[0].1, Pos { line: 1, col: 1 });
        assert_eq!(entries[0].2.value, Value::Int(1));
        assert_eq!(entries[0].2.pos, Pos { line: 1, col: 4 });
        let Value::Seq(items) = &entries[1].2.value else {
            panic!("not a seq")
        };
        assert_eq!(items[1].pos.line, 4);
        assert_eq!(items[0].value, Value::Str("x".into()));
    }

    #[test]
    fn refused_keys_and_huge_integers_have_a_position() {
        let e = parse_document("a: 1\nb:\n  ~: 2\n").unwrap_err();
        assert_eq!((e.pos.line, e.pos.col), (3, 3), "{e:?}");
        assert!(e.message.contains("a key must be a string"), "{e:?}");
        let doc = parse_document("a: 99999999999999999999\n").unwrap();
        let Value::Map(entries) = &doc.value else {
            panic!("not a map")
        };
        assert!(matches!(entries[0].2.value, Value::Float(_)));
        assert_eq!(entries[0].2.pos, Pos { line: 1, col: 4 });
    }

    #[test]
    fn syntax_errors_have_a_position() {
        let e = parse_document("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(e.pos.line >= 1, "{e:?}");
    }
}
