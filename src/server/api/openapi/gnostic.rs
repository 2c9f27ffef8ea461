//! The protobuf form of a Swagger 2.0 document: gnostic's
//! `openapi.v2.Document` message (github.com/google/gnostic-models,
//! `openapiv2/OpenAPIv2.proto`), which kubectl asks `/openapi/v2` for with
//! `Accept: application/com.github.proto-openapi.spec.v2@v1.0+protobuf`.
//!
//! Upstream builds it by parsing the JSON document into gnostic's messages
//! and marshalling them; this encodes the same messages straight from the
//! JSON, for the part of the format the served document uses (info, paths,
//! operations, parameters, responses, definitions, security). Field numbers
//! are the proto file's; fields go out in field-number order and proto3
//! zero values are left out, as Go's marshaller does. Vendor extensions
//! and other free-form values (`default`, `enum`, `example`) are `Any`
//! messages carrying the value as YAML, as gnostic writes them.

use serde_json::{Map, Value};

/// A message being written.
#[derive(Default)]
struct Message(Vec<u8>);

const VARINT: u64 = 0;
const FIXED64: u64 = 1;
const LEN: u64 = 2;

impl Message {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    fn key(&mut self, field: u64, wire: u64) {
        self.varint((field << 3) | wire);
    }

    fn bytes(&mut self, field: u64, bytes: &[u8]) {
        self.key(field, LEN);
        self.varint(bytes.len() as u64);
        self.0.extend_from_slice(bytes);
    }

    fn message(&mut self, field: u64, m: Message) {
        self.bytes(field, &m.0);
    }

    fn string(&mut self, field: u64, s: &str) {
        if !s.is_empty() {
            self.bytes(field, s.as_bytes());
        }
    }

    fn bool(&mut self, field: u64, b: bool) {
        if b {
            self.key(field, VARINT);
            self.varint(1);
        }
    }

    fn int64(&mut self, field: u64, i: i64) {
        if i != 0 {
            self.key(field, VARINT);
            // Two's complement, as protobuf writes a negative int64.
            self.varint(i as u64);
        }
    }

    fn double(&mut self, field: u64, d: f64) {
        if d.to_bits() != 0 {
            self.key(field, FIXED64);
            self.0.extend_from_slice(&d.to_le_bytes());
        }
    }

    // Helpers that read a JSON object's field and write it.

    fn string_of(&mut self, field: u64, obj: &Map<String, Value>, key: &str) {
        if let Some(s) = obj.get(key).and_then(Value::as_str) {
            self.string(field, s);
        }
    }

    fn bool_of(&mut self, field: u64, obj: &Map<String, Value>, key: &str) {
        self.bool(field, obj.get(key).and_then(Value::as_bool) == Some(true));
    }

    fn int64_of(&mut self, field: u64, obj: &Map<String, Value>, key: &str) {
        if let Some(i) = obj.get(key).and_then(Value::as_i64) {
            self.int64(field, i);
        }
    }

    fn double_of(&mut self, field: u64, obj: &Map<String, Value>, key: &str) {
        if let Some(d) = obj.get(key).and_then(Value::as_f64) {
            self.double(field, d);
        }
    }

    /// A repeated string: an array of strings, or one string.
    fn strings_of(&mut self, field: u64, obj: &Map<String, Value>, key: &str) {
        match obj.get(key) {
            Some(Value::String(s)) => self.bytes(field, s.as_bytes()),
            Some(Value::Array(items)) => {
                for s in items.iter().filter_map(Value::as_str) {
                    self.bytes(field, s.as_bytes());
                }
            }
            _ => {}
        }
    }

    fn any_of(&mut self, field: u64, obj: &Map<String, Value>, key: &str) {
        if let Some(v) = obj.get(key) {
            self.message(field, any(v));
        }
    }

    fn enum_of(&mut self, field: u64, obj: &Map<String, Value>) {
        for v in obj
            .get("enum")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            self.message(field, any(v));
        }
    }

    /// `repeated NamedAny vendor_extension`: every `x-` key.
    fn extensions(&mut self, field: u64, obj: &Map<String, Value>) {
        for (name, value) in obj.iter().filter(|(k, _)| k.starts_with("x-")) {
            let mut named = Message::default();
            named.string(1, name);
            named.message(2, any(value));
            self.message(field, named);
        }
    }

    /// A `Named<T>` pair message: `string name = 1; T value = 2;`.
    fn named(&mut self, field: u64, name: &str, value: Message) {
        let mut named = Message::default();
        named.string(1, name);
        named.message(2, value);
        self.message(field, named);
    }
}

