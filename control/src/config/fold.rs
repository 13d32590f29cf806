//! Config keys matched as Go's `encoding/json` matches them: frp decodes TOML and YAML by
//! turning them into JSON and decoding that into its structs, and Go's decoder takes a key for
//! a field when it equals the field's name or, failing that, equals it ignoring case. So
//! `subdomainHost`, `SubDomainHost` and `subDomainHost` are one key for frp.
//!
//! [`canonical_keys`] rewrites a document's keys to the spellings our structs use, by walking
//! it with the struct's own `Deserialize` impl (a probe deserializer sees each struct's field
//! names in `deserialize_struct`). Keys that match no field stay as they are, so strict mode
//! still refuses them with their line.
//!
//! Several spellings of one field in one object are all applied, in the order Go's decoder
//! meets them: the later value wins, and objects decoded into a struct merge (Go decodes each
//! into the same struct value); a map field takes the entries of each (values replaced). The
//! order is the document's for JSON; for TOML and YAML frp first re-encodes the document as
//! JSON from a Go map, which sorts the keys, so the byte-wise sorted order.

use std::cell::Cell;
use std::fmt;

use serde::Deserializer;
use serde::de::{
    self, DeserializeOwned, DeserializeSeed, IntoDeserializer, MapAccess, SeqAccess, Visitor,
};
use serde_json::Value;

/// A JSON value whose objects keep their keys in order, duplicates included.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Doc {
    Null,
    Bool(bool),
    Num(serde_json::Number),
    Str(String),
    Arr(Vec<Doc>),
    Obj(Vec<(String, Doc)>),
}

impl From<Value> for Doc {
    fn from(v: Value) -> Doc {
        match v {
            Value::Null => Doc::Null,
            Value::Bool(b) => Doc::Bool(b),
            Value::Number(n) => Doc::Num(n),
            Value::String(s) => Doc::Str(s),
            Value::Array(a) => Doc::Arr(a.into_iter().map(Doc::from).collect()),
            Value::Object(m) => Doc::Obj(m.into_iter().map(|(k, v)| (k, Doc::from(v))).collect()),
        }
    }
}

impl From<Doc> for Value {
    fn from(d: Doc) -> Value {
        match d {
            Doc::Null => Value::Null,
            Doc::Bool(b) => Value::Bool(b),
            Doc::Num(n) => Value::Number(n),
            Doc::Str(s) => Value::String(s),
            Doc::Arr(a) => Value::Array(a.into_iter().map(Value::from).collect()),
            // Duplicates left (keys of no field): the last one, as Go would keep.
            Doc::Obj(m) => Value::Object(m.into_iter().map(|(k, v)| (k, Value::from(v))).collect()),
        }
    }
}

impl<'de> serde::Deserialize<'de> for Doc {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Doc, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Doc;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_unit<E>(self) -> Result<Doc, E> {
                Ok(Doc::Null)
            }
            fn visit_none<E>(self) -> Result<Doc, E> {
                Ok(Doc::Null)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Doc, D::Error> {
                <Doc as serde::Deserialize>::deserialize(d)
            }
            fn visit_bool<E>(self, b: bool) -> Result<Doc, E> {
                Ok(Doc::Bool(b))
            }
            fn visit_i64<E>(self, n: i64) -> Result<Doc, E> {
                Ok(Doc::Num(n.into()))
            }
            fn visit_u64<E>(self, n: u64) -> Result<Doc, E> {
                Ok(Doc::Num(n.into()))
            }
            fn visit_f64<E: de::Error>(self, n: f64) -> Result<Doc, E> {
                serde_json::Number::from_f64(n)
                    .map(Doc::Num)
                    .ok_or_else(|| E::custom("not a JSON number"))
            }
            fn visit_str<E>(self, s: &str) -> Result<Doc, E> {
                Ok(Doc::Str(s.to_owned()))
            }
            fn visit_string<E>(self, s: String) -> Result<Doc, E> {
                Ok(Doc::Str(s))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Doc, A::Error> {
                let mut v = Vec::new();
                while let Some(x) = a.next_element()? {
                    v.push(x);
                }
                Ok(Doc::Arr(v))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Doc, A::Error> {
                let mut v = Vec::new();
                while let Some((k, x)) = a.next_entry::<String, Doc>()? {
                    v.push((k, x));
                }
                Ok(Doc::Obj(v))
            }
        }
        d.deserialize_any(V)
    }
}

/// Go's `strings.EqualFold` for field names.
fn fold_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.eq_ignore_ascii_case(b)
        || a.chars()
            .flat_map(char::to_lowercase)
            .eq(b.chars().flat_map(char::to_lowercase))
}