fn object(v: &Value) -> &Map<String, Value> {
    static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
    v.as_object().unwrap_or_else(|| EMPTY.get_or_init(Map::new))
}

/// `Any`: the value as YAML (`string yaml = 2`).
fn any(v: &Value) -> Message {
    // JSON is YAML too: the fallback keeps the value if the emitter fails.
    let yaml = serde_yaml_ng::to_string(v).unwrap_or_else(|_| v.to_string());
    let mut m = Message::default();
    m.string(2, &yaml);
    m
}

/// The gnostic `Document` encoding of a Swagger 2.0 JSON document.
pub fn document(doc: &Value) -> Vec<u8> {
    let d = object(doc);
    let mut m = Message::default();
    m.string_of(1, d, "swagger");
    if let Some(info) = d.get("info") {
        m.message(2, info_message(info));
    }
    m.string_of(3, d, "host");
    m.string_of(4, d, "basePath");
    m.strings_of(5, d, "schemes");
    m.strings_of(6, d, "consumes");
    m.strings_of(7, d, "produces");
    if let Some(paths) = d.get("paths") {
        m.message(8, paths_message(paths));
    }
    if let Some(defs) = d.get("definitions") {
        let mut definitions = Message::default();
        for (name, s) in object(defs) {
            definitions.named(1, name, schema(s));
        }
        m.message(9, definitions);
    }
    if let Some(params) = d.get("parameters") {
        let mut definitions = Message::default();
        for (name, p) in object(params) {
            definitions.named(1, name, parameter(p));
        }
        m.message(10, definitions);
    }
    for requirement in d
        .get("security")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        m.message(12, security_requirement(requirement));
    }
    if let Some(defs) = d.get("securityDefinitions") {
        let mut definitions = Message::default();
        for (name, item) in object(defs) {
            if let Some(item) = security_definition(item) {
                definitions.named(1, name, item);
            }
        }
        m.message(13, definitions);
    }
    m.extensions(16, d);
    m.0
}

fn info_message(v: &Value) -> Message {
    let o = object(v);
    let mut m = Message::default();
    m.string_of(1, o, "title");
    m.string_of(2, o, "version");
    m.string_of(3, o, "description");
    m.string_of(4, o, "termsOfService");
    m.extensions(7, o);
    m
}

fn paths_message(v: &Value) -> Message {
    let o = object(v);
    let mut m = Message::default();
    m.extensions(1, o);
    for (path, item) in o.iter().filter(|(k, _)| k.starts_with('/')) {
        m.named(2, path, path_item(item));
    }
    m
}

fn path_item(v: &Value) -> Message {
    let o = object(v);
    let mut m = Message::default();
    m.string_of(1, o, "$ref");
    for (field, method) in [
        (2, "get"),
        (3, "put"),
        (4, "post"),
        (5, "delete"),
        (6, "options"),
        (7, "head"),
        (8, "patch"),
    ] {
        if let Some(op) = o.get(method) {
            m.message(field, operation(op));
        }
    }
    for p in o
        .get("parameters")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        m.message(9, parameters_item(p));
    }
    m.extensions(10, o);
    m
}

fn operation(v: &Value) -> Message {
    let o = object(v);
    let mut m = Message::default();
    m.strings_of(1, o, "tags");
    m.string_of(2, o, "summary");
    m.string_of(3, o, "description");
    m.string_of(5, o, "operationId");
    m.strings_of(6, o, "produces");
    m.strings_of(7, o, "consumes");
    for p in o
        .get("parameters")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        m.message(8, parameters_item(p));
    }
    if let Some(responses) = o.get("responses") {
        m.message(9, responses_message(responses));
    }
    m.strings_of(10, o, "schemes");
    m.bool_of(11, o, "deprecated");
    for requirement in o
        .get("security")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        m.message(12, security_requirement(requirement));
    }
    m.extensions(13, o);
    m
}

/// `ParametersItem`: a parameter, or a reference to one.
fn parameters_item(v: &Value) -> Message {
    let mut m = Message::default();
    match v.get("$ref") {
        Some(_) => m.message(2, json_reference(v)),
        None => m.message(1, parameter(v)),
    }
    m
}

fn json_reference(v: &Value) -> Message {
    let o = object(v);
    let mut m = Message::default();
    m.string_of(1, o, "$ref");
    m.string_of(2, o, "description");
    m
}

/// `Parameter`: a body parameter, or one of the four others by `in`.
fn parameter(v: &Value) -> Message {
    let o = object(v);
    let mut m = Message::default();
    let place = o.get("in").and_then(Value::as_str).unwrap_or_default();
    if place == "body" {
        let mut body = Message::default();
        body.string_of(1, o, "description");
        body.string_of(2, o, "name");
        body.string_of(3, o, "in");
        body.bool_of(4, o, "required");
        if let Some(s) = o.get("schema") {
            body.message(5, schema(s));
        }
        body.extensions(6, o);
        m.message(1, body);
        return m;
    }
    // Query and formData sub-schemas have `allow_empty_value` as field 5;
    // header and path ones do not, so their later fields are one lower.
    let (field, with_allow_empty) = match place {
        "header" => (1, false),
        "formData" => (2, true),
        "path" => (4, false),
        _ => (3, true),
    };
    let at = |n: u64| if with_allow_empty { n } else { n - 1 };
    let mut sub = Message::default();
    sub.bool_of(1, o, "required");
    sub.string_of(2, o, "in");
    sub.string_of(3, o, "description");
    sub.string_of(4, o, "name");
    if with_allow_empty {
        sub.bool_of(5, o, "allowEmptyValue");
    }
    sub.string_of(at(6), o, "type");
    sub.string_of(at(7), o, "format");
    if let Some(items) = o.get("items") {
        sub.message(at(8), primitives_items(items));
    }
    sub.string_of(at(9), o, "collectionFormat");
    sub.any_of(at(10), o, "default");
    sub.double_of(at(11), o, "maximum");
    sub.bool_of(at(12), o, "exclusiveMaximum");
    sub.double_of(at(13), o, "minimum");
    sub.bool_of(at(14), o, "exclusiveMinimum");
    sub.int64_of(at(15), o, "maxLength");
    sub.int64_of(at(16), o, "minLength");
    sub.string_of(at(17), o, "pattern");
    sub.int64_of(at(18), o, "maxItems");
    sub.int64_of(at(19), o, "minItems");
    sub.bool_of(at(20), o, "uniqueItems");
    sub.enum_of(at(21), o);
    sub.double_of(at(22), o, "multipleOf");
    sub.extensions(at(23), o);
    let mut non_body = Message::default();
    non_body.message(field, sub);
    m.message(2, non_body);
    m
}

fn primitives_items(v: &Value) -> Message {
    let o = object(v);
    let mut m = Message::default();
    m.string_of(1, o, "type");
    m.string_of(2, o, "format");
    if let Some(items) = o.get("items") {
        m.message(3, primitives_items(items));
    }
    m.string_of(4, o, "collectionFormat");
    m.any_of(5, o, "default");
    m.double_of(6, o, "maximum");
    m.bool_of(7, o, "exclusiveMaximum");
    m.double_of(8, o, "minimum");
    m.bool_of(9, o, "exclusiveMinimum");
    m.int64_of(10, o, "maxLength");
    m.int64_of(11, o, "minLength");
    m.string_of(12, o, "pattern");
    m.int64_of(13, o, "maxItems");
    m.int64_of(14, o, "minItems");
    m.bool_of(15, o, "uniqueItems");
    m.enum_of(16, o);
    m.double_of(17, o, "multipleOf");
    m.extensions(18, o);
    m
}

fn responses_message(v: &Value) -> Message {
    let o = object(v);
    let mut m = Message::default();
    for (code, r) in o.iter().filter(|(k, _)| !k.starts_with("x-")) {
        let mut value = Message::default();
        match r.get("$ref") {
            Some(_) => value.message(2, json_reference(r)),
            None => value.message(1, response(r)),
        }
        m.named(1, code, value);
    }
    m.extensions(2, o);
    m
}