/// `doc` with its keys spelled as `T`'s fields, or `None` when every key already was
/// (nothing renamed, nothing merged).
pub(crate) fn canonical_keys<T: DeserializeOwned>(doc: Doc) -> Option<Value> {
    let changed = Cell::new(false);
    let mut slot = vec![doc];
    // The probe's own result and errors do not matter: a document that does not fit `T`
    // fails the real decode the same way, at the same key.
    let _ = T::deserialize(Probe {
        vals: &mut slot,
        changed: &changed,
    });
    changed
        .get()
        .then(|| slot.pop().map(Value::from).unwrap_or(Value::Null))
}

type Error = de::value::Error;

/// Deserializes from every value given for one field (in Go's order), leaving the merged
/// result as the only element of `vals`.
struct Probe<'a> {
    vals: &'a mut Vec<Doc>,
    changed: &'a Cell<bool>,
}

impl Probe<'_> {
    /// The last value wins (scalars, arrays, a value decoded whole).
    fn last(&mut self) -> Doc {
        if self.vals.len() > 1 {
            self.changed.set(true);
        }
        let v = self.vals.pop().unwrap_or(Doc::Null);
        self.vals.clear();
        self.vals.push(v.clone());
        v
    }

    fn leaf<'de, V: Visitor<'de>>(&mut self, visitor: V) -> Result<V::Value, Error> {
        Value::from(self.last())
            .deserialize_any(visitor)
            .map_err(de::Error::custom)
    }

    /// Every entry of every object value, in order.
    fn entries(&mut self) -> Vec<(String, Doc)> {
        let mut out = Vec::new();
        for v in self.vals.drain(..) {
            if let Doc::Obj(m) = v {
                out.extend(m);
            }
        }
        out
    }

    fn visit_groups<'de, V: Visitor<'de>>(
        &mut self,
        groups: Vec<(String, Vec<Doc>)>,
        visitor: V,
    ) -> Result<V::Value, Error> {
        let mut access = GroupAccess {
            groups,
            next: 0,
            changed: self.changed,
        };
        let r = visitor.visit_map(&mut access);
        let obj = access
            .groups
            .into_iter()
            .map(|(k, mut vals)| {
                let v = vals.pop().unwrap_or(Doc::Null);
                (k, v)
            })
            .collect();
        self.vals.push(Doc::Obj(obj));
        r
    }
}

impl<'de> Deserializer<'de> for Probe<'_> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, Error> {
        self.leaf(visitor)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        mut self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        if !matches!(self.vals.last(), Some(Doc::Obj(_))) {
            return self.leaf(visitor);
        }
        if self.vals.len() > 1 {
            self.changed.set(true);
        }
        let mut groups: Vec<(String, Vec<Doc>)> = Vec::new();
        for (k, v) in self.entries() {
            let key = if fields.contains(&k.as_str()) {
                k
            } else if let Some(f) = fields.iter().find(|f| fold_eq(f, &k)) {
                self.changed.set(true);
                (*f).to_owned()
            } else {
                k
            };
            match groups.iter_mut().find(|(g, _)| *g == key) {
                Some((_, vals)) => {
                    self.changed.set(true);
                    vals.push(v);
                }
                None => groups.push((key, vec![v])),
            }
        }
        self.visit_groups(groups, visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, Error> {
        if !matches!(self.vals.last(), Some(Doc::Obj(_))) {
            return self.leaf(visitor);
        }
        if self.vals.len() > 1 {
            self.changed.set(true);
        }
        // A map's keys are data: kept as written; a repeated key's later value replaces
        // the earlier one (Go decodes each map value afresh).
        let mut groups: Vec<(String, Vec<Doc>)> = Vec::new();
        for (k, v) in self.entries() {
            match groups.iter_mut().find(|(g, _)| *g == k) {
                Some((_, vals)) => *vals = vec![v],
                None => groups.push((k, vec![v])),
            }
        }
        self.visit_groups(groups, visitor)
    }

    fn deserialize_seq<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, Error> {
        let Doc::Arr(items) = self.last() else {
            return self.leaf(visitor);
        };
        let mut access = ItemAccess {
            items: items.into_iter().map(|d| vec![d]).collect(),
            next: 0,
            changed: self.changed,
        };
        let r = visitor.visit_seq(&mut access);
        let arr = access
            .items
            .into_iter()
            .map(|mut v| v.pop().unwrap_or(Doc::Null))
            .collect();
        self.vals.clear();
        self.vals.push(Doc::Arr(arr));
        r
    }

    fn deserialize_option<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, Error> {
        if matches!(self.vals.last(), Some(Doc::Null) | None) {
            self.last();
            return visitor.visit_none();
        }
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, Error> {
        self.last();
        visitor.visit_unit()
    }

    fn deserialize_enum<V: Visitor<'de>>(
        mut self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        Value::from(self.last())
            .deserialize_enum(name, variants, visitor)
            .map_err(de::Error::custom)
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        unit unit_struct identifier
    }
}

/// A struct's or map's entries, each with all its values.
struct GroupAccess<'a> {
    groups: Vec<(String, Vec<Doc>)>,
    next: usize,
    changed: &'a Cell<bool>,
}

impl<'de> MapAccess<'de> for GroupAccess<'_> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        let Some((k, _)) = self.groups.get(self.next) else {
            return Ok(None);
        };
        let d: de::value::StrDeserializer<'_, Error> = k.as_str().into_deserializer();
        seed.deserialize(d).map(Some)
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, Error> {
        let i = self.next;
        self.next += 1;
        let vals = &mut self.groups[i].1;
        seed.deserialize(Probe {
            vals,
            changed: self.changed,
        })
    }
}

/// An array's items.
struct ItemAccess<'a> {
    items: Vec<Vec<Doc>>,
    next: usize,
    changed: &'a Cell<bool>,
}

impl<'de> SeqAccess<'de> for ItemAccess<'_> {
    type Error = Error;

    fn next_element_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, Error> {
        let Some(vals) = self.items.get_mut(self.next) else {
            return Ok(None);
        };
        self.next += 1;
        seed.deserialize(Probe {
            vals,
            changed: self.changed,
        })
        .map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use std::collections::BTreeMap;

    #[derive(Deserialize, Debug, Default, PartialEq)]
    #[serde(default, rename_all = "camelCase")]
    struct Inner {
        use_encryption: bool,
        pool_count: i64,
    }

    #[derive(Deserialize, Debug, Default, PartialEq)]
    #[serde(default, rename_all = "camelCase")]
    struct Outer {
        sub_domain_host: String,
        #[serde(rename = "localIP")]
        local_ip: String,
        transport: Inner,
        metadatas: BTreeMap<String, String>,
        list: Vec<Inner>,
        opt: Option<Inner>,
    }

    fn json(text: &str) -> Option<Value> {
        canonical_keys::<Outer>(serde_json::from_str::<Doc>(text).unwrap())
    }

    #[test]
    fn exact_keys_change_nothing() {
        assert_eq!(
            json(r#"{"subDomainHost": "a", "transport": {"poolCount": 1}}"#),
            None
        );
    }

    #[test]
    fn case_variants_are_renamed_at_every_depth() {
        let v = json(
            r#"{"SUBDOMAINHOST": "a", "localip": "1.2.3.4", "Transport": {"UseEncryption": true},
                "list": [{"POOLCOUNT": 2}], "Opt": {"poolcount": 3}}"#,
        )
        .unwrap();
        let o: Outer = serde_json::from_value(v).unwrap();
        assert_eq!(o.sub_domain_host, "a");
        assert_eq!(o.local_ip, "1.2.3.4");
        assert!(o.transport.use_encryption);
        assert_eq!(o.list[0].pool_count, 2);
        assert_eq!(o.opt.unwrap().pool_count, 3);
    }

    #[test]
    fn map_keys_are_data_and_unknown_keys_stay() {
        let v = json(r#"{"Metadatas": {"PoolCount": "x"}, "NoSuchKey": 1}"#).unwrap();
        assert_eq!(v["metadatas"]["PoolCount"], "x");
        assert_eq!(v["NoSuchKey"], 1);
    }

    #[test]
    fn later_spelling_wins_and_structs_merge_in_document_order() {
        let v = json(
            r#"{"subDomainHost": "first", "SubDomainHost": "second",
                "transport": {"useEncryption": true, "poolCount": 1},
                "TRANSPORT": {"poolCount": 9},
                "metadatas": {"a": "1"}, "Metadatas": {"b": "2"}}"#,
        )
        .unwrap();
        let o: Outer = serde_json::from_value(v).unwrap();
        assert_eq!(o.sub_domain_host, "second");
        assert_eq!(
            o.transport,
            Inner {
                use_encryption: true,
                pool_count: 9
            }
        );
        assert_eq!(o.metadatas.len(), 2);
        // Reversed in the document: the other one wins.
        let v = json(r#"{"SubDomainHost": "second", "subDomainHost": "first"}"#).unwrap();
        assert_eq!(v["subDomainHost"], "first");
    }

    #[test]
    fn sorted_order_for_toml_and_yaml() {
        // From a serde_json map (sorted, as Go's json.Marshal of a map): "SubDomainHost"
        // sorts before "subDomainHost", so the latter wins whatever the file order.
        let generic: Value =
            toml::from_str("subDomainHost = \"lower\"\nSubDomainHost = \"upper\"\n").unwrap();
        let v = canonical_keys::<Outer>(Doc::from(generic)).unwrap();
        assert_eq!(v["subDomainHost"], "lower");
    }
}