fn response(v: &Value) -> Message {
    let o = object(v);
    let mut m = Message::default();
    m.string_of(1, o, "description");
    if let Some(s) = o.get("schema") {
        // `SchemaItem`: a schema (1) or, for `type: file`, a file schema (2).
        let mut item = Message::default();
        if s.get("type").and_then(Value::as_str) == Some("file") {
            let f = object(s);
            let mut file = Message::default();
            file.string_of(1, f, "format");
            file.string_of(2, f, "title");
            file.string_of(3, f, "description");
            file.string_of(6, f, "type");
            item.message(2, file);
        } else {
            item.message(1, schema(s));
        }
        m.message(2, item);
    }
    m.extensions(5, o);
    m
}

/// `Schema`, recursively.
fn schema(v: &Value) -> Message {
    let o = object(v);
    let mut m = Message::default();
    m.string_of(1, o, "$ref");
    m.string_of(2, o, "format");
    m.string_of(3, o, "title");
    m.string_of(4, o, "description");
    m.any_of(5, o, "default");
    m.double_of(6, o, "multipleOf");
    m.double_of(7, o, "maximum");
    m.bool_of(8, o, "exclusiveMaximum");
    m.double_of(9, o, "minimum");
    m.bool_of(10, o, "exclusiveMinimum");
    m.int64_of(11, o, "maxLength");
    m.int64_of(12, o, "minLength");
    m.string_of(13, o, "pattern");
    m.int64_of(14, o, "maxItems");
    m.int64_of(15, o, "minItems");
    m.bool_of(16, o, "uniqueItems");
    m.int64_of(17, o, "maxProperties");
    m.int64_of(18, o, "minProperties");
    m.strings_of(19, o, "required");
    m.enum_of(20, o);
    match o.get("additionalProperties") {
        // `AdditionalPropertiesItem`: a schema (1) or a boolean (2). A
        // oneof member is written even when it is `false`.
        Some(Value::Bool(b)) => {
            let mut item = Message::default();
            item.key(2, VARINT);
            item.varint(u64::from(*b));
            m.message(21, item);
        }
        Some(s) => {
            let mut item = Message::default();
            item.message(1, schema(s));
            m.message(21, item);
        }
        None => {}
    }
    if o.contains_key("type") {
        let mut types = Message::default();
        types.strings_of(1, o, "type");
        m.message(22, types);
    }
    match o.get("items") {
        Some(Value::Array(items)) => {
            let mut item = Message::default();
            for s in items {
                item.message(1, schema(s));
            }
            m.message(23, item);
        }
        Some(s) => {
            let mut item = Message::default();
            item.message(1, schema(s));
            m.message(23, item);
        }
        None => {}
    }
    for s in o
        .get("allOf")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        m.message(24, schema(s));
    }
    if let Some(props) = o.get("properties") {
        let mut properties = Message::default();
        for (name, s) in object(props) {
            properties.named(1, name, schema(s));
        }
        m.message(25, properties);
    }
    m.string_of(26, o, "discriminator");
    m.bool_of(27, o, "readOnly");
    m.any_of(30, o, "example");
    m.extensions(31, o);
    m
}

/// `SecurityRequirement`: `{"BearerToken": []}`.
fn security_requirement(v: &Value) -> Message {
    let mut m = Message::default();
    for (name, scopes) in object(v) {
        let mut array = Message::default();
        for s in scopes
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            array.bytes(1, s.as_bytes());
        }
        m.named(1, name, array);
    }
    m
}

/// `SecurityDefinitionsItem` for the basic and API key schemes (the ones
/// a Kubernetes API server declares).
fn security_definition(v: &Value) -> Option<Message> {
    let o = object(v);
    let mut scheme = Message::default();
    let field = match o.get("type").and_then(Value::as_str)? {
        "basic" => {
            scheme.string_of(1, o, "type");
            scheme.string_of(2, o, "description");
            scheme.extensions(3, o);
            1
        }
        "apiKey" => {
            scheme.string_of(1, o, "type");
            scheme.string_of(2, o, "name");
            scheme.string_of(3, o, "in");
            scheme.string_of(4, o, "description");
            scheme.extensions(5, o);
            2
        }
        _ => return None,
    };
    let mut item = Message::default();
    item.message(field, scheme);
    Some(item)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// One decoded field: number and either a varint or bytes.
    #[derive(Debug)]
    enum Field<'a> {
        Varint(u64),
        Fixed64(u64),
        Bytes(&'a [u8]),
    }

    /// A minimal protobuf reader, independent of the writer above.
    fn fields(mut b: &[u8]) -> Vec<(u64, Field<'_>)> {
        fn varint(b: &mut &[u8]) -> u64 {
            let (mut v, mut shift) = (0u64, 0);
            loop {
                let byte = b[0];
                *b = &b[1..];
                v |= u64::from(byte & 0x7f) << shift;
                if byte < 0x80 {
                    return v;
                }
                shift += 7;
            }
        }
        let mut out = Vec::new();
        while !b.is_empty() {
            let key = varint(&mut b);
            let field = match key & 7 {
                0 => Field::Varint(varint(&mut b)),
                1 => {
                    let v = u64::from_le_bytes(b[..8].try_into().unwrap());
                    b = &b[8..];
                    Field::Fixed64(v)
                }
                2 => {
                    let len = varint(&mut b) as usize;
                    let (head, tail) = b.split_at(len);
                    b = tail;
                    Field::Bytes(head)
                }
                w => panic!("unexpected wire type {w}"),
            };
            out.push((key >> 3, field));
        }
        out
    }

    fn bytes<'a>(fs: &[(u64, Field<'a>)], n: u64) -> Vec<&'a [u8]> {
        fs.iter()
            .filter_map(|(f, v)| match v {
                Field::Bytes(b) if *f == n => Some(*b),
                _ => None,
            })
            .collect()
    }

    fn text(b: &[u8]) -> &str {
        std::str::from_utf8(b).unwrap()
    }

    #[test]
    fn document_fields_have_the_proto_numbers() {
        let doc = json!({
            "swagger": "2.0",
            "info": {"title": "Kubernetes", "version": "v1.33.0"},
            "paths": {"/api/v1/namespaces/{namespace}/configmaps/{name}": {
                "patch": {
                    "parameters": [
                        {"in": "body", "name": "body", "required": true,
                         "schema": {"$ref": "#/definitions/io.k8s.apimachinery.pkg.apis.meta.v1.Patch"}},
                        {"in": "query", "name": "fieldValidation", "type": "string", "uniqueItems": true},
                    ],
                    "responses": {"200": {"description": "OK"}},
                    "x-kubernetes-action": "patch",
                    "x-kubernetes-group-version-kind": {"group": "", "kind": "ConfigMap", "version": "v1"},
                },
                "parameters": [{"in": "path", "name": "name", "required": true, "type": "string"}],
            }},
            "definitions": {"io.k8s.api.core.v1.ConfigMap": {
                "type": "object",
                "required": ["metadata"],
                "additionalProperties": false,
                "properties": {"data": {"type": "object", "additionalProperties": {"type": "string"}}},
                "x-kubernetes-group-version-kind": [{"group": "", "kind": "ConfigMap", "version": "v1"}],
            }},
        });
        let encoded = document(&doc);
        let top = fields(&encoded);
        assert_eq!(bytes(&top, 1), [b"2.0"]);
        let info = fields(bytes(&top, 2)[0]);
        assert_eq!(
            (text(bytes(&info, 1)[0]), text(bytes(&info, 2)[0])),
            ("Kubernetes", "v1.33.0")
        );

        // paths (8) → NamedPathItem (2) → PathItem → patch (8)
        let paths = fields(bytes(&top, 8)[0]);
        let named = fields(bytes(&paths, 2)[0]);
        assert_eq!(
            text(bytes(&named, 1)[0]),
            "/api/v1/namespaces/{namespace}/configmaps/{name}"
        );
        let item = fields(bytes(&named, 2)[0]);
        // Path-level parameter (9): a path parameter (NonBodyParameter field 4),
        // whose `type` is field 5 (no allow_empty_value in path sub-schemas).
        let param = fields(bytes(&fields(bytes(&item, 9)[0]), 1)[0]);
        let path_sub = fields(bytes(&fields(bytes(&param, 2)[0]), 4)[0]);
        assert_eq!(text(bytes(&path_sub, 4)[0]), "name");
        assert_eq!(text(bytes(&path_sub, 5)[0]), "string");
        assert!(matches!(path_sub[0], (1, Field::Varint(1))), "required");

        let op = fields(bytes(&item, 8)[0]);
        let params = bytes(&op, 8);
        assert_eq!(params.len(), 2);
        let body = fields(bytes(&fields(params[0]), 1)[0]);
        let body = fields(bytes(&body, 1)[0]);
        let schema = fields(bytes(&body, 5)[0]);
        assert_eq!(
            text(bytes(&schema, 1)[0]),
            "#/definitions/io.k8s.apimachinery.pkg.apis.meta.v1.Patch"
        );
        // The query parameter kubectl's field validation check looks for:
        // Parameter.non_body_parameter (2).query_parameter_sub_schema (3).name (4).
        let query = fields(bytes(&fields(params[1]), 1)[0]);
        let query = fields(bytes(&fields(bytes(&query, 2)[0]), 3)[0]);
        assert_eq!(text(bytes(&query, 4)[0]), "fieldValidation");
        assert_eq!(text(bytes(&query, 6)[0]), "string");
        // Extensions (13) as NamedAny with YAML values.
        let ext: Vec<(String, String)> = bytes(&op, 13)
            .into_iter()
            .map(|b| {
                let named = fields(b);
                let any = fields(bytes(&named, 2)[0]);
                (
                    text(bytes(&named, 1)[0]).to_owned(),
                    text(bytes(&any, 2)[0]).to_owned(),
                )
            })
            .collect();
        assert_eq!(ext[0], ("x-kubernetes-action".into(), "patch\n".into()));
        assert_eq!(ext[1].0, "x-kubernetes-group-version-kind");
        let gvk: Value = serde_yaml_ng::from_str(&ext[1].1).unwrap();
        assert_eq!(
            gvk,
            json!({"group": "", "kind": "ConfigMap", "version": "v1"})
        );

        // definitions (9) → NamedSchema (1) → Schema
        let defs = fields(bytes(&top, 9)[0]);
        let named = fields(bytes(&defs, 1)[0]);
        assert_eq!(text(bytes(&named, 1)[0]), "io.k8s.api.core.v1.ConfigMap");
        let s = fields(bytes(&named, 2)[0]);
        assert_eq!(bytes(&s, 19), [b"metadata"]);
        let additional = fields(bytes(&s, 21)[0]);
        assert!(
            matches!(additional[..], [(2, Field::Varint(0))]),
            "additionalProperties: false is written: {additional:?}"
        );
        assert_eq!(bytes(&fields(bytes(&s, 22)[0]), 1), [b"object"]);
        let props = fields(bytes(&s, 25)[0]);
        let data = fields(bytes(&props, 1)[0]);
        assert_eq!(text(bytes(&data, 1)[0]), "data");
        let data = fields(bytes(&data, 2)[0]);
        let inner = fields(bytes(&fields(bytes(&data, 21)[0]), 1)[0]);
        assert_eq!(bytes(&fields(bytes(&inner, 22)[0]), 1), [b"string"]);
        let marks: Value = serde_yaml_ng::from_str(text(
            bytes(&fields(bytes(&fields(bytes(&s, 31)[0]), 2)[0]), 2)[0],
        ))
        .unwrap();
        assert_eq!(
            marks,
            json!([{"group": "", "kind": "ConfigMap", "version": "v1"}])
        );
    }

    #[test]
    fn scalars_use_their_wire_types_and_zeros_are_left_out() {
        let s = schema(&json!({
            "maximum": 2.5, "minimum": 0, "maxLength": 3, "minLength": -1,
            "uniqueItems": false, "enum": ["a", 1], "default": {"k": "v"},
        }));
        let fs = fields(&s.0);
        let numbers: Vec<u64> = fs.iter().map(|(n, _)| *n).collect();
        assert_eq!(numbers, [5, 7, 11, 12, 20, 20], "{fs:?}");
        assert!(matches!(fs[1].1, Field::Fixed64(b) if f64::from_bits(b) == 2.5));
        assert!(matches!(fs[2].1, Field::Varint(3)));
        assert!(matches!(fs[3].1, Field::Varint(v) if v as i64 == -1));
        let default: Value =
            serde_yaml_ng::from_str(text(bytes(&fields(bytes(&fs, 5)[0]), 2)[0])).unwrap();
        assert_eq!(default, json!({"k": "v"}));
    }
}
